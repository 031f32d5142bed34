"""Device mesh, logical-axis sharding rules and multi-host helpers.

The mesh has three axes: `data` (pure data parallelism), `fsdp` (data
parallelism with parameters and optimizer state sharded as well) and `tensor`
(Megatron-style tensor parallelism: attention heads, the MLP's hidden units
and the output vocabulary split across devices, one all-reduce of the
activations after each attention and MLP sub-block, forward and backward).
The batch is split over `data` x `fsdp` and replicated over `tensor`.
Parameters name their dimensions logically (`embed`, `mlp`, `heads`,
`vocab`, ...); the rules in `config.mesh.rules` map each logical name to mesh
axes, so a recipe picks `mesh.data`, `mesh.fsdp` and `mesh.tensor` and nothing
else changes. A dimension that its mesh axes do not divide evenly stays
replicated (validation requires mesh.tensor to divide the heads and the MLP
units; an output vocabulary it does not divide stays whole).

`tensor` is the mesh's fastest-varying axis: its groups are neighbouring
devices of one process (validation requires mesh.tensor to divide each
process's devices), where the interconnect is fastest and each process's
rows stay its own.
"""

import contextlib
import contextvars
import os
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from diffusion_lm import errors

MESH_AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")  # The batch dimension; replicated over `tensor`.


def initialize_multihost(coordinator: str | None = None,
                         num_processes: int | None = None,
                         process_id: int | None = None) -> None:
  """Joins this process to a multi-host job, once.

  Values not given come from $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES
  and $JAX_PROCESS_ID; what is still missing jax.distributed detects (TPU
  pods, SLURM, Open MPI).
  """
  if jax.distributed.is_initialized():
    return
  env = os.environ
  coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and env.get("JAX_NUM_PROCESSES"):
    num_processes = int(env["JAX_NUM_PROCESSES"])
  if process_id is None and env.get("JAX_PROCESS_ID"):
    process_id = int(env["JAX_PROCESS_ID"])
  jax.distributed.initialize(coordinator_address=coordinator,
                             num_processes=num_processes, process_id=process_id)


def mesh_shape(mesh_config, num_devices: int) -> dict[str, int]:
  """{axis: size} of the mesh over `num_devices`; the -1 axis fills the rest.

  A config without `tensor` (older checkpoints, tests) has tensor = 1.
  """
  sizes = [mesh_config.data, mesh_config.fsdp, mesh_config.get("tensor", 1)]
  if sizes.count(-1) > 1:
    raise errors.UserError(
        "at most one of mesh.data, mesh.fsdp and mesh.tensor may be -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if num_devices % known:
      raise errors.UserError(
          f"mesh {dict(zip(MESH_AXES, sizes))} does not fit {num_devices} "
          "devices")
    sizes[sizes.index(-1)] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise errors.UserError(
        "mesh.data * mesh.fsdp * mesh.tensor = "
        f"{' * '.join(map(str, sizes))} must equal the {num_devices} devices")
  return dict(zip(MESH_AXES, sizes))


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None):
  """The (data, fsdp, tensor) mesh over `devices` (default: all)."""
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(tuple(shape.values()), MESH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def abstract_mesh(shape: dict[str, int]) -> jax.sharding.AbstractMesh:
  """A mesh of these axis sizes without devices (for shapes and budgets)."""
  return jax.sharding.AbstractMesh(tuple(shape.values()), tuple(shape))


def logical_to_spec(logical_axes, shape, rules, mesh) -> P:
  """PartitionSpec for an array whose dimensions have these logical names."""
  rules = dict((name, axes) for name, axes in rules)
  used, spec = set(), []
  for name, size in zip(logical_axes, shape):
    axes = rules.get(name) if name is not None else None
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    axes = tuple(a for a in axes if a in mesh.shape and a not in used)
    if axes and size % int(np.prod([mesh.shape[a] for a in axes])) == 0:
      used.update(axes)
      spec.append(axes[0] if len(axes) == 1 else axes)
    else:
      spec.append(None)
  return P(*spec)


_ACTIVATIONS = contextvars.ContextVar("activation_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(mesh, rules):
  """While tracing under it, `constrain` places the model's activations:
  the batch over BATCH, other dimensions by the logical-axis rules."""
  token = _ACTIVATIONS.set((mesh, (*rules, ("batch", BATCH))))
  try:
    yield
  finally:
    _ACTIVATIONS.reset(token)


def constrain(x, logical_axes):
  """x constrained to the sharding its dimensions' logical names give
  (activation_sharding's mesh and rules); x as it is outside that context.

  A named dimension that its mesh axes do not divide is left to XLA, not
  replicated. Unnamed dimensions are replicated: in the residual stream
  [batch, length, embed] only the batch is split, so `tensor` needs one
  all-reduce per sub-block and `fsdp` gathers weights, not activations.
  """
  context = _ACTIVATIONS.get()
  if context is None:
    return x
  mesh, rules = context
  spec = logical_to_spec(logical_axes, x.shape, rules, mesh)
  spec = P(*(P.UNCONSTRAINED if name is not None and axes is None else axes
             for name, axes in zip(logical_axes, spec)))
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def state_shardings(abstract_state: nnx.State, rules, mesh):
  """NamedShardings for a model's parameters, as a pure dict like the params."""
  def sharding(variable):
    axes = variable.get_metadata().get("logical_axes", (None,) * variable.ndim)
    return NamedSharding(mesh, logical_to_spec(axes, variable.shape, rules, mesh))

  shardings = jax.tree.map(sharding, abstract_state,
                           is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(shardings)


def with_shardings(abstract_tree, shardings):
  """ShapeDtypeStructs that also say where each array goes (restore targets)."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_tree, shardings)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Assembles every process's rows into one batch sharded over the mesh."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local_batch.items()}

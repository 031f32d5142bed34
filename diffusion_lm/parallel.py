"""Device mesh, logical-axis sharding rules and multi-host helpers.

The mesh has two axes: `data` (pure data parallelism) and `fsdp` (data
parallelism with parameters and optimizer state sharded as well). Parameters
name their dimensions logically (`embed`, `mlp`, `vocab`, ...); the rules in
`config.mesh.rules` map each logical name to mesh axes. A dimension that a mesh
axis does not divide evenly stays replicated.
"""

import os
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from diffusion_lm import errors

MESH_AXES = ("data", "fsdp")
BATCH = ("data", "fsdp")  # The batch dimension is split over every device.


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


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None):
  """A (data, fsdp) mesh over `devices` (default: all); -1 fills the rest."""
  devices = list(devices if devices is not None else jax.devices())
  shape = [mesh_config.data, mesh_config.fsdp]
  if shape.count(-1) > 1:
    raise errors.UserError("at most one of mesh.data and mesh.fsdp may be -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise errors.UserError(f"mesh {shape} does not fit {len(devices)} devices")
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise errors.UserError(
        f"mesh.data * mesh.fsdp = {shape[0]} * {shape[1]} must equal the "
        f"{len(devices)} devices")
  return jax.make_mesh(tuple(shape), MESH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * 2,
                       devices=devices)


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

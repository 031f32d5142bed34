"""The memory a training step needs per device, and whether it fits.

Before training, `check` holds `per_device`, the train step's bytes per
device on the mesh (the estimate `python -m diffusion_lm.budget` prints),
against one device's memory (a CPU device: its share of the host's RAM).
Only what clearly cannot fit is refused: an estimate more than its tested
error (ESTIMATE_ERROR) above the memory, with an unknown vocabulary counted
as one id.

Memory per device, in bytes (`per_device`):

  params, optimizer, ema   the train state, each array's shard under the
                           mesh rules (float32; Adam keeps two moments)
  gradients                float32, sharded like the params; twice with
                           train.microbatches > 1 (the accumulator)
  gathered_weights         with fsdp > 1, two blocks' weights gathered whole
                           (one in use, the next arriving)
  batch                    this device's rows
  activations              what the backward pass keeps: the residuals JAX
                           saves for this device's rows (traced, not run),
                           with model.remat's policy, for every block
  working                  the backward pass of one block: its residuals
                           again (recomputed under remat, or the gradients
                           of its activations)

Activations are traced for one device's share of the work: its rows
(train.batch_size / (data x fsdp) / train.microbatches), its heads, MLP
units and vocabulary (divided by tensor). cuDNN's flash attention keeps no
[length, length] matrices: with model.attention_impl='cudnn' those
residuals are left out and its softmax statistics counted instead.
Checked against XLA's own accounting (memory_analysis() of the compiled
step on CPU) within ESTIMATE_ERROR (20%) for small configs
(tests/test_budget.py). On CPU, remat saves memory only with
model.scan_layers: XLA:CPU schedules an unrolled model's recomputation
early.
"""

import dataclasses
import functools
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from diffusion_lm import errors, models, parallel, train_step, validation

# per_device's error against XLA's accounting, as tests/test_budget.py
# holds it: `check` refuses only estimates past it.
ESTIMATE_ERROR = 0.2


def _shard_bytes(abstract_tree, shardings) -> int:
  return sum(math.prod(s.shard_shape(a.shape)) * a.dtype.itemsize
             for a, s in zip(jax.tree.leaves(abstract_tree),
                             jax.tree.leaves(shardings)))


def _divided(size: int, parts: int) -> int:
  """A dimension's share per device (whole when `parts` does not divide it,
  as parallel.logical_to_spec leaves it)."""
  return size // parts if size % parts == 0 else size


_VIEWS = ("reshape", "squeeze", "expand_dims")


def _residual_bytes(config, model_cfg, rows: int, flash: bool,
                    fused: bool = False) -> int:
  """Bytes of what the backward pass keeps for `rows` rows: the residuals of
  the loss's vjp that are not its inputs (parameters, batch); fused: as XLA
  keeps them for unrolled blocks without remat, having fused the elementwise
  work into the matmuls around it (about only the matmuls' outputs)."""
  graphdef, abstract_state = models.abstract_model(model_cfg)
  params = nnx.to_pure_dict(abstract_state)
  loss = train_step.make_loss(model_cfg, config.diffusion, model_cfg.vocab_size)
  length = config.data.seq_len
  batch = {"tokens": jax.ShapeDtypeStruct((rows, length), jnp.int32),
           "weights": jax.ShapeDtypeStruct((rows, length), jnp.float32)}
  if config.data.condition_on_length:
    batch["segment_ids"] = jax.ShapeDtypeStruct((rows, length), jnp.int32)

  def residuals(params, batch):
    model_loss = lambda p: loss(nnx.merge(graphdef, p), batch,
                                jax.random.PRNGKey(0))
    if fused:
      model_loss = jax.checkpoint(
          model_loss, policy=jax.checkpoint_policies.dots_saveable)
    return jax.vjp(model_loss, params)[1]

  jaxpr = jax.make_jaxpr(residuals)(params, batch).jaxpr
  # Residuals that are inputs, or reshapes of inputs or of other residuals
  # (XLA makes a reshape a view), cost nothing more.
  free = set(map(id, jaxpr.invars))
  outputs = set(map(id, jaxpr.outvars))
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in _VIEWS and (id(eqn.invars[0]) in free
                                         or id(eqn.invars[0]) in outputs):
      free.add(id(eqn.outvars[0]))
  total = 0
  for var in jaxpr.outvars:
    if id(var) in free or not hasattr(var, "aval") or hasattr(var, "val"):
      continue  # An input passed through, a view or a constant.
    shape = var.aval.shape
    if flash and shape[-2:] == (length, length):
      # Flash attention keeps the softmax's statistics, not its matrix.
      shape = shape[:-1]
    total += math.prod(shape) * var.aval.dtype.itemsize
  return total


def per_device(config, vocab_size: int, mesh_shape: dict[str, int]
                      ) -> dict[str, int]:
  """Bytes per device of the train step on a mesh (module doc)."""
  model_cfg = models.TransformerConfig.from_config(config.model, vocab_size)
  mesh = parallel.abstract_mesh(mesh_shape)
  _, abstract_model_state = models.abstract_model(model_cfg)
  param_shardings = parallel.state_shardings(abstract_model_state,
                                             config.mesh.rules, mesh)
  optimizer = train_step.make_optimizer(config.train)
  abstract_state = jax.eval_shape(functools.partial(
      train_step.init_state, model_cfg, optimizer, config.train))
  shardings = train_step.state_shardings(abstract_state, param_shardings,
                                         optimizer, mesh)
  state = {name: _shard_bytes(abstract_state[name], shardings[name])
           for name in abstract_state}
  params = state["params"]

  shards = mesh_shape["data"] * mesh_shape["fsdp"]
  tensor = mesh_shape["tensor"]
  rows = max(config.train.batch_size // shards // config.train.microbatches, 1)
  flash = model_cfg.attention_impl == "cudnn"
  # One device's heads, MLP units and vocabulary; traced with XLA's
  # attention (cuDNN's does not trace on a CPU).
  local = dataclasses.replace(
      model_cfg, num_heads=_divided(model_cfg.num_heads, tensor),
      mlp_dim=_divided(model_cfg.mlp_dim, tensor),
      vocab_size=_divided(model_cfg.vocab_size, tensor), attention_impl="xla")
  # Unrolled blocks without remat: XLA fuses (a scan keeps every residual).
  fused = local.remat == "none" and not local.scan_layers
  activations = _residual_bytes(config, local, rows, flash, fused)

  def block(remat, fused=False):  # One block's residuals.
    one, two = (_residual_bytes(config, dataclasses.replace(
        local, num_layers=n, remat=remat), rows, flash, fused) for n in (1, 2))
    return two - one

  # The backward pass of one block holds its residuals again: the gradients
  # of its activations, or what remat recomputes (what it keeps aside).
  working = block("none")
  if local.remat != "none":
    working -= block(local.remat)
  gathered = 0
  if mesh_shape["fsdp"] > 1:
    per_block = sum(x.size for x in jax.tree.leaves(
        abstract_model_state["blocks"])) / model_cfg.num_layers
    gathered = int(2 * 4 * per_block / tensor)
  result = {
      "params": params,
      "optimizer": state["opt_state"],
      "ema": state.get("ema", 0),
      "gradients": params * (2 if config.train.microbatches > 1 else 1),
      "gathered_weights": gathered,
      "batch": rows * config.train.microbatches * config.data.seq_len * 4 * (
          3 if config.data.condition_on_length else 2),
      "activations": activations,
      "working": working,
  }
  result["total"] = sum(result.values())
  return result


def advice(config, memory: dict[str, int], device_bytes: float,
           mesh_shape: dict[str, int], device: str = "") -> str:
  """What to change when the step does not fit (empty when it does);
  `device` says whose the `device_bytes` are."""
  if memory["total"] <= device_bytes:
    return ""
  state = memory["params"] + memory["optimizer"] + memory["ema"]
  activations = memory["activations"] + memory["working"]
  hints = []
  if activations >= state:
    if config.model.remat == "none":
      hints.append("--config.model.remat=dots (or full) with "
                   "--config.model.scan_layers=True")
    elif config.model.remat == "dots":
      hints.append("--config.model.remat=full")
    hints.append(f"--config.train.microbatches="
                 f"{2 * config.train.microbatches} (gradient accumulation)")
    if config.model.attention_impl != "cudnn":
      hints.append("--config.model.attention_impl=cudnn on GPUs")
  else:
    hints.append(f"a larger mesh.fsdp (now {mesh_shape['fsdp']}) or "
                 f"mesh.tensor (now {mesh_shape['tensor']})")
    if config.train.ema_decay > 0:
      hints.append("--config.train.ema_decay=0 (no EMA copy)")
  whose = f" ({device})" if device else ""
  return (f"needs {memory['total'] / 2**30:.2f} GiB per device, more than "
          f"{device_bytes / 2**30:.2f} GiB{whose}: try " + "; or ".join(hints))


def _device_memory(devices: Sequence) -> tuple[int, str]:
  """One device's memory in bytes, and whose it is: for accelerators the
  least allocator limit (memory_stats()['bytes_limit']) of this process's
  devices; for CPU devices an equal share of the host's physical memory (not
  of its free memory: the OS gives its file cache back on demand); (0, '')
  where the platform does not say."""
  local = [d for d in devices if d.process_index == jax.process_index()]
  if local[0].platform == "cpu":
    try:
      host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # Not a POSIX host.
      return 0, ""
    shared = f" shared by {len(local)} CPU devices" if len(local) > 1 else ""
    return host // len(local), f"{host / 2**30:.1f} GiB of host memory{shared}"
  limits = [(d.memory_stats() or {}).get("bytes_limit", 0) for d in local]
  if not all(limits):
    return 0, ""
  return min(limits), f"the {local[0].platform.upper()} allocator's limit"


def check(config, devices: Sequence) -> None:
  """Raises an errors.UserError when the train step's estimated memory per
  device clearly exceeds a device's (beyond ESTIMATE_ERROR); a config the
  estimate fails on is let through. `config` passed validation.check."""
  device_bytes, device = _device_memory(devices)
  if not device_bytes:
    return
  shape = parallel.mesh_shape(config.mesh, len(devices))
  try:
    # An unknown vocabulary counts as one id: a lower bound.
    memory = per_device(
        config, validation.known_vocab_size(config.data) or 1, shape)
  except (ArithmeticError, TypeError, ValueError) as e:  # Sizes past XLA's.
    logging.warning("Could not estimate the train step's memory: %s", e)
    return
  if memory["total"] > device_bytes * (1 + ESTIMATE_ERROR):
    mesh = ", ".join(f"{axis}={size}" for axis, size in shape.items())
    raise errors.UserError(
        f"the train step on mesh {mesh} "
        f"{advice(config, memory, device_bytes, shape, device)}")

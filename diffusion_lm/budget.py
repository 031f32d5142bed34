"""The compute a config asks for, and whether its train step fits a device.

  python -m diffusion_lm.budget --config=configs/owt.py --vocab_size=50257 \
      --mesh=data:8,fsdp:32 [--device_memory_gb=95]

Prints one JSON object: `params`, `train_flops_per_token`
(metrics.train_flops_per_token: 6 per matmul weight plus bidirectional
attention), `tokens` (steps x batch x seq_len), `train_flops`, for each
accelerator in metrics.PEAK_FLOPS the chip-hours the run takes at `--mfu` of
its dense bf16 peak, and `memory`: the train step's bytes per device on the
mesh (`memory_per_device`), with a hint of what to change when they exceed
`--device_memory_gb`. A sentencepiece recipe whose model file does not exist
yet needs `--vocab_size`.

Memory per device, in bytes (`memory_per_device`):

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
step on CPU) within 20% for small configs (tests/test_budget.py). On CPU,
remat saves memory only with model.scan_layers: XLA:CPU schedules an
unrolled model's recomputation early.
"""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from diffusion_lm import cli, errors, metrics, models, parallel, train
from diffusion_lm.data import corpora, tokenizers

_CONFIG = cli.define_config_flag()
_MFU = flags.DEFINE_float("mfu", 0.4, "Assumed model FLOPs utilisation.")
_VOCAB_SIZE = flags.DEFINE_integer(
    "vocab_size", 0, "Predicted vocabulary size; 0 = the config's tokenizer's.")
_MESH = flags.DEFINE_string(
    "mesh", "", "Mesh axes, e.g. data:8,fsdp:32,tensor:4 (axes not named: 1); "
    "'' = one device.")
_DEVICE_MEMORY_GB = flags.DEFINE_float(
    "device_memory_gb", 0.0,
    "Memory of one device in GiB (e.g. 95 for TPU v5p, 80 for H100); 0 = "
    "do not compare.")
flags.mark_flags_as_required(["config"])


def budget(config, vocab_size: int, mfu: float) -> dict:
  model_cfg = models.TransformerConfig.from_config(config.model, vocab_size)
  _, abstract_params = models.abstract_model(model_cfg)
  flops_per_token = metrics.train_flops_per_token(model_cfg, config.data.seq_len)
  tokens = config.train.steps * config.train.batch_size * config.data.seq_len
  flops = flops_per_token * tokens
  return {
      "params": models.count_params(abstract_params),
      "train_flops_per_token": flops_per_token,
      "tokens": tokens,
      "train_flops": flops,
      "mfu": mfu,
      "chip_hours": {chip: round(flops / (peak * mfu) / 3600, 1)
                     for chip, peak in metrics.PEAK_FLOPS.items()},
  }


def parse_mesh(text: str) -> dict[str, int]:
  """'data:8,fsdp:32' -> {'data': 8, 'fsdp': 32, 'tensor': 1}."""
  shape = dict.fromkeys(parallel.MESH_AXES, 1)
  for part in filter(None, text.split(",")):
    name, _, size = part.partition(":")
    if name not in shape or not size.isdigit() or int(size) < 1:
      raise errors.UserError(
          f"--mesh={text!r}: each part is AXIS:SIZE with AXIS one of "
          f"{list(parallel.MESH_AXES)} and SIZE >= 1, got {part!r}")
    shape[name] = int(size)
  return shape


def _shard_bytes(abstract_tree, shardings) -> int:
  return sum(int(np.prod(s.shard_shape(a.shape))) * a.dtype.itemsize
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
  graphdef, _ = models.abstract_model(model_cfg)
  params = jax.eval_shape(functools.partial(models.init_params, model_cfg),
                          jax.random.PRNGKey(0))
  loss = train.make_loss(model_cfg, config.diffusion, model_cfg.vocab_size)
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
    if (eqn.primitive.name in _VIEWS and id(eqn.invars[0]) in free | outputs):
      free.add(id(eqn.outvars[0]))
  total = 0
  for var in jaxpr.outvars:
    if id(var) in free or not hasattr(var, "aval") or hasattr(var, "val"):
      continue  # An input passed through, a view or a constant.
    shape = var.aval.shape
    if flash and shape[-2:] == (length, length):
      # Flash attention keeps the softmax's statistics, not its matrix.
      shape = shape[:-1]
    total += int(np.prod(shape)) * var.aval.dtype.itemsize
  return total


def memory_per_device(config, vocab_size: int, mesh_shape: dict[str, int]
                      ) -> dict[str, int]:
  """Bytes per device of the train step on a mesh (module doc)."""
  model_cfg = models.TransformerConfig.from_config(config.model, vocab_size)
  mesh = parallel.abstract_mesh(mesh_shape)
  _, abstract_model_state = models.abstract_model(model_cfg)
  param_shardings = parallel.state_shardings(abstract_model_state,
                                             config.mesh.rules, mesh)
  optimizer = train.make_optimizer(config.train)
  abstract_state = jax.eval_shape(functools.partial(
      train.init_state, model_cfg, optimizer, config.train))
  shardings = train.state_shardings(abstract_state, param_shardings,
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
           mesh_shape: dict[str, int]) -> str:
  """What to change when the step does not fit (empty when it does)."""
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
  return (f"needs {memory['total'] / 2**30:.2f} GiB per device, more than "
          f"{device_bytes / 2**30:.2f} GiB: try " + "; or ".join(hints))


def main():
  config = _CONFIG.value
  vocab_size = _VOCAB_SIZE.value
  if not vocab_size:
    try:
      vocab_size = tokenizers.from_config(
          config.data, corpora.prepared_dir(config.data)).vocab_size
    except errors.UserError as e:
      raise errors.UserError(f"{e} (or pass --vocab_size)") from None
  shape = parse_mesh(_MESH.value)
  result = budget(config, vocab_size, _MFU.value)
  memory = memory_per_device(config, vocab_size, shape)
  result["memory"] = {"mesh": shape, "bytes_per_device": memory,
                      "gib_per_device": round(memory["total"] / 2**30, 3)}
  if _DEVICE_MEMORY_GB.value:
    hint = advice(config, memory, _DEVICE_MEMORY_GB.value * 2**30, shape)
    result["memory"]["fits"] = not hint
    if hint:
      result["memory"]["advice"] = hint
  print(json.dumps(result))


if __name__ == "__main__":
  cli.run(main)

"""The compute a config asks for, and whether its train step fits a device.

  python -m diffusion_lm.budget --config=configs/owt.py --vocab_size=50257 \
      --mesh=data:8,fsdp:32 [--device_memory_gb=95]

Prints one JSON object: `params`, `train_flops_per_token`
(metrics.train_flops_per_token: 6 per matmul weight plus bidirectional
attention), `tokens` (steps x batch x seq_len), `train_flops`, for each
accelerator in metrics.PEAK_FLOPS the chip-hours the run takes at `--mfu` of
its dense bf16 peak, and `memory`: the train step's bytes per device on the
mesh (`step_memory.per_device`), with a hint of what to change when they exceed
`--device_memory_gb`. The vocabulary comes from the config (the byte and char
tokenizers, or data.tokenizer_train.vocab_size for a sentencepiece model
trained on first use), else from the tokenizer's model file; without either
it needs `--vocab_size`.

The memory model is step_memory.per_device's (its module doc lists
the terms); training refuses at startup a config whose step clearly does not
fit its devices by the same estimate.
"""

import json
import math
import re

from absl import flags

from diffusion_lm import (cli, errors, metrics, models, parallel, step_memory,
                          validation)
from diffusion_lm.data import corpora, tokenizers

_CONFIG = cli.define_config_flag()
_MFU = flags.DEFINE_float("mfu", 0.4,
                          "Assumed model FLOPs utilisation, in (0, 1].")
_VOCAB_SIZE = flags.DEFINE_integer(
    "vocab_size", 0, "Predicted vocabulary size; 0 = the config's tokenizer's "
    "(data.tokenizer_train.vocab_size, else its model file).", lower_bound=0,
    upper_bound=2**31 - 1)  # [MASK] = vocab_size is an int32 token id.
_MESH = flags.DEFINE_string(
    "mesh", "", "Mesh axes, e.g. data:8,fsdp:32,tensor:4 (axes not named: 1); "
    "'' = one device.")
_DEVICE_MEMORY_GB = flags.DEFINE_float(
    "device_memory_gb", 0.0,
    "Memory of one device in GiB (e.g. 95 for TPU v5p, 80 for H100); 0 = "
    "do not compare.")
flags.register_validator("mfu", lambda v: 0 < v <= 1, "must be in (0, 1]")
flags.register_validator(
    "device_memory_gb", lambda v: v == 0 or 0 < v < math.inf,
    "must be a finite number of GiB > 0, or 0 (do not compare)")
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


MAX_DEVICES = 2**20  # A bound on --mesh past any machine built.


def parse_mesh(text: str) -> dict[str, int]:
  """'data:8,fsdp:32' -> {'data': 8, 'fsdp': 32, 'tensor': 1}."""
  shape = dict.fromkeys(parallel.MESH_AXES, 1)
  named = set()
  for part in filter(None, text.split(",")):
    name, _, size = part.partition(":")
    if (name not in shape or not re.fullmatch("[0-9]{1,7}", size)
        or not 1 <= int(size) <= MAX_DEVICES):
      raise errors.UserError(
          f"--mesh={text!r}: each part is AXIS:SIZE with AXIS one of "
          f"{list(parallel.MESH_AXES)} and SIZE in 1..{MAX_DEVICES}, got "
          f"{part!r}")
    if name in named:
      raise errors.UserError(f"--mesh={text!r}: axis {name!r} is given twice")
    named.add(name)
    shape[name] = int(size)
  if math.prod(shape.values()) > MAX_DEVICES:
    raise errors.UserError(
        f"--mesh={text!r}: {math.prod(shape.values())} devices in all, more "
        f"than the {MAX_DEVICES} allowed")
  return shape


def vocab_size(config) -> int:
  """The config's vocabulary (validation.known_vocab_size), else that of
  its tokenizer's model file."""
  known = validation.known_vocab_size(config.data)
  if known:
    return known
  try:
    return tokenizers.from_config(config.data,
                                  corpora.prepared_dir(config.data)).vocab_size
  except errors.UserError as e:
    raise errors.UserError(
        f"{e} (or pass --vocab_size, or set "
        "--config.data.tokenizer_train.vocab_size)") from None


def main():
  config = _CONFIG.value
  validation.check(config)
  shape = parse_mesh(_MESH.value)
  vocab = _VOCAB_SIZE.value or vocab_size(config)
  result = budget(config, vocab, _MFU.value)
  memory = step_memory.per_device(config, vocab, shape)
  result["memory"] = {"mesh": shape, "bytes_per_device": memory,
                      "gib_per_device": round(memory["total"] / 2**30, 3)}
  if _DEVICE_MEMORY_GB.value:
    hint = step_memory.advice(config, memory, _DEVICE_MEMORY_GB.value * 2**30,
                             shape)
    result["memory"]["fits"] = not hint
    if hint:
      result["memory"]["advice"] = hint
  print(json.dumps(result))


if __name__ == "__main__":
  cli.run(main)

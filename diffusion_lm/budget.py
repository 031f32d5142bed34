"""The compute a config asks for: parameters, FLOPs and accelerator-hours.

  python -m diffusion_lm.budget --config=configs/text8.py

Prints one JSON object: `params`, `train_flops_per_token`
(metrics.train_flops_per_token: 6 per matmul weight plus bidirectional
attention), `tokens` (steps x batch x seq_len), `train_flops` and, for each
accelerator in metrics.PEAK_FLOPS, the chip-hours the run takes at `--mfu` of
its dense bf16 peak. A sentencepiece recipe whose model file does not exist
yet needs `--vocab_size`.
"""

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from diffusion_lm import cli, errors, metrics, models
from diffusion_lm.data import tokenizers

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (see configs/).", lock_config=True)
_MFU = flags.DEFINE_float("mfu", 0.4, "Assumed model FLOPs utilisation.")
_VOCAB_SIZE = flags.DEFINE_integer(
    "vocab_size", 0, "Predicted vocabulary size; 0 = the config's tokenizer's.")
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


def run(argv):
  del argv
  config = _CONFIG.value
  try:
    vocab_size = _VOCAB_SIZE.value or tokenizers.from_config(config.data).vocab_size
  except errors.UserError as e:
    sys.exit(f"error: {e} (or pass --vocab_size)")
  print(json.dumps(budget(config, vocab_size, _MFU.value)))


if __name__ == "__main__":
  app.run(run, flags_parser=cli.parse_flags)

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

from absl import flags

from diffusion_lm import cli, errors, metrics, models
from diffusion_lm.data import corpora, tokenizers

_CONFIG = cli.define_config_flag()
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


def main():
  config = _CONFIG.value
  vocab_size = _VOCAB_SIZE.value
  if not vocab_size:
    try:
      vocab_size = tokenizers.from_config(
          config.data, corpora.prepared_dir(config.data)).vocab_size
    except errors.UserError as e:
      raise errors.UserError(f"{e} (or pass --vocab_size)") from None
  print(json.dumps(budget(config, vocab_size, _MFU.value)))


if __name__ == "__main__":
  cli.run(main)

"""Samples from the latest checkpoint of a workdir.

  python -m diffusion_lm.sample --workdir=runs/quickstart --num_samples=4

Config and tokenizer come from the checkpoint; flags left unset take the
config's `sample` defaults. --output writes one JSON object per sample
(JSONL), all at once when sampling is done.
"""

import json
import os
import time

from absl import flags

from diffusion_lm import cli, errors

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir to load.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Number of samples.")
_LENGTH = flags.DEFINE_integer("length", None, "Tokens per sample.")
_STEPS = flags.DEFINE_integer("steps", None, "Sampler steps.")
_SAMPLER = flags.DEFINE_enum("sampler", None, ["ancestral", "confidence"],
                             "Sampling algorithm.")
_PROMPT = flags.DEFINE_string("prompt", "", "Text every sample starts with.")
_SEED = flags.DEFINE_integer("seed", None, "Random seed.")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "Softmax temperature.")
_TOP_P = flags.DEFINE_float("top_p", None, "Nucleus sampling mass.")
_FLOAT64 = flags.DEFINE_bool("float64", None, "float64 categorical sampling.")
_OUTPUT = flags.DEFINE_string("output", None, "Write samples here as JSONL.")
flags.mark_flag_as_required("workdir")


def main():
  if not os.path.isdir(_WORKDIR.value):
    raise errors.UserError(f"--workdir={_WORKDIR.value} does not exist")
  from diffusion_lm import api  # pylint: disable=g-import-not-at-top
  options = dict(steps=_STEPS.value, sampler=_SAMPLER.value,
                 temperature=_TEMPERATURE.value, top_p=_TOP_P.value,
                 float64=_FLOAT64.value)
  start = time.perf_counter()
  lm = api.load(_WORKDIR.value)
  texts = lm.sample(_NUM_SAMPLES.value, length=_LENGTH.value,
                    prompt=_PROMPT.value, seed=_SEED.value, **options)
  seconds = time.perf_counter() - start
  for i, text in enumerate(texts):
    print(f"--- sample {i} (step {lm.step}) ---\n{text}")
  print(f"--- {len(texts)} samples in {seconds:.1f}s (compilation included)")
  if _OUTPUT.value:
    tmp = _OUTPUT.value + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      for text in texts:
        f.write(json.dumps({"text": text, "prompt": _PROMPT.value,
                            "step": lm.step}) + "\n")
    os.replace(tmp, _OUTPUT.value)


if __name__ == "__main__":
  cli.run(main)

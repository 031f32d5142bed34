"""Samples from the latest checkpoint of a workdir.

  python -m diffusion_lm.sample --workdir=runs/quickstart --num_samples=4
  python -m diffusion_lm.sample --workdir=runs/quickstart --sampler=threshold \\
      --threshold=0.9 --show_steps

Config and tokenizer come from the checkpoint (the newest intact one;
--require_checksums passes over one without checksums too); flags left unset
take the config's `sample` defaults, and the config with the flags set is
checked whole (validation.check) before sampling. Every option of
sampler_options.SamplerOptions is a flag (`--steps`, `--threshold`, `--gamma`,
`--eta`, ...); passing one the sampler does not read is an error. Prints
the samples, then network calls per generated token, tokens/s and the wall
time. --output writes one JSON object per sample (JSONL), all at once when
sampling is done.
"""

import dataclasses
import json
import os
import statistics
import time

import jax
import numpy as np
from absl import flags

from diffusion_lm import cli, errors, files, validation
from diffusion_lm.diffusion import sampler_options

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir to load.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Number of samples.")
_LENGTH = flags.DEFINE_integer("length", None, "Tokens per sample.")
_PROMPT = flags.DEFINE_string("prompt", "", "Text every sample starts with.")
_SEED = flags.DEFINE_integer("seed", None, "Random seed.")
_OUTPUT = flags.DEFINE_string("output", None, "Write samples here as JSONL.")
_SHOW_STEPS = flags.DEFINE_bool(
    "show_steps", False, "Print the first sample as it is filled in: its "
    "committed tokens after every loop iteration that committed any.")
_REQUIRE_CHECKSUMS = flags.DEFINE_bool(
    "require_checksums", False, "Sample only from a checkpoint verified "
    "against its checksums: one without them (an old one, or one whose "
    "checksums item is lost) is passed over like a damaged one.")
_TIMED_RUNS = flags.DEFINE_integer(
    "timed_runs", 0, "Sample this many more times after the first (which "
    "compiles) and report tokens/s from their median.", lower_bound=0)
_DEFINE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
           float: flags.DEFINE_float, str: flags.DEFINE_string}
_OPTIONS = {
    f.name: _DEFINE[type(f.default)](
        f.name, None, f"sample.{f.name}, read by: " + ", ".join(
            s for s, names in sampler_options.SAMPLER_OPTIONS.items()
            if f.name in names))
    for f in dataclasses.fields(sampler_options.SamplerOptions)}
flags.mark_flag_as_required("workdir")

_HIDDEN = "\u00b7"  # Stands for a token not committed yet.


def show_steps(tokenizer, tokens_L, commit_step_L) -> None:
  """The sequence after every iteration that committed something."""
  pieces = [tokenizer.decode([t]) for t in tokens_L]
  for it in np.unique(commit_step_L[commit_step_L >= 0]):
    text = "".join(p if s <= it else _HIDDEN
                   for p, s in zip(pieces, commit_step_L))
    print(f"--- iteration {it}: {np.sum(commit_step_L == it)} committed ---\n{text}")


def check_paths(workdir: str, output: str | None) -> None:
  """Refuses a --workdir that is not a directory and an --output that
  cannot be written as a file, before anything is loaded."""
  if not os.path.isdir(workdir):
    problem = ("is not a directory" if os.path.exists(workdir)
               else "does not exist")
    raise errors.UserError(f"--workdir={workdir} {problem}")
  if not output:
    return
  if os.path.isdir(output):
    raise errors.UserError(f"--output={output} is a directory; give the path "
                           "of the JSONL file to write")
  output_dir = os.path.dirname(os.path.abspath(output))
  if not os.path.isdir(output_dir):
    raise errors.UserError(f"--output={output}: the directory {output_dir} "
                           "does not exist")


def main():
  check_paths(_WORKDIR.value, _OUTPUT.value)
  from diffusion_lm import api  # pylint: disable=g-import-not-at-top
  options = {name: flag.value for name, flag in _OPTIONS.items()}
  lm = api.load(_WORKDIR.value, require_checksums=_REQUIRE_CHECKSUMS.value)
  # The checkpoint's config with the sampler flags; prompt_template checks
  # --num_samples and --length.
  config = lm.config.copy_and_resolve_references()
  config.sample.update({k: v for k, v in {**options, "seed": _SEED.value}.items()
                        if v is not None})
  validation.check(config, training=False)
  init = lm.prompt_template(_PROMPT.value, _NUM_SAMPLES.value, _LENGTH.value)
  seconds = []
  for _ in range(1 + _TIMED_RUNS.value):
    start = time.perf_counter()
    result = jax.block_until_ready(lm.generate(init, seed=_SEED.value, **options))
    seconds.append(time.perf_counter() - start)
  texts = lm.texts(result)
  for i, text in enumerate(texts):
    print(f"--- sample {i} (step {lm.step}) ---\n{text}")
  if _SHOW_STEPS.value:
    show_steps(lm.tokenizer, np.asarray(result.tokens_BxL)[0],
               np.asarray(result.commit_step_BxL)[0])
  generated = np.sum((init == lm.tokenizer.mask_id)
                     & (np.arange(init.shape[1]) < np.asarray(result.length_B)[:, None]))
  calls = int(np.sum(result.calls_B))
  timed = statistics.median(seconds[1:]) if _TIMED_RUNS.value else seconds[0]
  print(f"--- {len(texts)} samples, {generated} generated tokens: "
        f"{calls / generated:.3f} network calls per token, "
        f"{generated / timed:.1f} tokens/s"
        + (f" (median of {_TIMED_RUNS.value} runs)" if _TIMED_RUNS.value
           else " (compilation included; --timed_runs=3 leaves it out)")
        + f"; first run {seconds[0]:.1f}s")
  if _OUTPUT.value:
    files.write_atomically(_OUTPUT.value, "".join(
        json.dumps({"text": text, "prompt": _PROMPT.value, "step": lm.step,
                    "network_calls": int(n)}) + "\n"
        for text, n in zip(texts, np.asarray(result.calls_B))))


if __name__ == "__main__":
  cli.run(main)

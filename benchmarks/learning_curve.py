"""Learning curves at a fixed wall-clock budget: bits/byte against minutes.

  python benchmarks/learning_curve.py --config=configs/quickstart.py \
      --minutes=15 --output_dir=runs/curves \
      --variant=base: \
      --variant=lr1e-3:train.learning_rate=1e-3 \
      --variant=ar:model.objective=autoregressive

Each --variant is NAME:OVERRIDES (comma-separated config overrides, as
--config.FIELD=VALUE takes them; none for the recipe itself). Short probe
runs first measure each variant's training tokens/s on this machine, back
to back; then each variant's step count is set to fill --minutes, and it
trains to the end (cosine decay and all), evaluating validation --points
times. Prints one JSON line per validation point (variant, step, tokens
seen, minutes since the start, validation bits/byte) and one per finished
variant (its test bits/byte and wall time), and writes curves.jsonl and
curves.png to --output_dir. Minutes are measured from the start of the
run (corpus preparation included), spread over the steps in proportion.
"""

import argparse
import functools
import importlib.util
import json
import os
import subprocess
import sys
import time

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

from diffusion_lm import metrics  # pylint: disable=g-import-not-at-top

PROBE_STEPS = 40


def train(config: str, workdir: str, overrides: list[str]) -> float:
  """Runs diffusion_lm.main; returns its wall time in seconds."""
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "diffusion_lm.main", f"--config={config}",
                  f"--workdir={workdir}", "--config.sample.num_samples=0",
                  *[f"--config.{o}" for o in overrides]], check=True,
                 stdout=subprocess.DEVNULL)
  return time.perf_counter() - start


def probe_tokens_per_s(workdir: str) -> float:
  """Training throughput of a probe run's last logged steps."""
  return [r["train/tokens_per_s"] for r in metrics.read_jsonl(workdir)
          if "train/tokens_per_s" in r][-1]


def probe(config: str, name: str, overrides: list[str], output_dir: str) -> float:
  """Training tokens/s of a short run of the variant on this machine."""
  workdir = os.path.join(output_dir, name + "_probe")
  train(config, workdir, overrides + [
      f"train.steps={PROBE_STEPS}", f"train.log_every={PROBE_STEPS // 2}",
      f"train.eval_every={PROBE_STEPS}", f"train.checkpoint_every={PROBE_STEPS}",
      "eval.split=validation"])
  return probe_tokens_per_s(workdir)


def run_variant(config: str, name: str, overrides: list[str], minutes: float,
                tokens_per_s: float, points: int,
                output_dir: str) -> tuple[list[dict], dict]:
  """The budgeted run at the probed throughput; the curve's records and the
  final one."""
  loaded = load_config(config, overrides)
  step_tokens = loaded.train.batch_size * loaded.data.seq_len
  # Evaluation and start-up take their share of the budget: 10%.
  steps = max(points, int(0.9 * minutes * 60 * tokens_per_s / step_tokens))
  every = max(1, steps // points)
  workdir = os.path.join(output_dir, name)
  wall = train(config, workdir, overrides + [
      f"train.steps={steps}", f"train.eval_every={every}",
      f"train.checkpoint_every={steps}", f"train.log_every={every}"])
  curve = []
  for r in metrics.read_jsonl(workdir):
    if "validation/bits_per_byte" in r:
      curve.append({"variant": name, "step": r["step"],
                    "tokens": r["step"] * step_tokens,
                    "minutes": wall / 60 * r["step"] / steps,
                    "validation_bits_per_byte": r["validation/bits_per_byte"]})
    elif "eval/bits_per_byte" in r:
      final = {"variant": name, "overrides": overrides, "steps": steps,
               "wall_minutes": wall / 60, "tokens_per_s_probe": tokens_per_s,
               "test_bits_per_byte": r["eval/bits_per_byte"],
               "test_bits_per_byte_stderr": r["eval/bits_per_byte_stderr"]}
  return curve, final


def load_config(config: str, overrides: list[str]):
  """The config file's config (PATH[:VARIANT]) with FIELD=VALUE overrides,
  each value read as the type of the field it replaces."""
  path, _, variant = config.partition(":")
  spec = importlib.util.spec_from_file_location("recipe", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  loaded = module.get_config(variant) if variant else module.get_config()
  for override in overrides:
    field, _, value = override.partition("=")
    *groups, name = field.split(".")
    node = functools.reduce(getattr, groups, loaded)
    kind = type(getattr(node, name))
    setattr(node, name, value == "True" if kind is bool else kind(value))
  return loaded


def plot(curves: dict[str, list[dict]], path: str) -> None:
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, curve in curves.items():
    ax.plot([p["minutes"] for p in curve],
            [p["validation_bits_per_byte"] for p in curve], ".-", label=name)
  ax.set(xlabel="minutes (2 CPU cores)", ylabel="validation bits per byte")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path + ".tmp.png", dpi=120)
  os.replace(path + ".tmp.png", path)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--variant", action="append", required=True,
                      help="NAME:OVERRIDE,OVERRIDE,...")
  parser.add_argument("--minutes", type=float, default=15.0)
  parser.add_argument("--points", type=int, default=10)
  parser.add_argument("--output_dir", required=True)
  args = parser.parse_args()
  os.makedirs(args.output_dir, exist_ok=True)
  variants = []
  for spec in args.variant:
    name, _, overrides = spec.partition(":")
    variants.append((name, list(filter(None, overrides.split(",")))))
  # Every probe first, back to back, so that all throughputs are measured
  # under the same conditions before any long run starts.
  throughputs = [probe(args.config, name, overrides, args.output_dir)
                 for name, overrides in variants]
  curves, lines = {}, []
  for (name, overrides), tokens_per_s in zip(variants, throughputs):
    curve, final = run_variant(args.config, name, overrides, args.minutes,
                               tokens_per_s, args.points, args.output_dir)
    curves[name] = curve
    for record in curve + [final]:
      print(json.dumps(record), flush=True)
      lines.append(json.dumps(record) + "\n")
    with open(os.path.join(args.output_dir, "curves.jsonl"), "w") as f:
      f.writelines(lines)
    plot(curves, os.path.join(args.output_dir, "curves.png"))


if __name__ == "__main__":
  main()

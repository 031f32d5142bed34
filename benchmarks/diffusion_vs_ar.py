"""Diffusion against its autoregressive twin: same data, size, code and machine.

  python benchmarks/diffusion_vs_ar.py --diffusion_workdir=runs/quickstart \
      --ar_workdir=runs/quickstart_ar --output_dir=runs/vs
  python benchmarks/diffusion_vs_ar.py --train_quick=configs/markov.py \
      --output_dir=runs/vs_markov    # trains CONFIG and CONFIG:ar first

Prints one JSON line per (model, sampler setting, batch size) and writes
results.jsonl, table.md and frontier.png to --output_dir:

* speed: generated tokens/s (median of --runs timed runs, compilation left
  out), time to the first committed token and to the whole sequence,
  network calls and forward FLOPs per generated token (what the code
  computes: a diffusion call reads all L positions; an AR step attends over
  its whole static cache of L positions);
* quality, of --num_samples samples per setting drawn with float64 noise:
  perplexity per token under the AR twin (the same tokenizer, so no
  retokenising) beside the samples' unigram entropy (flagged when it falls
  10% below the AR samples': repetitive text games perplexity), and on the
  `markov` corpus the chain's exact report (diffusion_lm.quality);
* likelihood: each model's bits per byte on its eval split (the diffusion
  bound, the AR exact value) from its metrics.jsonl;
* the frontier: per diffusion sampler, the fastest setting (batch 32) whose
  AR-twin perplexity is within 10% of the AR samples' own, and its speed
  ratio to AR.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

from diffusion_lm import api, evaluation, metrics, quality  # pylint: disable=g-import-not-at-top
from diffusion_lm.data import pipeline  # pylint: disable=g-import-not-at-top

BATCHES = (1, 32)


def diffusion_sweep(length: int) -> list[dict]:
  """A short sweep of the samplers that matter for speed."""
  return ([{"sampler": "ancestral", "steps": s} for s in (length, length // 4)]
          + [{"sampler": "first_hitting"}]
          + [{"sampler": "confidence", "steps": length // 4}]
          + [{"sampler": "threshold", "threshold": t} for t in (0.9, 0.7)]
          + [{"sampler": "threshold", "threshold": t, "spacing": d}
             for t, d in ((0.1, 4), (0.01, 8))]
          + [{"sampler": "entropy_bounded", "gamma": g} for g in (0.1, 1.0, 3.0)])


def forward_flops(cfg, queries: int, keys: int) -> float:
  """Forward FLOPs of `queries` positions attending to `keys` positions."""
  d, h, k, f = cfg.embed_dim, cfg.num_heads, cfg.head_dim, cfg.mlp_dim
  weights = cfg.num_layers * (4 * d * h * k + 3 * d * f) + d * cfg.vocab_size
  return 2.0 * queries * weights + 4.0 * queries * keys * h * k * cfg.num_layers


def flops_per_call(lm) -> float:
  """One network call of a row: the whole sequence (diffusion) or one token
  against the static cache (AR; the prefill is counted as one such call)."""
  from diffusion_lm import models  # pylint: disable=g-import-not-at-top
  cfg = models.TransformerConfig.from_config(lm.config.model,
                                             lm.tokenizer.vocab_size)
  length = lm.config.data.seq_len
  return forward_flops(cfg, 1 if cfg.causal else length, length)


def run(lm, init, options, seed=0):
  return jax.block_until_ready(lm.generate(init, seed=seed, **options))


def timed(lm, init, options, runs: int) -> float:
  run(lm, init, options)  # Compiles.
  seconds = []
  for i in range(runs):
    start = time.perf_counter()
    run(lm, init, options, seed=i)
    seconds.append(time.perf_counter() - start)
  return statistics.median(seconds)


def generated(init, result, mask_id) -> int:
  before_end = np.arange(init.shape[1]) < np.asarray(result.length_B)[:, None]
  return int(np.sum((init == mask_id) & before_end))


def speed(lm, options: dict, batch: int, runs: int) -> dict:
  """Throughput and latency of one setting at one batch size."""
  init = lm.prompt_template("", batch)
  seconds = timed(lm, init, options, runs)
  result = run(lm, init, options)
  tokens = generated(init, result, lm.tokenizer.mask_id)
  commit = np.asarray(result.commit_step_BxL)
  iterations = int(commit.max()) + 1
  calls = int(np.sum(result.calls_B))
  return {"batch": batch, "tokens_per_s": tokens / seconds,
          "seconds_to_sequence": seconds,
          # The first iteration that committed a token, at the mean iteration time.
          "seconds_to_first_token": seconds * (int(commit[commit >= 0].min()) + 1)
                                    / iterations,
          "calls_per_token": calls / tokens,
          "flops_per_token": calls * flops_per_call(lm) / tokens}


def samples(lm, options: dict, num_samples: int):
  """(token rows [N, L], their texts), drawn with float64 noise."""
  results = [run(lm, lm.prompt_template("", 32), dict(options, float64=True),
                 seed=seed) for seed in range(-(-num_samples // 32))]
  texts = sum((lm.texts(r) for r in results), [])[:num_samples]
  rows = np.concatenate([np.asarray(r.tokens_BxL) for r in results])
  return rows[:num_samples], texts


def ar_bits_per_token(ar, rows_NxL) -> float:
  """The AR twin's exact -log2 p of whole sampled rows, per token."""
  step = evaluation.make_eval_step(
      ar.graphdef, jax.tree.map(lambda x: x.sharding, ar.params), ar.mesh,
      ar.tokenizer.mask_id, 1)
  batch = {"tokens": rows_NxL.astype(np.int32),
           "weights": np.ones(rows_NxL.shape, np.float32)}
  nats = evaluation.nelbos(step, ar.params,
                           pipeline.eval_batches(batch, ar.config.eval.batch_size),
                           ar.mesh, jax.random.PRNGKey(0))
  return float(nats[0, :len(rows_NxL)].sum() / rows_NxL.size / np.log(2))


def judge(rows_NxL, texts: list[str], ar, lm) -> dict:
  """Quality of samples: AR-twin perplexity, unigram entropy, chain report."""
  eos = lm.tokenizer.eos_id
  content = [row[:np.argmax(row == eos)] if np.any(row == eos) else row
             for row in rows_NxL]
  result = {"ar_perplexity": 2 ** ar_bits_per_token(ar, rows_NxL),
            "unigram_entropy_bits": float(np.mean(
                [quality.unigram_entropy_bits(c) for c in content if len(c)]))}
  if lm.config.data.corpus == "markov":
    result.update(quality.chain_report(texts, lm.config.data.markov))
  return result


def likelihood(workdir: str) -> dict:
  """The final evaluation's numbers from a workdir's metrics.jsonl."""
  records = [r for r in metrics.read_jsonl(workdir)
             if any(k.startswith("eval/") for k in r)]
  return {k[len("eval/"):]: v for k, v in records[-1].items()
          if k.startswith("eval/")} if records else {}


def train_quick(config: str, output_dir: str) -> tuple[str, str]:
  """Trains CONFIG and CONFIG:ar into output_dir (resuming if there)."""
  workdirs = []
  for name, variant in (("diffusion", ""), ("ar", ":ar")):
    workdir = os.path.join(output_dir, name)
    subprocess.run([sys.executable, "-m", "diffusion_lm.main",
                    f"--config={config}{variant}", f"--workdir={workdir}",
                    "--config.sample.num_samples=0"], check=True)
    workdirs.append(workdir)
  return tuple(workdirs)


def frontier(rows: list[dict], tolerance: float = 0.1) -> dict:
  """Per diffusion sampler: the fastest setting at batch 32 within
  `tolerance` of the AR samples' AR-twin perplexity, and its speed ratio."""
  ar = next(r for r in rows if r["model"] == "ar" and r["batch"] == 32)
  best = {}
  for r in rows:
    if r["model"] != "diffusion" or r["batch"] != 32:
      continue
    if r["ar_perplexity"] <= (1 + tolerance) * ar["ar_perplexity"]:
      name = r["options"]["sampler"]
      if name not in best or r["tokens_per_s"] > best[name]["tokens_per_s"]:
        best[name] = r
  return {name: {"options": r["options"], "ar_perplexity": r["ar_perplexity"],
                 "tokens_per_s": r["tokens_per_s"],
                 "speed_vs_ar": r["tokens_per_s"] / ar["tokens_per_s"]}
          for name, r in best.items()}


def table(rows: list[dict]) -> str:
  header = ("| model | options | batch | tokens/s | s to first token | "
            "calls/token | GFLOPs/token | AR-twin ppl | unigram H |")
  lines = [header, "|" + "---|" * 9]
  for r in rows:
    options = ", ".join(f"{k}={v}" for k, v in r["options"].items())
    low = " (low)" if r["low_entropy"] else ""
    lines.append(
        f"| {r['model']} | {options} | {r['batch']} | {r['tokens_per_s']:.0f} | "
        f"{r['seconds_to_first_token']:.3f} | {r['calls_per_token']:.3f} | "
        f"{r['flops_per_token'] / 1e9:.3f} | {r['ar_perplexity']:.3f} | "
        f"{r['unigram_entropy_bits']:.2f}{low} |")
  return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
  fig, ax = plt.subplots(figsize=(6, 4))
  for model in ("diffusion", "ar"):
    points = [(r["tokens_per_s"], r["ar_perplexity"]) for r in rows
              if r["model"] == model and r["batch"] == 32]
    ax.plot(*zip(*points), "o" if model == "diffusion" else "*",
            markersize=6 if model == "diffusion" else 14, label=model)
  ax.set_xscale("log")
  ax.set(xlabel="generated tokens/s (batch 32)",
         ylabel="perplexity of the samples under the AR twin")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path + ".tmp.png", dpi=120)
  os.replace(path + ".tmp.png", path)


def write(path: str, text: str) -> None:
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--diffusion_workdir", default="")
  parser.add_argument("--ar_workdir", default="")
  parser.add_argument("--train_quick", default="",
                      help="a config to train (and its :ar twin) first")
  parser.add_argument("--num_samples", type=int, default=256)
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--output_dir", required=True)
  args = parser.parse_args()
  os.makedirs(args.output_dir, exist_ok=True)
  if args.train_quick:
    args.diffusion_workdir, args.ar_workdir = train_quick(args.train_quick,
                                                          args.output_dir)
  diffusion, ar = api.load(args.diffusion_workdir), api.load(args.ar_workdir)
  if diffusion.tokenizer.to_json() != ar.tokenizer.to_json():
    sys.exit("error: the two workdirs use different tokenizers")

  rows = []
  settings = [("ar", ar, {})] + [("diffusion", diffusion, o) for o in
                                 diffusion_sweep(diffusion.config.data.seq_len)]
  for model, lm, options in settings:
    judged = judge(*samples(lm, options, args.num_samples), ar, lm)
    for batch in BATCHES:
      rows.append({"model": model, "options": options,
                   **speed(lm, options, batch, args.runs), **judged})
      print(json.dumps(rows[-1]), flush=True)
  ar_entropy = rows[0]["unigram_entropy_bits"]
  for r in rows:
    r["low_entropy"] = r["unigram_entropy_bits"] < 0.9 * ar_entropy
  summary = {"likelihood": {"diffusion": likelihood(args.diffusion_workdir),
                            "ar": likelihood(args.ar_workdir)},
             "frontier": frontier(rows)}
  print(json.dumps({"summary": summary}))
  write(os.path.join(args.output_dir, "results.jsonl"),
        "".join(json.dumps(r) + "\n" for r in rows + [{"summary": summary}]))
  write(os.path.join(args.output_dir, "table.md"), table(rows))
  plot(rows, os.path.join(args.output_dir, "frontier.png"))


if __name__ == "__main__":
  main()

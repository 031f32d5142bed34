"""Diffusion against its autoregressive twin: same data, size, code and machine.

  python benchmarks/diffusion_vs_ar.py --diffusion_workdir=runs/quickstart \
      --ar_workdir=runs/quickstart_ar --judge_workdir=runs/judge \
      [--block_workdir=runs/quickstart_bd3_4] --output_dir=runs/vs
      (either diffusion workdir may be left out)
  python benchmarks/diffusion_vs_ar.py --train_quick=configs/markov.py \
      --output_dir=runs/vs_markov    # trains CONFIG, CONFIG:ar, CONFIG:bd3 first

Prints one JSON line per (model, sampler setting, batch size) and writes
results.jsonl, table.md and frontier.png to --output_dir:

* speed: generated tokens/s (median of --runs timed runs, compilation left
  out), time to the first committed token and to the whole sequence,
  network calls and forward FLOPs per generated token (what the code
  computes: a diffusion call reads all L positions; a block-diffusion call
  reads its block of W against the cache, and once per block the finished
  block too, exact for one row: in a batch, a call where any row starts a
  block reads the finished blocks of all; an AR step attends over its whole
  static cache of L positions);
* quality, of --num_samples samples per setting drawn with float64 noise:
  perplexity per token of the sampled rows under a judge that wrote none of
  them (--judge_workdir: any model with the same tokenizer, e.g. the AR
  twin's recipe trained with another seed; exact for an AR judge, the
  NELBO bound for a diffusion one), cross-scored by every contestant (the
  AR twin's exact perplexity, the diffusion models' bounds), beside the
  samples' unigram entropy (flagged when it falls 10% below the AR
  samples': repetitive text games perplexity), and on the `markov` corpus
  the chain's exact report (diffusion_lm.quality) with the exact KL per
  document from the samples' own log q (the AR twin's exact likelihood of
  its rows, a diffusion model's replay along each commit path);
* likelihood: each model's bits per byte on its eval split (the diffusion
  bound, the AR exact value) from its metrics.jsonl;
* the frontier: per diffusion model and sampler, the fastest setting (batch 32) whose
  judge perplexity (the AR twin's without a judge) is within 10% of the AR
  samples', and its speed ratio to AR, both from this run; on `markov`, also
  the fastest setting on one row whose exact KL is within 0.2 bits per
  document of the AR samples'.
"""

import argparse
import json
import os
import subprocess
import sys

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

from diffusion_lm import api, evaluation, metrics, models, quality  # pylint: disable=g-import-not-at-top
from diffusion_lm.data import pipeline  # pylint: disable=g-import-not-at-top
from diffusion_lm.diffusion import sampler_options  # pylint: disable=g-import-not-at-top

import timing  # pylint: disable=g-import-not-at-top,wrong-import-order

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


def block_sweep(length: int) -> list[dict]:
  """Block diffusion's settings: the samplers within its blocks."""
  return ([{"sampler": "ancestral", "steps": length // 4},
           {"sampler": "first_hitting"}]
          + [{"sampler": "threshold", "threshold": t} for t in (0.9, 0.7, 0.5)]
          + [{"sampler": "threshold", "threshold": t, "spacing": d}
             for t, d in ((0.5, 2), (0.1, 4))]
          + [{"sampler": "entropy_bounded", "gamma": g} for g in (0.1, 1.0)])


def forward_flops(cfg, queries: int, keys: int) -> float:
  """Forward FLOPs of `queries` positions attending to `keys` positions."""
  d, h, k, f = cfg.embed_dim, cfg.num_heads, cfg.head_dim, cfg.mlp_dim
  weights = cfg.num_layers * (4 * d * h * k + 3 * d * f) + d * cfg.vocab_size
  return 2.0 * queries * weights + 4.0 * queries * keys * h * k * cfg.num_layers


def flops_per_token(lm, calls_per_token: float) -> float:
  """Forward FLOPs per generated token of a row: each call the whole
  sequence (diffusion), its block of W against the cache of L + W slots
  plus, once per block, the finished block's W (block diffusion), or one
  token against the static cache (AR; the prefill counted as one such call)."""
  cfg = models.TransformerConfig.from_config(lm.config.model,
                                             lm.tokenizer.vocab_size)
  length, w = lm.config.data.seq_len, cfg.block_size
  if w:
    return (calls_per_token + 1 / w) * forward_flops(cfg, w, length + w)
  return calls_per_token * forward_flops(cfg, 1 if cfg.causal else length,
                                         length)


def run(lm, init, options, seed=0):
  return jax.block_until_ready(lm.generate(init, seed=seed, **options))


def speed(lm, options: dict, batch: int, runs: int) -> dict:
  """Throughput and latency of one setting at one batch size (timing.py:
  each timed run its own seed; calls per token of the timed runs)."""
  init = lm.prompt_template("", batch)
  timed, result = timing.tokens_per_second(lm.generate, init, options, runs,
                                           lm.tokenizer.mask_id)
  commit = np.asarray(result.commit_step_BxL)
  iterations = int(commit.max()) + 1
  return {"batch": batch, "tokens_per_s": timed["tokens_per_s"],
          "seconds_to_sequence": timed["seconds"],
          # Seed 0's first iteration that committed a token, at its mean
          # iteration time (the median run's seconds).
          "seconds_to_first_token": timed["seconds"] * (
              int(commit[commit >= 0].min()) + 1) / iterations,
          "calls_per_token": timed["timed_calls_per_token"],
          "flops_per_token": flops_per_token(lm, timed["timed_calls_per_token"])}


def samples(lm, options: dict, num_samples: int):
  """(token rows [N, L], their texts, the generate results), drawn with
  float64 noise (the results hold 32 rows each, the last maybe more than N)."""
  results = [run(lm, lm.prompt_template("", 32), dict(options, float64=True),
                 seed=seed) for seed in range(-(-num_samples // 32))]
  texts = sum((lm.texts(r) for r in results), [])[:num_samples]
  rows = np.concatenate([np.asarray(r.tokens_BxL) for r in results])
  return rows[:num_samples], texts, results


def row_bits(lm, rows_NxL, num_t_samples: int = 16) -> np.ndarray:
  """-log2 p of each whole sampled row under `lm`: exact for an AR model,
  the NELBO bound (num_t_samples estimates) for a diffusion one."""
  step = evaluation.make_eval_step(
      lm.graphdef, jax.tree.map(lambda x: x.sharding, lm.params), lm.mesh,
      lm.tokenizer.mask_id, num_t_samples)
  batch = {"tokens": rows_NxL.astype(np.int32),
           "weights": np.ones(rows_NxL.shape, np.float32)}
  nats = evaluation.nelbos(step, lm.params,
                           pipeline.eval_batches(batch, lm.config.eval.batch_size),
                           lm.mesh, jax.random.PRNGKey(0))
  return nats[:, :len(rows_NxL)].mean(axis=0) / np.log(2)


def own_log2_q(lm, options: dict, rows_NxL, results) -> tuple[str, np.ndarray] | None:
  """(what it measures, log2 q of each sampled row) under the sampler that
  drew it: the AR twin's exact likelihood; a diffusion model's replay
  (quality.replay_log2_probs: kl_bits, or kl_upper_bits for random orders);
  None where the replay measures nothing exact."""
  if lm.config.model.objective == "autoregressive":
    return "kl_bits", -row_bits(lm, rows_NxL, num_t_samples=1)
  kind = quality.replay_kind(sampler_options.make_options(lm.config.sample,
                                                          options))
  if not kind or lm.config.model.time_conditioning:
    return None
  log2_q = np.concatenate([quality.replay_log2_probs(
      models.Denoiser(lm.graphdef), lm.params, r, lm.tokenizer.mask_id)
                           for r in results])
  return kind, log2_q[:len(rows_NxL)]


def judge(lm, options: dict, sampled, scorers: dict) -> dict:
  """Quality of samples (samples()' triple): perplexity under each scorer,
  unigram entropy, and on the markov corpus the chain's report with the
  exact KL."""
  rows_NxL, texts, results = sampled
  eos = lm.tokenizer.eos_id
  content = [row[:np.argmax(row == eos)] if np.any(row == eos) else row
             for row in rows_NxL]
  result = {f"{name}_perplexity":
            2 ** (row_bits(scorer, rows_NxL).sum() / rows_NxL.size)
            for name, scorer in scorers.items()}
  result["unigram_entropy_bits"] = float(np.mean(
      [quality.unigram_entropy_bits(c) for c in content if len(c)]))
  if lm.config.data.corpus == "markov":
    exact = own_log2_q(lm, options, rows_NxL, results)
    result.update(quality.chain_report(
        texts, lm.config.data.markov,
        **(dict(kl_name=exact[0], log2_q=exact[1]) if exact else {})))
  return result


def likelihood(workdir: str) -> dict:
  """The final evaluation's numbers from a workdir's metrics.jsonl."""
  records = [r for r in metrics.read_jsonl(workdir)
             if any(k.startswith("eval/") for k in r)]
  return {k[len("eval/"):]: v for k, v in records[-1].items()
          if k.startswith("eval/")} if records else {}


def train_quick(config: str, output_dir: str) -> dict:
  """Trains CONFIG, its AR twin and its block-diffusion variant (:bd3, or
  ,ar and ,bd3 after variants CONFIG names) into output_dir (resuming if
  there); their workdirs by model kind."""
  joiner = "," if ":" in config else ":"
  workdirs = {}
  for model, variant in (("diffusion", ""), ("ar", "ar"),
                         ("block_diffusion", "bd3")):
    workdirs[model] = os.path.join(output_dir, model)
    subprocess.run([sys.executable, "-m", "diffusion_lm.main",
                    f"--config={config}{joiner + variant if variant else ''}",
                    f"--workdir={workdirs[model]}",
                    "--config.sample.num_samples=0"], check=True)
  return workdirs


def _fastest(rows: list[dict], batch: int, passes) -> dict:
  """Per diffusion model and sampler, its fastest row at `batch` that
  `passes`."""
  best = {}
  for r in rows:
    if r["model"] != "ar" and r["batch"] == batch and passes(r):
      name = f"{r['model']} {r['options']['sampler']}"
      if name not in best or r["tokens_per_s"] > best[name]["tokens_per_s"]:
        best[name] = r
  return best


def frontier(rows: list[dict], key: str, tolerance: float = 0.1) -> dict:
  """Per diffusion model and sampler: the fastest setting at batch 32 within
  `tolerance` of the AR samples' perplexity under `key` (a row's key), and
  its speed ratio."""
  ar = next(r for r in rows if r["model"] == "ar" and r["batch"] == 32)
  best = _fastest(rows, 32, lambda r: r[key] <= (1 + tolerance) * ar[key])
  return {name: {"options": r["options"], key: r[key],
                 "tokens_per_s": r["tokens_per_s"],
                 "speed_vs_ar": r["tokens_per_s"] / ar["tokens_per_s"]}
          for name, r in best.items()}


def _kl(row: dict):
  """The exact KL per document, or the upper bound that stands for it."""
  return row.get("kl_bits", row.get("kl_upper_bits"))


def kl_frontier(rows: list[dict], margin_bits: float = 0.2) -> dict:
  """On a markov corpus, per diffusion model and sampler: the fastest setting
  on one row whose exact KL per document (an upper bound passes for the KL
  it bounds) is within margin_bits of the AR samples', and its speed ratio;
  empty when the AR samples hold no valid document."""
  ar = next(r for r in rows if r["model"] == "ar" and r["batch"] == 1)
  if _kl(ar) is None:
    return {}
  best = _fastest(rows, 1, lambda r: _kl(r) is not None
                  and _kl(r) <= _kl(ar) + margin_bits)
  return {name: {"options": r["options"], "kl_bits": _kl(r),
                 "ar_kl_bits": _kl(ar), "tokens_per_s": r["tokens_per_s"],
                 "speed_vs_ar": r["tokens_per_s"] / ar["tokens_per_s"]}
          for name, r in best.items()}


def table(rows: list[dict], scorers: list[str]) -> str:
  header = ("| model | options | batch | tokens/s | s to first token | "
            "calls/token | GFLOPs/token | "
            + " | ".join(f"{name} ppl" for name in scorers) + " | unigram H |")
  lines = [header, "|" + "---|" * (8 + len(scorers))]
  for r in rows:
    options = ", ".join(f"{k}={v}" for k, v in r["options"].items())
    low = " (low)" if r["low_entropy"] else ""
    lines.append(
        f"| {r['model']} | {options} | {r['batch']} | {r['tokens_per_s']:.0f} | "
        f"{r['seconds_to_first_token']:.3f} | {r['calls_per_token']:.3f} | "
        f"{r['flops_per_token'] / 1e9:.3f} | "
        + " | ".join(f"{r[f'{name}_perplexity']:.3f}" for name in scorers)
        + f" | {r['unigram_entropy_bits']:.2f}{low} |")
  return "\n".join(lines) + "\n"


MARKERS = {"diffusion": "o", "block_diffusion": "s", "ar": "*"}


def plot(rows: list[dict], scorer: str, path: str) -> None:
  fig, ax = plt.subplots(figsize=(6, 4))
  for model, marker in MARKERS.items():
    points = [(r["tokens_per_s"], r[f"{scorer}_perplexity"]) for r in rows
              if r["model"] == model and r["batch"] == 32]
    if points:
      ax.plot(*zip(*points), marker, markersize=14 if model == "ar" else 6,
              label=model)
  ax.set_xscale("log")
  ax.set(xlabel="generated tokens/s (batch 32)",
         ylabel=f"perplexity of the samples under the {scorer}")
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
  parser.add_argument("--block_workdir", default="",
                      help="a block-diffusion model of the same data, as a "
                      "third contestant")
  parser.add_argument("--judge_workdir", default="",
                      help="a model that wrote none of the samples, with the "
                      "same tokenizer, to judge them (recommended)")
  parser.add_argument("--train_quick", default="",
                      help="a config to train first, with its AR twin and "
                      "its block-diffusion variant (:bd3)")
  parser.add_argument("--num_samples", type=int, default=256)
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--output_dir", required=True)
  args = parser.parse_args()
  os.makedirs(args.output_dir, exist_ok=True)
  if args.train_quick:
    trained = train_quick(args.train_quick, args.output_dir)
    args.diffusion_workdir, args.ar_workdir, args.block_workdir = (
        trained["diffusion"], trained["ar"], trained["block_diffusion"])
  if not args.ar_workdir or not (args.diffusion_workdir or args.block_workdir):
    sys.exit("error: --ar_workdir and at least one of --diffusion_workdir "
             "and --block_workdir are required (or --train_quick)")
  ar = api.load(args.ar_workdir)
  scorers, contestants, sweeps = {"ar_twin": ar}, {"ar": args.ar_workdir}, {}
  for model, workdir, scorer, sweep in (
      ("diffusion", args.diffusion_workdir, "diffusion_bound", diffusion_sweep),
      ("block_diffusion", args.block_workdir, "block_bound", block_sweep)):
    if workdir:
      scorers[scorer] = api.load(workdir)
      contestants[model], sweeps[model] = workdir, (scorers[scorer], sweep)
  if args.judge_workdir:
    scorers = {"judge": api.load(args.judge_workdir), **scorers}
  if any(lm.tokenizer.to_json() != ar.tokenizer.to_json()
         for lm in scorers.values()):
    sys.exit("error: the workdirs use different tokenizers")
  key = next(iter(scorers))  # What the frontier and the figure use.

  rows = []
  length = ar.config.data.seq_len
  settings = [("ar", ar, {})] + [(model, lm, o) for model, (lm, sweep)
                                 in sweeps.items() for o in sweep(length)]
  for model, lm, options in settings:
    judged = judge(lm, options, samples(lm, options, args.num_samples), scorers)
    for batch in BATCHES:
      rows.append({"model": model, "options": options,
                   **speed(lm, options, batch, args.runs), **judged})
      print(json.dumps(rows[-1]), flush=True)
  ar_entropy = rows[0]["unigram_entropy_bits"]
  for r in rows:
    r["low_entropy"] = r["unigram_entropy_bits"] < 0.9 * ar_entropy
  summary = {"likelihood": {model: likelihood(workdir)
                            for model, workdir in contestants.items()},
             "frontier_by": key, "frontier": frontier(rows, f"{key}_perplexity")}
  if ar.config.data.corpus == "markov":
    summary["kl_frontier"] = kl_frontier(rows)
  print(json.dumps({"summary": summary}))
  write(os.path.join(args.output_dir, "results.jsonl"),
        "".join(json.dumps(r) + "\n" for r in rows + [{"summary": summary}]))
  write(os.path.join(args.output_dir, "table.md"), table(rows, list(scorers)))
  plot(rows, key, os.path.join(args.output_dir, "frontier.png"))


if __name__ == "__main__":
  main()

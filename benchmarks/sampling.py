"""The samplers' speed / quality frontier on a trained model.

  python benchmarks/sampling.py --workdir=runs/markov [--md4_path=DIR] \
      [--num_samples=1024] [--output_dir=runs/markov/sampling] [--oracle]

For every setting of a sweep (each sampler over its knob: steps, threshold,
factor, gamma, eta; spacing for threshold and entropy_bounded) prints one
JSON line: the options, network calls per generated token, tokens/s at
batch 1 and 32 (median of --runs timed runs, compilation left out) and the
quality of --num_samples samples drawn with float64 noise. On the `markov`
corpus quality is exact (diffusion_lm.quality: the samples' -log2 p under
the chain, and the total variation and KL of their (k+1)-gram frequencies
from the chain's, each beside its floor: the same distance for as many fresh
documents of the chain). Elsewhere it is the model's own NELBO of its
samples (bits per byte) beside their unigram entropy.

Then one summary line. The reference is ancestral sampling with one token
per network call (`first_hitting`, its exact limit); `frontier` lists, per
sampler, the fewest calls per token whose n-gram TV stays within 0.02 of the
reference's. With --md4_path (benchmarks/md4_peer.py), md4's sampler and
ours are timed alternately at md4's text8 shape (16 x 256, 4 layers of width
256, random weights): seconds per network call, and tokens/s of md4's
default 1,000 steps against our frontier's fewest calls (projected: calls per
token x 256 positions x our seconds per call). A PNG of calls per token
against quality goes to --output_dir, beside the JSON lines.

--oracle (a `markov` workdir) runs the same sweep with the chain's exact
denoiser (diffusion_lm.chain_oracle) in place of the network: each setting's
error is then the sampler's alone, with no model error on top. It reports
calls per token and quality, not speed.
"""

import argparse
import functools
import json
import os
import statistics
import time

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

from diffusion_lm import api, chain_oracle, config_base, errors, models, quality  # pylint: disable=g-import-not-at-top
from diffusion_lm.diffusion import samplers  # pylint: disable=g-import-not-at-top


def sweep(length: int) -> list[dict]:
  """Each sampler over its knob (length: positions to generate)."""
  steps = sorted({max(1, length // d) for d in (1, 2, 4, 8, 16)}, reverse=True)
  return ([{"sampler": "ancestral", "steps": s} for s in steps]
          + [{"sampler": "first_hitting"}]
          + [{"sampler": "confidence", "steps": s} for s in steps[1:]]
          + [{"sampler": "threshold", "threshold": t}
             for t in (0.99, 0.95, 0.9, 0.8, 0.7, 0.5)]
          + [{"sampler": "factor", "factor": f} for f in (0.25, 0.5, 1.0, 2.0)]
          + [{"sampler": "entropy_bounded", "gamma": g}
             for g in (0.1, 0.3, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)]
          + [{"sampler": "threshold", "threshold": 0.5, "spacing": d}
             for d in (4, 6, 8)]
          + [{"sampler": "entropy_bounded", "gamma": 3.0, "spacing": d}
             for d in (4, 6, 8)]
          + [{"sampler": "remdm", "steps": length, "eta": e} for e in (0.02, 0.05)])


def label(options: dict) -> str:
  """The sampler's name; spaced settings (spacing > 1) are a curve of their own."""
  return options["sampler"] + (" spaced" if options.get("spacing", 1) > 1 else "")


def timed(fn, runs: int) -> float:
  """Median seconds of `runs` calls after a first (compiling) one."""
  jax.block_until_ready(fn())
  seconds = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    seconds.append(time.perf_counter() - start)
  return statistics.median(seconds)


def generated_tokens(init_BxL, result, mask_id) -> int:
  before_end = np.arange(init_BxL.shape[1]) < np.asarray(result.length_B)[:, None]
  return int(np.sum((init_BxL == mask_id) & before_end))


def oracle_generate(lm):
  """lm.generate with the chain's exact denoiser in place of the network."""
  denoiser, chain = chain_oracle.from_config(lm.config.data, lm.tokenizer)
  return functools.partial(lm.generate_with, denoiser, chain,
                           reads_mask_rate=False)


def measure(lm, generate, options: dict, num_samples: int, runs: int) -> dict:
  """Calls per token, tokens/s at batch 1 and 32 (unless runs = 0), and
  quality of one setting, sampled with generate (lm.generate or the oracle's)."""
  mask_id = lm.tokenizer.mask_id
  row = {"options": options}
  for batch in (1, 32) if runs else ():
    init = lm.prompt_template("", batch)
    result = generate(init, seed=0, **options)
    seconds = timed(lambda: generate(init, seed=0, **options), runs)
    row[f"tokens_per_s_batch{batch}"] = generated_tokens(init, result, mask_id) / seconds
  init = lm.prompt_template("", 32)
  texts, calls, tokens = [], 0, 0
  for seed in range(-(-num_samples // 32)):
    result = generate(init, seed=seed, float64=True, **options)
    texts += lm.texts(result)
    calls += int(np.sum(result.calls_B))
    tokens += generated_tokens(init, result, mask_id)
  row["calls_per_token"] = calls / tokens
  data = lm.config.data
  if data.corpus == "markov":
    row.update(quality.chain_report(texts, data.markov))
  else:
    bits = lm.score(texts, num_t_samples=8)
    row["nelbo_bits_per_byte"] = float(
        np.sum(bits) / sum(len(t.encode()) for t in texts))
    row["unigram_entropy_bits"] = float(np.mean(
        [quality.unigram_entropy_bits(lm.tokenizer.encode(t)) for t in texts]))
  return row


def frontier(rows: list[dict], tolerance: float = 0.02) -> dict:
  """Per sampler (and spacing), the fewest calls per token within `tolerance`
  n-gram TV of ancestral sampling with one token per network call
  (first_hitting: its exact, infinitely-many-steps limit)."""
  reference = next(r for r in rows if r["options"]["sampler"] == "first_hitting")
  best = {}
  for r in rows:
    name = label(r["options"])
    if r["ngram_tv"] <= reference["ngram_tv"] + tolerance and (
        name not in best or r["calls_per_token"] < best[name]["calls_per_token"]):
      best[name] = r
  return {"reference": reference,
          "frontier": {k: {"options": v["options"],
                           "calls_per_token": v["calls_per_token"],
                           "ngram_tv": v["ngram_tv"],
                           "calls_vs_reference": v["calls_per_token"]
                                                 / reference["calls_per_token"]}
                       for k, v in best.items()}}


def md4_side_by_side(md4_path: str, fewest_calls_per_token: float,
                     runs: int) -> dict:
  """Seconds per network call, md4's sampler and ours at md4's text8 shape."""
  import md4_peer  # pylint: disable=g-import-not-at-top
  shape = dict(layers=4, width=256, heads=4, seq=256, vocab=256, batch=16)
  config = config_base.base_config()
  config.model.update(num_layers=4, num_heads=4, head_dim=64, embed_dim=256,
                      mlp_dim=704, time_conditioning=True, batch_slices=4)
  cfg = models.TransformerConfig.from_config(config.model, 256)
  graphdef, _ = models.abstract_model(cfg)
  params = jax.jit(lambda k: models.init_params(cfg, k))(jax.random.PRNGKey(0))
  init = np.full((16, 256), 256, np.int32)
  options = samplers.make_options(config.sample, {"steps": 32})

  def ours():  # A time-reading model: a network call at every step.
    return samplers.sample(models.Denoiser(graphdef), params, jax.random.PRNGKey(1),
                           init, mask_id=256, eos_id=None, reads_mask_rate=True,
                           options=options)

  md4_s, ours_s = [], []
  for _ in range(runs):  # Alternately, so that both see the same machine.
    md4_s.append(md4_peer.sample_step_seconds(md4_path, **shape, repeats=1))
    ours_s.append(timed(ours, 1) / 32)
  md4_call, ours_call = statistics.median(md4_s), statistics.median(ours_s)
  md4_tokens_per_s = 16 * 256 / (1001 * md4_call)
  # 16 rows of 256 tokens in fewest_calls_per_token x 256 batched calls.
  ours_tokens_per_s = 16 / (fewest_calls_per_token * ours_call)
  return {"shape": shape, "md4_s_per_call": md4_call, "ours_s_per_call": ours_call,
          "call_cost_ratio_ours_over_md4": ours_call / md4_call,
          "md4_1000_steps_tokens_per_s": md4_tokens_per_s,
          "ours_fewest_calls_tokens_per_s_projected": ours_tokens_per_s,
          "speedup_over_md4": ours_tokens_per_s / md4_tokens_per_s}


def plot(rows: list[dict], path: str, key: str) -> None:
  fig, ax = plt.subplots(figsize=(6, 4))
  for name in dict.fromkeys(label(r["options"]) for r in rows):
    points = sorted((r["calls_per_token"], r[key]) for r in rows
                    if label(r["options"]) == name and key in r)
    ax.plot(*zip(*points), "o-", label=name)
  if key == "ngram_tv":
    ax.axhline(statistics.median(r["ngram_tv_floor"] for r in rows),
               color="gray", linestyle=":", label="floor (true chain)")
  ax.set_xscale("log")
  ax.set(xlabel="network calls per generated token", ylabel=key)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path + ".tmp.png", dpi=120)
  os.replace(path + ".tmp.png", path)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--num_samples", type=int, default=1024)
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--md4_path", default="")
  parser.add_argument("--output_dir", default="")
  parser.add_argument("--oracle", action="store_true",
                      help="sample with the chain's exact denoiser (markov)")
  args = parser.parse_args()
  if args.oracle and args.md4_path:
    parser.error("--oracle measures quality only; drop --md4_path")

  lm = api.load(args.workdir)
  try:
    generate = oracle_generate(lm) if args.oracle else lm.generate
  except errors.UserError as e:
    parser.error(f"--oracle: {e}")
  rows = []
  for options in sweep(lm.config.data.seq_len):
    rows.append(measure(lm, generate, options, args.num_samples,
                        0 if args.oracle else args.runs))
    print(json.dumps(rows[-1]), flush=True)
  summary = {}
  if "ngram_tv" in rows[0]:
    summary = frontier(rows)
    fewest = min(v["calls_per_token"] for v in summary["frontier"].values())
    if args.md4_path:
      summary["md4"] = md4_side_by_side(args.md4_path, fewest, args.runs)
  print(json.dumps({"summary": summary}))
  if args.output_dir:
    os.makedirs(args.output_dir, exist_ok=True)
    key = "ngram_tv" if "ngram_tv" in rows[0] else "nelbo_bits_per_byte"
    name = "sampling_oracle" if args.oracle else "sampling"
    plot(rows, os.path.join(args.output_dir, f"{name}_frontier.png"), key)
    with open(os.path.join(args.output_dir, f"{name}.jsonl"), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows + [{"summary": summary}])


if __name__ == "__main__":
  main()

"""The samplers' speed / quality frontier, on one chain or several.

  python benchmarks/sampling.py --workdir=runs/markov[,runs/markov_s3] \
      [--num_samples=512] [--output_dir=DIR] [--md4_path=DIR]
  python benchmarks/sampling.py --oracle --chains=0,3,7,0:2 [--num_samples=512]

For every setting of a sweep (--sweep=dense: first_hitting, ancestral and
confidence over their steps, threshold from 0.1 to 1 in steps of 0.05,
factor and entropy_bounded over several values, each of these three at
--spacings (default 1 to 8), and remdm; --sweep=coarse: a few settings of each) prints
one JSON line per model or chain: the options, network calls per generated
token, tokens/s at batch 1 and 32 (median of --runs timed runs, compilation
left out) and the quality of --num_samples samples drawn with float64 noise.
On the `markov` corpus quality is exact (diffusion_lm.quality): the replay
KL(q || p) per document with its standard error (an upper bound for
ancestral and first_hitting, none for remdm or a time-conditioned model),
skip-gram TV at distances 1..8, (k+1)-gram TV and -log2 p per symbol under
the chain, each beside its floor over --floor_draws sets of as many fresh
documents, and valid_fraction. Elsewhere it is the model's own NELBO of its
samples (bits per byte) beside their unigram entropy.

The reference is ancestral sampling with one token per network call
(`first_hitting`, its exact limit). `excess_sd` says how far a setting's
worst measure lies beyond the reference's, in standard deviations of its
noise (the floor's for the TVs and the likelihood, the standard errors for
the KL); a setting is as good as the reference when it is at most
--tolerance_sd. One summary line per chain gives, per sampler (spaced
settings apart), the fewest calls per token that are; a last one, per
sampler, the setting whose most calls per token over all chains is fewest
among those as good as the reference on every chain. With --md4_path
(benchmarks/md4_peer.py; one --workdir), md4's sampler and ours are timed
alternately at md4's text8 shape (16 x 256, 4 layers of width 256, random
weights): seconds per network call, and tokens/s of md4's default 1,000
steps against the fewest calls of that worst case (projected: calls per
token x 256 positions x our seconds per call). --output_dir gets the JSON
lines and a PNG per chain of calls per token against excess_sd.

--oracle samples with the chain's exact denoiser (diffusion_lm.chain_oracle)
in place of the network: each setting's error is then the sampler's alone.
It measures calls per token and quality, not speed, and needs no trained
model: --chains=SEED[:ORDER],... takes configs/markov.py's chain with those
data.markov seeds (and orders; default the recipe's); --workdir takes a
`markov` run's chain.
"""

import argparse
import functools
import json
import math
import os
import runpy
import statistics
import time

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

from diffusion_lm import api, chain_oracle, config_base, errors, models, quality  # pylint: disable=g-import-not-at-top
from diffusion_lm.data import tokenizers  # pylint: disable=g-import-not-at-top
from diffusion_lm.diffusion import sampler_options, samplers

import timing as timing_lib  # pylint: disable=g-import-not-at-top,wrong-import-order

RECIPE = os.path.join(os.path.dirname(__file__), "..", "configs", "markov.py")
BATCH = 64  # Rows sampled at once for quality.
TOLERANCE_SD = 3.0
SPACINGS = tuple(range(1, 9))
# The dense sweep's knobs (threshold: at most 1/alphabet_size commits every
# eligible position, the same from 0.125 down on the recipe's 8 symbols).
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(2, 21))
FACTORS = (0.5, 1.0, 2.0, 4.0, 8.0)
GAMMAS = (0.1, 0.3, 1.0, 3.0, 10.0)


def _spaced(settings: list[dict], spacings) -> list[dict]:
  return [dict(s, **({"spacing": d} if d > 1 else {}))
          for d in spacings for s in settings]


def sweep(length: int, dense: bool = False, spacings=SPACINGS) -> list[dict]:
  """Each sampler over its knob (length: positions to generate), the
  reference (first_hitting) first; `dense` as --sweep=dense, threshold,
  factor and entropy_bounded each at `spacings`."""
  steps = sorted({max(1, length // d) for d in (1, 2, 4, 8, 16)}, reverse=True)
  adaptive = (_spaced([{"sampler": "threshold", "threshold": t} for t in THRESHOLDS]
                      + [{"sampler": "factor", "factor": f} for f in FACTORS]
                      + [{"sampler": "entropy_bounded", "gamma": g} for g in GAMMAS],
                      spacings) if dense else
              [{"sampler": "threshold", "threshold": t}
               for t in (0.99, 0.95, 0.9, 0.8, 0.7, 0.5)]
              + [{"sampler": "factor", "factor": f} for f in (0.25, 0.5, 1.0, 2.0)]
              + [{"sampler": "entropy_bounded", "gamma": g}
                 for g in (0.1, 0.3, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)]
              + [{"sampler": "threshold", "threshold": 0.5, "spacing": d}
                 for d in (4, 6, 8)]
              + [{"sampler": "entropy_bounded", "gamma": 3.0, "spacing": d}
                 for d in (4, 6, 8)])
  return ([{"sampler": "first_hitting"}]
          + [{"sampler": "ancestral", "steps": s} for s in steps]
          + [{"sampler": "confidence", "steps": s} for s in steps[1:]]
          + adaptive
          + [{"sampler": "remdm", "steps": length, "eta": e} for e in (0.02, 0.05)])


def label(options: dict) -> str:
  """The sampler's name; spaced settings (spacing > 1) are a curve of their own."""
  return options["sampler"] + (" spaced" if options.get("spacing", 1) > 1 else "")


def network(lm) -> tuple | None:
  """(denoise_fn, params) of lm's network for the replay KL; None when it
  reads the masking rate, which the replay cannot give it."""
  if lm.config.model.time_conditioning:
    return None
  return models.Denoiser(lm.graphdef), lm.params


def measure(lm, generate, options: dict, num_samples: int, runs: int,
            denoiser: tuple | None = None, floor_draws: int = 100) -> dict:
  """Calls per token, tokens/s at batch 1 and 32 (unless runs = 0), and
  quality of one setting, sampled with generate (lm.generate or the
  oracle's); the replay KL with denoiser, generate's (denoise_fn, params)."""
  mask_id = lm.tokenizer.mask_id
  row = {"options": options}
  for batch in (1, 32) if runs else ():
    timing, _ = timing_lib.tokens_per_second(
        generate, lm.prompt_template("", batch), options, runs, mask_id)
    row[f"tokens_per_s_batch{batch}"] = timing["tokens_per_s"]
    row[f"timed_calls_per_token_batch{batch}"] = timing["timed_calls_per_token"]
  kind = denoiser and quality.replay_kind(
      sampler_options.make_options(lm.config.sample, options))
  init = lm.prompt_template("", min(num_samples, BATCH))
  texts, calls, tokens, log2_q = [], 0, 0, []
  for seed in range(-(-num_samples // len(init))):
    result = generate(init, seed=seed, float64=True, **options)
    texts += lm.texts(result)
    calls += int(np.sum(result.calls_B))
    tokens += timing_lib.generated_tokens(init, result, mask_id)
    if kind:
      log2_q.append(quality.replay_log2_probs(*denoiser, result, mask_id))
  row.update(calls_per_token=calls / tokens, num_samples=len(texts))
  data = lm.config.data
  if data.corpus == "markov":
    row.update(quality.chain_report(
        texts, data.markov, draws=floor_draws, kl_name=kind or "kl_bits",
        log2_q=np.concatenate(log2_q) if kind else None))
  else:
    bits = lm.score(texts, num_t_samples=8)
    row["nelbo_bits_per_byte"] = float(
        np.sum(bits) / sum(len(t.encode()) for t in texts))
    row["unigram_entropy_bits"] = float(np.mean(
        [quality.unigram_entropy_bits(lm.tokenizer.encode(t)) for t in texts]))
  return row


def _kl(row: dict):
  return row.get("kl_bits", row.get("kl_upper_bits"))


def excess_sd(row: dict, ref: dict) -> float:
  """How far row's quality lies beyond the reference row's, in standard
  deviations of the difference: the most, over its measures, of
  (row - ref) / noise. Both rows are samples, so the noise of the TVs and of
  the likelihood (either way) is sqrt(2) x their floor's standard deviation,
  of valid_fraction the binomial's likewise, of the KL the two standard
  errors combined (an upper bound passes for the KL it bounds)."""
  if "skipgram_tv" not in row or "skipgram_tv" not in ref:
    return math.inf  # No valid document to judge.
  nll = "chain_nll_bits_per_symbol"
  gaps = [(row["ngram_tv"] - ref["ngram_tv"], row["ngram_tv_floor_sd"]),
          (abs(row[nll] - ref[nll]), row[f"{nll}_floor_sd"])]
  gaps += zip(np.subtract(row["skipgram_tv"], ref["skipgram_tv"]),
              row["skipgram_tv_floor_sd"])
  v, n = ref["valid_fraction"], row["num_samples"]
  gaps.append((v - row["valid_fraction"], math.sqrt(max(v * (1 - v), 1 / n) / n)))
  gaps = [(gap, math.sqrt(2) * sd) for gap, sd in gaps]
  if _kl(row) is not None and _kl(ref) is not None:
    gaps.append((_kl(row) - _kl(ref), math.hypot(row["kl_se_bits"], ref["kl_se_bits"])))
  return max(gap / max(sd, 1e-9) for gap, sd in gaps)  # 1e-9: float64 noise.


def _summary(row: dict, calls_ref: float) -> dict:
  keep = ("options", "calls_per_token", "excess_sd", "valid_fraction",
          "kl_bits", "kl_upper_bits", "ngram_tv", "chain_nll_bits_per_symbol")
  out = {k: row[k] for k in keep if k in row}
  if "skipgram_tv" in row:
    out["skipgram_tv_max"] = max(row["skipgram_tv"])
  out["calls_vs_reference"] = row["calls_per_token"] / calls_ref
  return out


def reference(rows: list[dict]) -> dict:
  return next(r for r in rows if r["options"]["sampler"] == "first_hitting")


def frontier(rows: list[dict], tolerance_sd: float = TOLERANCE_SD) -> dict:
  """Per sampler (and spacing), the fewest calls per token within
  tolerance_sd of ancestral sampling with one token per network call
  (first_hitting: its exact, infinitely-many-steps limit)."""
  ref = reference(rows)
  best = {}
  for r in rows:
    r = dict(r, excess_sd=excess_sd(r, ref))
    name = label(r["options"])
    if r["excess_sd"] <= tolerance_sd and (
        name not in best or r["calls_per_token"] < best[name]["calls_per_token"]):
      best[name] = r
  return {"reference": _summary(dict(ref, excess_sd=0.0), ref["calls_per_token"]),
          "tolerance_sd": tolerance_sd,
          "frontier": {k: _summary(v, ref["calls_per_token"]) for k, v in best.items()}}


def worst_case(rows_by_chain: dict, tolerance_sd: float = TOLERANCE_SD) -> dict:
  """Per sampler (and spacing), the setting within tolerance_sd of the
  reference on every chain whose most calls per token over the chains is
  fewest, with each chain's calls per token."""
  settings = {}
  for chain, rows in rows_by_chain.items():
    ref = reference(rows)
    for r in rows:
      settings.setdefault(json.dumps(r["options"], sort_keys=True), {})[chain] = (
          r["calls_per_token"], excess_sd(r, ref))
  best = {}
  for key, by_chain in settings.items():
    calls = max(c for c, _ in by_chain.values())
    excess = max(e for _, e in by_chain.values())
    name = label(json.loads(key))
    if (len(by_chain) == len(rows_by_chain) and excess <= tolerance_sd
        and (name not in best or calls < best[name]["calls_per_token_worst"])):
      best[name] = {"options": json.loads(key), "calls_per_token_worst": calls,
                    "excess_sd_worst": excess,
                    "calls_per_token": {c: v[0] for c, v in by_chain.items()}}
  return best


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
  options = sampler_options.make_options(config.sample, {"steps": 32})

  def ours():  # A time-reading model: a network call at every step.
    return samplers.sample(models.Denoiser(graphdef), params, jax.random.PRNGKey(1),
                           init, mask_id=256, eos_id=None, reads_mask_rate=True,
                           options=options)

  md4_s, ours_s = [], []
  jax.block_until_ready(ours())  # Compiles.
  for _ in range(runs):  # Alternately, so that both see the same machine.
    md4_s.append(md4_peer.sample_step_seconds(md4_path, **shape, repeats=1))
    start = time.perf_counter()
    jax.block_until_ready(ours())
    ours_s.append((time.perf_counter() - start) / 32)
  md4_call, ours_call = statistics.median(md4_s), statistics.median(ours_s)
  md4_tokens_per_s = 16 * 256 / (1001 * md4_call)
  # 16 rows of 256 tokens in fewest_calls_per_token x 256 batched calls.
  ours_tokens_per_s = 16 / (fewest_calls_per_token * ours_call)
  return {"shape": shape, "md4_s_per_call": md4_call, "ours_s_per_call": ours_call,
          "call_cost_ratio_ours_over_md4": ours_call / md4_call,
          "md4_1000_steps_tokens_per_s": md4_tokens_per_s,
          "ours_fewest_calls_tokens_per_s_projected": ours_tokens_per_s,
          "speedup_over_md4": ours_tokens_per_s / md4_tokens_per_s}


def plot(rows: list[dict], path: str, key: str,
         tolerance_sd: float = TOLERANCE_SD) -> None:
  """Calls per token against `key` (e.g. excess_sd, ngram_tv), a marker per
  setting, a colour per sampler."""
  fig, ax = plt.subplots(figsize=(6, 4))
  for name in dict.fromkeys(label(r["options"]) for r in rows):
    points = [(r["calls_per_token"], r[key]) for r in rows
              if label(r["options"]) == name and math.isfinite(r.get(key, math.inf))]
    if points:
      ax.plot(*zip(*sorted(points)), "o", markersize=3, label=name)
  if key == "ngram_tv":
    ax.axhline(statistics.median(r["ngram_tv_floor"] for r in rows),
               color="gray", linestyle=":", label="floor (true chain)")
  if key == "excess_sd":
    ax.set_yscale("symlog")
    ax.axhline(tolerance_sd, color="gray", linestyle=":", label="tolerance")
  ax.set_xscale("log")
  ax.set(xlabel="network calls per generated token", ylabel=key,
         title=rows[0].get("chain", ""))
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path + ".tmp.png", dpi=120)
  os.replace(path + ".tmp.png", path)


def recipe_chain(seed: int, order: int | None) -> api.DiffusionLM:
  """configs/markov.py's config with this chain, as an API object with no
  network (it samples only through generate_with)."""
  config = runpy.run_path(RECIPE)["get_config"]()
  config.data.markov.seed = seed
  if order is not None:
    config.data.markov.order = order
  tokenizer = tokenizers.from_config(config.data, "")
  return api.DiffusionLM(None, None, config, tokenizer, None)


def targets(args) -> dict:
  """Name -> (lm, generate, replay denoiser) of each model or chain."""
  if args.chains:
    specs = [c.split(":") for c in args.chains.split(",")]
    try:
      lms = [recipe_chain(int(s[0]), int(s[1]) if len(s) > 1 else None)
             for s in specs]
    except (ValueError, IndexError):
      raise errors.UserError(f"--chains={args.chains!r}: expected "
                             "SEED[:ORDER],... (integers)") from None
  else:
    lms = {w: api.load(w) for w in args.workdir.split(",")}
  if isinstance(lms, list):
    lms = {f"order{lm.config.data.markov.order}_seed{lm.config.data.markov.seed}":
           lm for lm in lms}
  out = {}
  for name, lm in lms.items():
    if not args.oracle:
      out[name] = (lm, lm.generate, network(lm))
      continue
    try:
      denoiser = chain_oracle.from_config(lm.config.data, lm.tokenizer)
    except errors.UserError as e:
      raise errors.UserError(f"--oracle ({name}): {e}") from None
    out[name] = (lm, functools.partial(lm.generate_with, *denoiser,
                                       reads_mask_rate=False), denoiser)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="",
                      help="a run's workdir, or several, comma-separated")
  parser.add_argument("--chains", default="",
                      help="--oracle without a workdir: SEED[:ORDER],...")
  parser.add_argument("--num_samples", type=int, default=512)
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--sweep", choices=("dense", "coarse"), default="dense")
  parser.add_argument("--spacings", default=",".join(map(str, SPACINGS)),
                      help="--sweep=dense: the spacings of the adaptive rules")
  parser.add_argument("--tolerance_sd", type=float, default=TOLERANCE_SD)
  parser.add_argument("--floor_draws", type=int, default=100)
  parser.add_argument("--md4_path", default="")
  parser.add_argument("--output_dir", default="")
  parser.add_argument("--oracle", action="store_true",
                      help="sample with the chain's exact denoiser (markov)")
  args = parser.parse_args()
  if bool(args.workdir) == bool(args.chains):
    parser.error("give --workdir or (with --oracle) --chains, not both")
  if args.chains and not args.oracle:
    parser.error("--chains needs --oracle (trained models: --workdir)")
  if args.md4_path and (args.oracle or "," in args.workdir):
    parser.error("--md4_path times one trained model: one --workdir, no --oracle")
  spacings = [int(d) for d in args.spacings.split(",") if d.isdigit()]
  if len(spacings) != len(args.spacings.split(",")) or 0 in spacings:
    parser.error(f"--spacings={args.spacings!r}: expected integers >= 1, "
                 "comma-separated")
  try:
    chains = targets(args)
  except errors.UserError as e:
    parser.error(str(e))

  lengths = {lm.config.data.seq_len for lm, _, _ in chains.values()}
  rows = {name: [] for name in chains}
  for options in sweep(max(lengths), args.sweep == "dense", spacings):
    for name, (lm, generate, denoiser) in chains.items():
      row = measure(lm, generate, options, args.num_samples,
                    0 if args.oracle else args.runs, denoiser, args.floor_draws)
      if "skipgram_tv" in row:
        row["excess_sd"] = excess_sd(row, reference(rows[name] + [row]))
      rows[name].append(dict(row, chain=name))
      print(json.dumps(rows[name][-1]), flush=True)

  summaries = []
  if all("skipgram_tv" in r[0] for r in rows.values()):
    for name, chain_rows in rows.items():
      ref = reference(chain_rows)
      floors = {k: v for k, v in ref.items() if "_floor" in k}
      summaries.append({"chain": name, "floors": floors,
                        **frontier(chain_rows, args.tolerance_sd)})
    summary = {"worst_case": worst_case(rows, args.tolerance_sd),
               "chains": list(rows), "tolerance_sd": args.tolerance_sd,
               "num_samples": args.num_samples}
    if args.md4_path:
      fewest = min(v["calls_per_token_worst"] for v in summary["worst_case"].values())
      summary["md4"] = md4_side_by_side(args.md4_path, fewest, args.runs)
    summaries.append({"summary": summary})
  for line in summaries:
    print(json.dumps(line), flush=True)
  if args.output_dir:
    os.makedirs(args.output_dir, exist_ok=True)
    name = "sampling_oracle" if args.oracle else "sampling"
    for i, (chain, chain_rows) in enumerate(rows.items()):
      key = ("excess_sd" if "skipgram_tv" in chain_rows[0]
             else "nelbo_bits_per_byte")
      plot(chain_rows, os.path.join(args.output_dir, f"{name}_frontier_{i}.png"),
           key, args.tolerance_sd)
    with open(os.path.join(args.output_dir, f"{name}.jsonl"), "w") as f:
      f.writelines(json.dumps(r) + "\n" for chain_rows in rows.values()
                   for r in chain_rows)
      f.writelines(json.dumps(line) + "\n" for line in summaries)


if __name__ == "__main__":
  main()

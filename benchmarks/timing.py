"""Timing a sampler: generated tokens per second over several seeds.

A sampler's calls (and so its time) depend on what it draws, so one fixed
sample says little: each timed run uses its own seed, and the calls per
token of exactly those runs are reported beside the speed.
"""

import statistics
import time

import jax
import numpy as np


def generated_tokens(init_BxL, result, mask_id: int) -> int:
  """[MASK] positions of init_BxL filled before each row's end."""
  before_end = np.arange(init_BxL.shape[1]) < np.asarray(result.length_B)[:, None]
  return int(np.sum((init_BxL == mask_id) & before_end))


def tokens_per_second(generate, init_BxL, options: dict, runs: int,
                      mask_id: int) -> tuple[dict, object]:
  """generate(init_BxL, seed=s, **options) timed for seeds 0 .. runs - 1,
  after one untimed run that compiles it.

  Returns ({tokens_per_s: the median over runs of each run's tokens /
  seconds, seconds: the median seconds, timed_calls_per_token: network
  calls / generated tokens over the timed runs, timed_runs}, the result of
  seed 0).
  """
  jax.block_until_ready(generate(init_BxL, seed=runs, **options))
  rates, seconds, calls, tokens, first = [], [], 0, 0, None
  for seed in range(runs):
    start = time.perf_counter()
    result = jax.block_until_ready(generate(init_BxL, seed=seed, **options))
    seconds.append(time.perf_counter() - start)
    generated = generated_tokens(init_BxL, result, mask_id)
    rates.append(generated / seconds[-1])
    calls, tokens = calls + int(np.sum(result.calls_B)), tokens + generated
    first = result if first is None else first
  return {"tokens_per_s": statistics.median(rates),
          "seconds": statistics.median(seconds),
          "timed_calls_per_token": calls / tokens, "timed_runs": runs}, first

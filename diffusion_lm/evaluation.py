"""Evaluation: the NELBO bound over a split, as bits per token / byte and perplexity.

  bits_per_token = sum of per-row NELBOs / ln 2 / tokens (EOS included;
                   filler after the content is scored but not counted)
  bits_per_byte  = the same bits / UTF-8 bytes of text the counted tokens
                   stand for (tokenizer.token_bytes; EOS counts 0): bits per
                   character for text8, bytes the tokens cover for subwords
  perplexity     = 2 ** bits_per_token

All are upper bounds (the NELBO bounds -log p) on the likelihood of the
documents, their lengths included; with `data.condition_on_length` they bound
-log p(documents | lengths) and their names end in `_given_length`. For the
autoregressive twin they are exact (autoregressive.sequence_nll), under the
same names, with standard errors of 0.

Each row's NELBO is estimated eval.num_t_samples times with the any-order
form (objective.any_order_nelbo: unbiased, finite variance). Each `bits_per_*`
comes with `bits_per_*_stderr`, the standard error of that Monte Carlo
estimate: from each row's own spread over its estimates when there are two
or more, else from the spread between rows, which overestimates it (rows
differ in their true NELBO too). NELBOs come off the device in float32 and
are summed in float64.

A whole split shows its progress (_Progress): a bar when stderr is a
terminal, else a log line with the ETA every minute (none for a shorter one).
"""

import math
import sys
import time

import jax
import numpy as np
import tqdm
from absl import logging
from flax import nnx

from diffusion_lm import autoregressive, parallel
from diffusion_lm.data import pipeline
from diffusion_lm.diffusion import objective


def make_eval_step(graphdef, param_shardings, mesh, mask_id: int,
                   num_t_samples: int):
  """jit(params, batch, key) -> NELBO estimates in nats, [num_t_samples, B];
  for the autoregressive twin, the exact -log p, [1, B]."""
  def eval_step(params, batch, key):
    model = nnx.merge(graphdef, params)
    if model.cfg.causal:
      return autoregressive.sequence_nll(model, batch, mask_id,
                                         model.cfg.batch_slices)[None]
    return objective.eval_nelbo(model, batch, key, mask_id, num_t_samples,
                                model.cfg.batch_slices, model.cfg.block_size)

  return jax.jit(
      eval_step,
      in_shardings=(param_shardings, parallel.batch_sharding(mesh),
                    parallel.replicated(mesh)),
      out_shardings=parallel.replicated(mesh))


class _Progress:
  """Batches done out of `total`: a tqdm bar when stderr is a terminal, else
  a log line with the ETA every `log_every_s` seconds; process 0 only."""

  def __init__(self, total: int, what: str, log_every_s: float = 60.0):
    self.total, self.what, self.log_every_s = total, what, log_every_s
    self.done = 0
    self.shown = jax.process_index() == 0
    self._start = self._logged = time.perf_counter()
    self._bar = (tqdm.tqdm(total=total, desc=what, unit="batch", leave=False)
                 if self.shown and sys.stderr.isatty() else None)

  def advance(self, output) -> None:
    """Counts one more batch once its `output` is ready."""
    jax.block_until_ready(output)
    self.done += 1
    now = time.perf_counter()
    if self._bar is not None:
      self._bar.update()
    elif self.shown and now - self._logged >= self.log_every_s:
      self._logged = now
      logging.info("%s: %d/%d batches | ETA %.0fs", self.what, self.done,
                   self.total,
                   (now - self._start) / self.done * (self.total - self.done))

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def nelbos(eval_step, params, batches, mesh, key, total: int = 0) -> np.ndarray:
  """float64 [K, rows]: the eval step over an iterable of local batches;
  given their number (`total`), progress is shown as they complete."""
  progress = _Progress(total, "evaluation") if total else None
  out = []
  for i, local in enumerate(batches):
    out.append(eval_step(params, parallel.global_batch(local, mesh),
                         jax.random.fold_in(key, i)))
    if progress and i:  # The batch before; this one keeps the device busy.
      progress.advance(out[-2])
  if progress:
    progress.advance(out[-1])
    progress.close()
  return np.concatenate(jax.device_get(out), axis=1).astype(np.float64)


def bounds(nelbo_KxN, tokens_N, bytes_N, suffix: str = "",
           exact: bool = False) -> dict:
  """Bits per token / byte, perplexity and standard errors (module doc) of
  rows with these NELBO estimates (nats) and counts; exact: the numbers are
  exact -log p (the autoregressive twin), with no Monte Carlo error."""
  k, n = nelbo_KxN.shape
  row_nats = nelbo_KxN.mean(axis=0)
  total = row_nats.sum()
  if exact:
    variance = 0.0
  elif k >= 2:
    variance = np.sum(nelbo_KxN.var(axis=0, ddof=1) / k)
  else:  # Residuals of the ratio estimator total / tokens, row by row.
    residual = row_nats - total * tokens_N / tokens_N.sum()
    variance = np.sum(residual**2) * n / max(n - 1, 1)
  bits, stderr_bits = total / math.log(2), math.sqrt(variance) / math.log(2)
  result = {}
  for unit, count in (("token", tokens_N.sum()), ("byte", bytes_N.sum())):
    result[f"bits_per_{unit}{suffix}"] = bits / count
    result[f"bits_per_{unit}{suffix}_stderr"] = stderr_bits / count
  result[f"perplexity{suffix}"] = 2.0 ** result[f"bits_per_token{suffix}"]
  return result


class EvalSplit:
  """A split packed once, with its counts, evaluated as often as needed."""

  def __init__(self, config, tokenizer, split: str):
    self.name = split
    self.batch_size = config.eval.batch_size
    self.seed = config.eval.seed
    # A causal model is not told a document's length by its segment.
    self.exact = config.model.objective == "autoregressive"
    self.suffix = ("_given_length" if config.data.condition_on_length
                   and not self.exact else "")
    packed = pipeline.pack_split(config, tokenizer, split)
    content = packed.pop("content")
    self.packed = packed
    self.row_tokens = content.sum(axis=1).astype(np.float64)
    self.row_bytes = np.array(
        [tokenizer.token_bytes[t[c]].sum()
         for t, c in zip(packed["tokens"], content)], np.float64)
    self.truncated = 0
    if config.data.packing == "pad" and tokenizer.eos_id is not None:
      # Documents cut short: full rows that do not end in EOS.
      self.truncated = int(np.sum(content.all(axis=1) &
                                  (packed["tokens"][:, -1] != tokenizer.eos_id)))
    if self.truncated:
      logging.warning(
          "%d of the %d documents of the %s split are longer than "
          "data.seq_len=%d and are cut: the bound covers their first tokens.",
          self.truncated, len(content), split, config.data.seq_len)

  def evaluate(self, eval_step, params, mesh, max_batches: int = 0) -> dict:
    """Bounds over the split (or its first max_batches global batches)."""
    batches = pipeline.eval_batches(
        self.packed, self.batch_size, process_index=jax.process_index(),
        process_count=jax.process_count())
    if max_batches:
      batches = (b for i, b in zip(range(max_batches), batches))
    num_batches = -(-len(self.packed["tokens"]) // self.batch_size)
    nelbo_KxN = nelbos(eval_step, params, batches, mesh,
                       jax.random.PRNGKey(self.seed),
                       total=0 if max_batches else num_batches)
    n = min(nelbo_KxN.shape[1], len(self.row_tokens))  # Drop filled-up rows.
    result = bounds(nelbo_KxN[:, :n], self.row_tokens[:n], self.row_bytes[:n],
                    self.suffix, self.exact)
    if self.truncated:
      result["truncated_documents"] = self.truncated
    return result

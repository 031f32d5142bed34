"""The continuous-time masked-diffusion NELBO (MD4 / MDLM) with SUBS.

For a sequence x, time t ~ U(0, 1) and z_t masking each token with probability
1 - alpha(t):

  NELBO(x) = E_t [ -alpha'(t) / (1 - alpha(t)) * sum_{i masked in z_t} -log p(x_i | z_t) ]

The model reads z_t (and optionally the masking rate) and predicts only real
tokens (SUBS: never [MASK]); unmasked positions add nothing. Times are
stratified across the batch: one uniform offset u, t_j = 1 - frac(u + j / n),
so each stratum of width 1/n holds one time, which lowers the variance of the
batch mean (each t_j is still uniform on (0, 1], so the estimate is unbiased).

Block diffusion (BD3-LM) cuts the row into blocks, masks each at its own
time and bounds -log p(x) by sum_b NELBO(x_b | x_{<b}): the same estimators
with a time (or k) per block.
"""

import functools
import math

import jax
import jax.numpy as jnp

from diffusion_lm import batching
from diffusion_lm.diffusion import schedules


def stratified_times(key, n: int):
  """n times in (0, 1], one in each interval of width 1/n (shuffled offset)."""
  u = jax.random.uniform(key, (), jnp.float32)
  return 1.0 - jnp.mod(u + jnp.arange(n, dtype=jnp.float32) / n, 1.0)


def _stratified(key, shape: tuple, blocks: bool):
  """stratified_times in `shape`. With blocks (its last axis), the strata
  of one row's blocks lie 1/N of the range apart, not side by side."""
  t = stratified_times(key, math.prod(shape))
  if not blocks:
    return t.reshape(shape)
  return jnp.moveaxis(t.reshape(shape[-1], *shape[:-1]), 0, -1)


def token_nll(logits_BxLxV, tokens_BxL):
  """-log softmax(logits)[token] per position, in float32."""
  logits = logits_BxLxV.astype(jnp.float32)
  picked = jnp.take_along_axis(logits, tokens_BxL[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits, axis=-1) - picked


def mask_tokens(key, tokens_BxL, weights_BxL, mask_rate_BxL, mask_id: int,
                complementary: bool = False):
  """z_t: real tokens masked independently with probability mask_rate (a
  position where uniform u < its rate). complementary: the second half of
  the rows uses 1 - u of the first half's (see train_loss)."""
  draws = jax.random.uniform(key, tokens_BxL.shape, jnp.float32)
  if complementary:
    first = draws[:draws.shape[0] // 2]
    draws = jnp.concatenate([first, 1.0 - first])
  masked = (draws < mask_rate_BxL) & (weights_BxL > 0)
  return jnp.where(masked, mask_id, tokens_BxL), masked


def sequence_nelbo(model, batch, t, key, schedule: schedules.Schedule,
                   mask_id: int, slices: int = 1, complementary: bool = False):
  """One-sample NELBO estimate per row of the batch, in nats: shape [B].

  t: [B] (one time per row), or [B, N] for block diffusion: the row's N
  blocks, each masked at its own time; the estimate is then the sum of the
  blocks' NELBO(x_b | x_{<b}), which the model scores in one pass
  (transformer.block_attention). (For rows packed with several documents
  and segment ids, the sum of the documents' estimates at shared times.)
  The rows are scored in `slices` independent slices (in_slices: the same
  numbers, faster on a CPU). complementary: as in mask_tokens.
  """
  tokens_BxL, weights_BxL = batch["tokens"], batch["weights"]
  t_BxN = t.reshape(tokens_BxL.shape[0], -1)
  rate_BxN = schedule.mask_rate(t_BxN)
  z_BxL, masked_BxL = mask_tokens(key, tokens_BxL, weights_BxL,
                                  _per_position(rate_BxN, tokens_BxL),
                                  mask_id, complementary)
  rows = {"z": z_BxL, "rate": rate_BxN[:, 0], "masked": masked_BxL,
          "tokens": tokens_BxL, "weights": weights_BxL,
          "segment_ids": batch.get("segment_ids")}
  nll_BxN = _per_block(batching.in_slices(
      functools.partial(masked_nll, model, t.ndim == 2), rows, slices), t_BxN)
  return jnp.sum(schedule.weight(t_BxN) * nll_BxN, axis=-1)


def _per_position(x_BxN, tokens_BxL):
  """A value per block, repeated over the block's positions."""
  return jnp.repeat(x_BxN, tokens_BxL.shape[1] // x_BxN.shape[1], axis=1)


def _per_block(x_BxL, like_BxN):
  """Sums over each block's positions: [B, N]."""
  return jnp.sum(x_BxL.reshape(*like_BxN.shape, -1), axis=-1)


def masked_nll(model, blocks: bool, rows):
  """-log p(token | z) at each masked position, 0 elsewhere ([B, L]). A
  block-diffusion model (`blocks`) reads the clean row beside z."""
  clean = {"clean_BxL": rows["tokens"]} if blocks else {}
  logits = model(rows["z"], rows["rate"], rows["segment_ids"], **clean)
  nll_BxL = token_nll(logits, rows["tokens"]) * rows["weights"]
  return jnp.where(rows["masked"], nll_BxL, 0.0)


TIMES = ("stratified", "uniform")  # diffusion.times: how training draws t.


def train_loss(model, batch, key, schedule: schedules.Schedule, mask_id: int,
               slices: int = 1, times: str = "stratified",
               complementary: bool = False, block_size: int = 0):
  """NELBO of the batch in nats per scored position.

  block_size > 0 (block diffusion): each block of the rows draws its own
  time, and the NELBO is the sum over blocks (sequence_nelbo).

  times: 'stratified' (stratified_times) or 'uniform' (independent draws).
  complementary: the rows of the batch's first half are scored twice, at
  times t with uniforms u and at 1 - t with 1 - u; its second half goes
  unused. Under the linear schedule (mask rate t) the second mask is then
  the first one's complement: every position is masked in exactly one of
  the pair. Each row is still a draw of the NELBO's t and mask, so the loss
  stays unbiased; the pair's negative correlation lowers its variance.
  """
  t_key, mask_key = jax.random.split(key)
  b, l = batch["tokens"].shape
  n = b // 2 if complementary else b
  shape = (n, l // block_size) if block_size else (n,)
  t = (_stratified(t_key, shape, blocks=bool(block_size))
       if times == "stratified"
       else 1.0 - jax.random.uniform(t_key, shape))  # In (0, 1] either way.
  if complementary:
    batch = jax.tree.map(lambda x: jnp.concatenate([x[:n], x[:n]]), batch)
    # 1 - t lies in [0, 1); the floor keeps the weight 1/t of t = 0 finite.
    t = jnp.concatenate([t, jnp.maximum(1.0 - t, 1e-6)])
  nelbo = sequence_nelbo(model, batch, t, mask_key, schedule, mask_id, slices,
                         complementary)
  return jnp.sum(nelbo) / jnp.maximum(jnp.sum(batch["weights"]), 1.0)


def any_order_nelbo(model, batch, u, key, mask_id: int, slices: int = 1):
  """One-sample NELBO estimate per row (nats, [B]) from the any-order form

    NELBO(x) = sum_{k=1..n} 1/k E_{|M|=k} [ sum_{i in M} -log p(x_i | x with M masked) ]
             = E_{k ~ U{1..n}, M} [ n/k sum_{i in M} -log p(x_i | x with M masked) ]

  over the row's n scored positions: k = ceil(u n) (u in (0, 1], stratified
  by the caller), M uniform among the scored positions, and for a model that
  reads the masking rate, the rate r ~ Beta(k, n - k + 1): its distribution
  given k masked positions under the time form. The same expectation as
  sequence_nelbo's, but the weights n/k <= n keep the variance finite where
  the time form's 1/t gives it a heavy tail (infinite variance).

  u: [B], or [B, N] for block diffusion: each of the row's N blocks draws
  its own k and M among its own positions, and the estimate is the sum of
  the blocks' (as in sequence_nelbo).
  """
  tokens_BxL, weights_BxL = batch["tokens"], batch["weights"]
  u_BxN = u.reshape(tokens_BxL.shape[0], -1)
  scored_BxNxW = (weights_BxL > 0).reshape(*u_BxN.shape, -1)
  n_BxN = jnp.maximum(jnp.sum(scored_BxNxW, axis=-1), 1)  # None scored: n = 0.
  k_BxN = jnp.clip(jnp.ceil(u_BxN * n_BxN), 1, n_BxN)
  rank_key, rate_key = jax.random.split(key)
  # A uniform k-subset of a block's scored positions: its k smallest keys.
  keys_BxNxW = jnp.where(scored_BxNxW,
                         jax.random.uniform(rank_key, scored_BxNxW.shape), 2.0)
  rank_BxNxW = jnp.argsort(jnp.argsort(keys_BxNxW, axis=-1), axis=-1)
  masked_BxL = (rank_BxNxW < k_BxN[..., None]).reshape(tokens_BxL.shape)
  rate_BxN = jax.random.beta(rate_key, k_BxN, n_BxN - k_BxN + 1.0)
  rows = {"z": jnp.where(masked_BxL, mask_id, tokens_BxL),
          "rate": rate_BxN[:, 0], "masked": masked_BxL, "tokens": tokens_BxL,
          "weights": weights_BxL, "segment_ids": batch.get("segment_ids")}
  nll_BxN = _per_block(batching.in_slices(
      functools.partial(masked_nll, model, u.ndim == 2), rows, slices), u_BxN)
  return jnp.sum(n_BxN / k_BxN * nll_BxN, axis=-1)


def eval_nelbo(model, batch, key, mask_id: int, num_t_samples: int,
               slices: int = 1, block_size: int = 0):
  """num_t_samples NELBO estimates (nats) of every row: shape [K, B].

  Evaluation uses the any-order form (any_order_nelbo): the NELBO of every
  schedule with alpha(1) = 0, so the result is a true bound whatever schedule
  trained the model (the model reads the masking rate, not t). The
  num_t_samples * B draws of u (of every block, block_size > 0) are
  stratified together.
  """
  b, l = batch["tokens"].shape
  shape = (num_t_samples, b, l // block_size) if block_size else (num_t_samples, b)
  u_key, mask_key = jax.random.split(key)
  u = _stratified(u_key, shape, blocks=bool(block_size))
  keys = jax.random.split(mask_key, num_t_samples)
  return jax.lax.map(
      lambda args: any_order_nelbo(model, batch, args[0], args[1], mask_id,
                                   slices), (u, keys))

"""The continuous-time masked-diffusion NELBO (MD4 / MDLM) with SUBS.

For a sequence x, time t ~ U(0, 1) and z_t masking each token with probability
1 - alpha(t):

  NELBO(x) = E_t [ -alpha'(t) / (1 - alpha(t)) * sum_{i masked in z_t} -log p(x_i | z_t) ]

The model reads z_t (and optionally the masking rate) and predicts only real
tokens (SUBS: never [MASK]); unmasked positions add nothing. Times are
stratified across the batch: one uniform offset u, t_j = 1 - frac(u + j / n),
so each stratum of width 1/n holds one time, which lowers the variance of the
batch mean (each t_j is still uniform on (0, 1], so the estimate is unbiased).
"""

import jax
import jax.numpy as jnp

from diffusion_lm.diffusion import schedules


def stratified_times(key, n: int):
  """n times in (0, 1], one in each interval of width 1/n (shuffled offset)."""
  u = jax.random.uniform(key, (), jnp.float32)
  return 1.0 - jnp.mod(u + jnp.arange(n, dtype=jnp.float32) / n, 1.0)


def token_nll(logits_BxLxV, tokens_BxL):
  """-log softmax(logits)[token] per position, in float32."""
  logits = logits_BxLxV.astype(jnp.float32)
  picked = jnp.take_along_axis(logits, tokens_BxL[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits, axis=-1) - picked


def mask_tokens(key, tokens_BxL, weights_BxL, mask_rate_B, mask_id: int):
  """z_t: real tokens masked independently with probability mask_rate."""
  draws = jax.random.uniform(key, tokens_BxL.shape, jnp.float32)
  masked = (draws < mask_rate_B[:, None]) & (weights_BxL > 0)
  return jnp.where(masked, mask_id, tokens_BxL), masked


def in_slices(fn, rows, slices: int):
  """fn(rows) -> [B], computed on `slices` strided slices of the rows (every
  slices-th row, so a batch sharded by rows stays where it is) and
  reassembled in order.

  The same values up to float rounding, computed as independent chains that
  XLA's CPU backend runs faster (smaller working sets, run side by side).
  """
  b = jax.tree.leaves(rows)[0].shape[0]
  strided = jax.tree.map(lambda x: x.reshape(b // slices, slices, *x.shape[1:]),
                         rows)
  parts = [fn(jax.tree.map(lambda x: x[:, i], strided)) for i in range(slices)]
  return jnp.stack(parts, axis=1).reshape(b)


def sequence_nelbo(model, batch, t_B, key, schedule: schedules.Schedule,
                   mask_id: int, slices: int = 1):
  """One-sample NELBO estimate per row of the batch, in nats: shape [B].

  (For rows packed with several documents and segment ids, the sum of the
  documents' estimates at a shared t.) `slices`: see in_slices.
  """
  tokens_BxL, weights_BxL = batch["tokens"], batch["weights"]
  mask_rate_B = schedule.mask_rate(t_B)
  z_BxL, masked_BxL = mask_tokens(key, tokens_BxL, weights_BxL, mask_rate_B,
                                  mask_id)

  def masked_nll_B(rows):
    logits = model(rows["z"], rows["mask_rate"], rows["segment_ids"])
    nll = token_nll(logits, rows["tokens"]) * rows["weights"]
    return jnp.sum(jnp.where(rows["masked"], nll, 0.0), axis=-1)

  rows = {"z": z_BxL, "tokens": tokens_BxL, "masked": masked_BxL,
          "weights": weights_BxL, "mask_rate": mask_rate_B,
          "segment_ids": batch.get("segment_ids")}
  return schedule.weight(t_B) * in_slices(masked_nll_B, rows, slices)


def train_loss(model, batch, key, schedule: schedules.Schedule, mask_id: int,
               slices: int = 1):
  """NELBO of the batch in nats per scored position, with stratified times."""
  t_key, mask_key = jax.random.split(key)
  t = stratified_times(t_key, batch["tokens"].shape[0])
  nelbo = sequence_nelbo(model, batch, t, mask_key, schedule, mask_id, slices)
  return jnp.sum(nelbo) / jnp.maximum(jnp.sum(batch["weights"]), 1.0)


def eval_nelbo(model, batch, key, mask_id: int, num_t_samples: int):
  """num_t_samples NELBO estimates (nats) of every row: shape [K, B].

  Evaluation always uses the linear schedule: the NELBO is the same for every
  schedule with alpha(1) = 0, and linear has it, so the result is a true bound
  whatever schedule trained the model (the model reads the masking rate, not t).
  The num_t_samples * B times are stratified together.
  """
  schedule = schedules.Linear()
  b = batch["tokens"].shape[0]
  t_key, mask_key = jax.random.split(key)
  t_KxB = stratified_times(t_key, num_t_samples * b).reshape(num_t_samples, b)
  keys = jax.random.split(mask_key, num_t_samples)
  return jax.lax.map(
      lambda args: sequence_nelbo(model, batch, args[0], args[1], schedule,
                                  mask_id), (t_KxB, keys))

"""The continuous-time masked-diffusion NELBO (MD4 / MDLM) with SUBS.

For a sequence x, time t ~ U(0, 1) and z_t masking each token with probability
1 - alpha(t):

  NELBO(x) = E_t [ -alpha'(t) / (1 - alpha(t)) * sum_{i masked in z_t} -log p(x_i | z_t) ]

The model reads z_t (and optionally the masking rate) and predicts only real
tokens (SUBS: never [MASK]); unmasked positions add nothing. Times are
stratified across the batch (antithetic sampling): one uniform offset u,
t_j = 1 - frac(u + j / n), which lowers the variance of the batch mean.
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


def sequence_nelbo(model, batch, t_B, key, schedule: schedules.Schedule,
                   mask_id: int, slices: int = 1):
  """One-sample NELBO estimate per row of the batch, in nats: shape [B].

  (For rows packed with several documents and segment ids, the sum of the
  documents' estimates at a shared t.) With `slices` > 1 the rows are masked
  together, then scored by the model in that many independent slices of rows
  (every slices-th row, so a batch sharded by rows stays where it is): the
  same estimate, up to float rounding, computed as separate chains that
  XLA's CPU backend runs faster (smaller working sets, run side by side).
  """
  tokens, weights = batch["tokens"], batch["weights"]
  mask_rate = schedule.mask_rate(t_B)
  z, masked = mask_tokens(key, tokens, weights, mask_rate, mask_id)
  rows = {"z": z, "tokens": tokens, "masked": masked,
          "weights": weights, "mask_rate": mask_rate,
          "segment_ids": batch.get("segment_ids")}

  def masked_nll(r):
    logits = model(r["z"], r["mask_rate"], r["segment_ids"])
    nll = token_nll(logits, r["tokens"]) * r["weights"]
    return jnp.sum(jnp.where(r["masked"], nll, 0.0), axis=-1)

  b = tokens.shape[0]
  strided = jax.tree.map(lambda x: x.reshape(b // slices, slices, *x.shape[1:]),
                         rows)
  per_slice = [masked_nll(jax.tree.map(lambda x: x[:, i], strided))
               for i in range(slices)]
  return schedule.weight(t_B) * jnp.stack(per_slice, axis=1).reshape(b)


def train_loss(model, batch, key, schedule: schedules.Schedule, mask_id: int,
               slices: int = 1):
  """NELBO of the batch in nats per real token, with stratified times."""
  t_key, mask_key = jax.random.split(key)
  t = stratified_times(t_key, batch["tokens"].shape[0])
  nelbo = sequence_nelbo(model, batch, t, mask_key, schedule, mask_id, slices)
  return jnp.sum(nelbo) / jnp.maximum(jnp.sum(batch["weights"]), 1.0)


def eval_nelbo_sum(model, batch, key, mask_id: int, num_t_samples: int):
  """Sum over the batch of the NELBO (nats), averaged over num_t_samples times.

  Evaluation always uses the linear schedule: the NELBO is the same for every
  schedule with alpha(1) = 0, and linear has it, so the result is a true bound
  whatever schedule trained the model (the model reads the masking rate, not t).
  The num_t_samples * B times are stratified together.
  """
  schedule = schedules.Linear()
  b = batch["tokens"].shape[0]
  t_key, mask_key = jax.random.split(key)
  t_KxB = stratified_times(t_key, num_t_samples * b).reshape(num_t_samples, b)

  def one_sample(total, inputs):
    t_B, k = inputs
    nelbo = sequence_nelbo(model, batch, t_B, k, schedule, mask_id)
    return total + jnp.sum(nelbo), None

  keys = jax.random.split(mask_key, num_t_samples)
  total, _ = jax.lax.scan(one_sample, jnp.float32(0.0), (t_KxB, keys))
  return total / num_t_samples

"""Samplers: turn an all-[MASK] (or partly fixed) sequence into tokens.

A sampler is a jitted loop on device (`lax.fori_loop`, static shapes) over a
`denoise_fn(params, z [B, L], mask_rate [B]) -> logits [B, L, V]`. Positions that are
not [MASK] at the start (prompt, infill context) are never changed, and every
step only ever fills [MASK] positions (SUBS: unmasked tokens are copied).

* `ancestral` (MD4 / MDLM): at step s -> t, each masked position is revealed
  with probability (alpha(t) - alpha(s)) / (1 - alpha(s)) with a token drawn
  from p(x_i | z_s). Exact as steps -> infinity; few steps draw positions
  independently (the factorisation error parallel decoding trades for speed).
* `confidence` (MaskGIT / LLaDA): each step draws tokens for all masked
  positions and commits the k most confident (probability of the drawn
  token), k spread evenly so that all are committed after `steps` steps.

When the model does not read the masking rate, a step that changed nothing
reuses the previous logits instead of calling the network (MDLM's caching),
and no call is made once nothing is masked; samplers return the number of
network calls made.
"""

import functools

import jax
import jax.numpy as jnp

from diffusion_lm import errors
from diffusion_lm.diffusion import schedules


def filter_top_p(logits, top_p: float):
  """Keeps the smallest set of tokens whose probability reaches top_p."""
  if top_p >= 1.0:
    return logits
  probs = jax.nn.softmax(logits, axis=-1)
  sorted_probs = jnp.flip(jnp.sort(probs, axis=-1), axis=-1)
  before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
  kept = jnp.where(before < top_p, sorted_probs, jnp.inf)
  threshold = jnp.min(kept, axis=-1, keepdims=True)
  return jnp.where(probs >= threshold, logits, -jnp.inf)


def draw_tokens(key, logits, temperature: float, top_p: float, float64: bool):
  """Tokens from softmax(logits / temperature), top-p filtered; argmax at 0."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = filter_top_p(logits / temperature, top_p)
  if float64:  # Float32 Gumbel noise truncates the tail of the distribution.
    logits = logits.astype(jnp.float64)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _ancestral_update(key, z, logits, step, steps, schedule, mask_id, draw):
  s = 1.0 - step / steps
  t = 1.0 - (step + 1) / steps
  rate_s, rate_t = schedule.mask_rate(s), schedule.mask_rate(t)
  reveal_prob = jnp.where(step + 1 == steps, 1.0, (rate_s - rate_t) / rate_s)
  draw_key, reveal_key = jax.random.split(key)
  tokens = draw(draw_key, logits)
  reveal = jax.random.uniform(reveal_key, z.shape) < reveal_prob
  return jnp.where((z == mask_id) & reveal, tokens, z)


def _confidence_update(key, z, logits, step, steps, schedule, mask_id, draw,
                       num_masked_B):
  del schedule
  tokens = draw(key, logits)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  confidence = jnp.take_along_axis(probs, tokens[..., None], axis=-1)[..., 0]
  masked = z == mask_id
  confidence = jnp.where(masked, confidence, -jnp.inf)
  # Commit floor(n (step + 1) / steps) - floor(n step / steps) of n masked.
  k_B = (num_masked_B * (step + 1)) // steps - (num_masked_B * step) // steps
  rank = jnp.argsort(jnp.argsort(-confidence, axis=-1), axis=-1)
  commit = masked & (rank < k_B[:, None])
  return jnp.where(commit, tokens, z)


SAMPLERS = {"ancestral": _ancestral_update, "confidence": _confidence_update}


@functools.partial(
    jax.jit,
    static_argnames=("denoise_fn", "mask_id", "steps", "sampler", "schedule",
                     "temperature", "top_p", "float64", "reads_mask_rate"))
def _sample(denoise_fn, params, key, init_BxL, *, mask_id, steps, sampler, schedule,
            temperature, top_p, float64, reads_mask_rate):
  draw = functools.partial(draw_tokens, temperature=temperature, top_p=top_p,
                           float64=float64)
  update = SAMPLERS[sampler]
  if sampler == "confidence":
    update = functools.partial(
        update, num_masked_B=jnp.sum(init_BxL == mask_id, axis=-1))
  b = init_BxL.shape[0]

  def call(z, step):
    rate = jnp.full((b,), schedule.mask_rate(1.0 - step / steps), jnp.float32)
    return denoise_fn(params, z, rate).astype(jnp.float32)

  def body(step, carry):
    z, logits, changed, calls = carry
    # A model that reads the masking rate sees a new input every step.
    needed = jnp.any(z == mask_id) & (changed | reads_mask_rate)
    logits, calls = jax.lax.cond(
        needed, lambda: (call(z, step), calls + 1), lambda: (logits, calls))
    new_z = update(jax.random.fold_in(key, step), z, logits, step, steps,
                   schedule, mask_id, draw)
    return new_z, logits, jnp.any(new_z != z), calls

  logits = jax.eval_shape(call, init_BxL, 0)
  carry = (init_BxL, jnp.zeros(logits.shape, logits.dtype), jnp.bool_(True),
           jnp.int32(0))
  z, _, _, calls = jax.lax.fori_loop(0, steps, body, carry)
  return z, calls


def sample(denoise_fn, params, key, init_BxL, *, mask_id: int, steps: int,
           sampler: str = "ancestral",
           schedule: schedules.Schedule = schedules.Linear(),
           temperature: float = 1.0, top_p: float = 1.0, float64: bool = False,
           reads_mask_rate: bool = False):
  """Fills every [MASK] in init_BxL; returns (tokens [B, L], network calls).

  denoise_fn must be hashable (it is a static argument of the jitted loop);
  params, any pytree of arrays, is passed to it unchanged.
  With float64=True the categorical draws use float64 Gumbel noise.
  """
  if sampler not in SAMPLERS:
    raise errors.UserError(f"sampler {sampler!r} is not one of {sorted(SAMPLERS)}")
  if steps < 1:
    raise errors.UserError(f"steps must be >= 1, got {steps}")
  if temperature < 0 or not 0 < top_p <= 1:
    raise errors.UserError(
        f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
  with jax.enable_x64(float64):
    return _sample(denoise_fn, params, key, jnp.asarray(init_BxL, jnp.int32),
                   mask_id=mask_id, steps=steps, sampler=sampler,
                   schedule=schedule, temperature=float(temperature),
                   top_p=float(top_p), float64=float64,
                   reads_mask_rate=reads_mask_rate)

"""The samplers' rules: given one step's logits and the masked positions of
the current block, which to commit (and, for remdm, which to reopen), and
the masking rate of the next state. samplers.py runs them in its loop;
sampler_options.py lists the samplers and their options.

The masking rate a row's network call sees is the row's current clock, in the
schedule's units (1 - alpha(t)); each block starts at the schedule's maximum:
  ancestral, remdm: the rate at the row's time t = 1 - step / steps of its block
    (remdm's loop schedule has its own piecewise-linear rate, below);
  first_hitting: the rate at the row's next unmasking time (drawn exactly);
  confidence, threshold, factor, entropy_bounded (no time of their own): the
    maximum rate times the fraction of the block's generated positions still
    masked, the rate at which that fraction is expected.

Scores (probability, margin, entropy) use the model's untempered p(x_i | z)
and never a drawn token (none is drawn before the rule chooses): a rule that
commits one position per call then samples the model's joint exactly, whatever
its order (the chain rule holds for any order chosen from what is already
revealed). Scoring by the drawn token's probability, as LLaDA and Fast-dLLM
do, would defer positions that drew an unlikely token and redraw them: a
bias towards likely tokens (docs/results/samplers.md measures it).

`spacing` (Luxembourg et al. 2025, arXiv 2506.19037, as a filter on the
adaptive rules): the rule chooses among the masked positions taken greedily
by its score, skipping any closer than `spacing` to one already taken. A
per-position score cannot see how two positions depend on each other; where
that dependence falls with distance (in a Markov chain, geometrically),
spaced positions committed together are nearly independent given the rest.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from diffusion_lm.diffusion import schedules
from diffusion_lm.diffusion.sampler_options import SamplerOptions


class Step(NamedTuple):
  """What a rule sees at one step: per row (_B), and per position of the row's
  current block (_BxW: the window of W positions the loop keeps; the whole
  row when sampling without blocks)."""

  key: jax.Array
  logits_BxWxV: jax.Array
  candidates_BxW: jax.Array  # Masked positions of the current block.
  generated_BxW: jax.Array  # Positions of the current block not fixed at start.
  step_B: jax.Array  # Steps taken in the current block.
  steps_B: jax.Array  # The current block's step budget.
  rate_B: jax.Array  # Masking rate of the current state (the network's input).
  options: SamplerOptions
  schedule: schedules.Schedule


class Move(NamedTuple):
  commit_BxW: jax.Array  # Candidates to commit (the loop draws their tokens).
  rate_B: jax.Array  # Masking rate of the next state.
  reopen_BxW: jax.Array | None = None  # Generated tokens set back to [MASK].


def _top_prob(step: Step):
  """p1, the probability of the most likely token (the confidence)."""
  return jnp.max(jax.nn.softmax(step.logits_BxWxV, axis=-1), axis=-1)


def _margin(step: Step):
  top2 = jax.lax.top_k(jax.nn.softmax(step.logits_BxWxV, axis=-1), 2)[0]
  return top2[..., 0] - top2[..., 1]


def _entropy(step: Step):
  probs = jax.nn.softmax(step.logits_BxWxV, axis=-1)
  return jnp.sum(jax.scipy.special.entr(probs), axis=-1)


# confidence's `order`: a score per position, highest committed first.
ORDERS = {
    "probability": _top_prob,  # p1 (MaskGIT, LLaDA; see the module docstring).
    "margin": _margin,  # p1 - p2 of the top two tokens.
    "entropy": lambda step: -_entropy(step),  # Lowest entropy first (Dream).
}


def _commit_top(score_BxW, candidates_BxW, count_B):
  """The count_B highest-scoring candidates of each row."""
  score_BxW = jnp.where(candidates_BxW, score_BxW, -jnp.inf)
  rank_BxW = jnp.argsort(jnp.argsort(-score_BxW, axis=-1), axis=-1)
  return candidates_BxW & (rank_BxW < count_B[:, None])


def _sorted_candidates(score_BxW, candidates_BxW):
  """Candidates' scores in descending order, then -inf."""
  return -jnp.sort(-jnp.where(candidates_BxW, score_BxW, -jnp.inf), axis=-1)


def _spaced(score_BxW, candidates_BxW, spacing: int):
  """The candidates taken in descending score, each skipped when it is
  closer than `spacing` to one taken before it (all of them at spacing 1)."""
  if spacing <= 1:
    return candidates_BxW
  pos_1xW = jnp.arange(score_BxW.shape[-1])[None]
  order_BxW = jnp.argsort(jnp.where(candidates_BxW, -score_BxW, jnp.inf), axis=-1)

  def take(k, taken_BxW):
    pos_Bx1 = jax.lax.dynamic_slice_in_dim(order_BxW, k, 1, axis=-1)
    near_BxW = jnp.abs(pos_1xW - pos_Bx1) < spacing
    free_Bx1 = ~jnp.any(taken_BxW & near_BxW, axis=-1, keepdims=True)
    return taken_BxW | ((pos_1xW == pos_Bx1) & free_Bx1 & candidates_BxW)

  # Candidates sort first in order_BxW: stop after the most any row has.
  most = jnp.max(jnp.sum(candidates_BxW, axis=-1))
  return jax.lax.fori_loop(0, most, take, jnp.zeros_like(candidates_BxW))


def max_rate(schedule: schedules.Schedule):
  """1 - alpha(1), where every block starts (traceable, unlike max_mask_rate)."""
  return schedule.mask_rate(jnp.float32(1.0))


def _fraction_rate(step: Step, commit_BxW):
  """The maximum rate times the fraction of the block still masked."""
  left_B = jnp.sum(step.candidates_BxW & ~commit_BxW, axis=-1)
  total_B = jnp.maximum(jnp.sum(step.generated_BxW, axis=-1), 1)
  return max_rate(step.schedule) * left_B / total_B


def _times(step: Step):
  """(t, s): the row's time now and after this step, t = 1 - step / steps."""
  return (1.0 - step.step_B / step.steps_B,
          1.0 - (step.step_B + 1) / step.steps_B)


def _reverse_step(step: Step, rate_s_B, sigma_B):
  """z_t -> z_s (s < t) of ReMDM's posterior q_sigma(z_s | z_t, x):

    z_t = [MASK]: z_s ~ Cat(a x + (1 - a) m),
                  a = (alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t)
    z_t = x:      z_s ~ Cat((1 - sigma) x + sigma m)

  with x ~ p(x_i | z_t). sigma = 0 is MD4 / MDLM's ancestral step; the same
  uniform decides both cases (they never meet at one position), so sigma = 0
  makes the same draws as the ancestral sampler.
  """
  rate_t_B = step.rate_B  # 1 - alpha_t; rate_s_B = 1 - alpha_s.
  a_B = (rate_t_B - rate_s_B + sigma_B * (1.0 - rate_t_B)) / rate_t_B  # a above.
  u_BxW = jax.random.uniform(step.key, step.candidates_BxW.shape)
  commit_BxW = step.candidates_BxW & (u_BxW < a_B[:, None])
  reopen_BxW = (step.generated_BxW & ~step.candidates_BxW
                & (u_BxW < jnp.broadcast_to(sigma_B, a_B.shape)[:, None]))
  return Move(commit_BxW, rate_s_B, reopen_BxW)


def _ancestral(step: Step):
  _, s_B = _times(step)
  return _reverse_step(step, step.schedule.mask_rate(s_B), 0.0)


def _schedule_rate(options, schedule, t_B):
  del options
  return schedule.mask_rate(t_B)


def _loop_rate(options, schedule, t_B):
  """ReMDM-loop's masking rate: linear from the schedule's maximum at t = 1 to
  1 - alpha_on at t_on, held there until t_off, then linear to 0 at t = 0."""
  rate_on = 1.0 - options.alpha_on
  high_B = rate_on + (max_rate(schedule) - rate_on) * (
      (t_B - options.t_on) / (1.0 - options.t_on))
  low_B = rate_on * t_B / options.t_off
  return jnp.where(t_B > options.t_on, high_B,
                   jnp.where(t_B > options.t_off, rate_on, low_B))


def _cap(options, t_B, sigma_max_B):
  del t_B
  return jnp.minimum(options.eta, sigma_max_B)  # ReMDM-cap.


def _rescale(options, t_B, sigma_max_B):
  del t_B
  return options.eta * sigma_max_B  # ReMDM-rescale.


def _loop(options, t_B, sigma_max_B):
  """Remasks at min(eta, sigma_max) while t_off < t <= t_on, not elsewhere."""
  looping_B = (options.t_off < t_B) & (t_B <= options.t_on)
  return jnp.where(looping_B, _cap(options, t_B, sigma_max_B), 0.0)


# remdm_schedule -> (masking rate at time t, sigma_t given sigma_t^max).
REMDM_SCHEDULES = {
    "cap": (_schedule_rate, _cap),
    "rescale": (_schedule_rate, _rescale),
    "loop": (_loop_rate, _loop),
}


def _remdm(step: Step):
  """ReMDM (Wang et al. 2025, arXiv 2503.00307): ancestral steps that also
  remask committed (generated) tokens with probability sigma_t, so that later
  steps can change them. sigma_t is bounded so that the posterior above stays
  a distribution: sigma_t <= sigma_t^max = min(1, (1 - alpha_s) / alpha_t).

    cap:     sigma_t = min(eta, sigma_t^max)
    rescale: sigma_t = eta * sigma_t^max
    loop:    alpha runs to alpha_on by t_on, stays there (sigma_t =
             min(eta, sigma_t^max) = min(eta, (1 - alpha_on) / alpha_on): the
             rate of masked tokens stays 1 - alpha_on while tokens are remasked
             and redrawn) until t_off, then runs to 1 (MDLM steps: sigma = 0).

  With eta = 0, cap and rescale make the ancestral sampler's draws (loop keeps
  its own clock, so it takes the same steps on a different time grid).
  """
  rate_fn, sigma_fn = REMDM_SCHEDULES[step.options.remdm_schedule]
  t_B, s_B = _times(step)
  rate_s_B = rate_fn(step.options, step.schedule, s_B)
  alpha_t_B = 1.0 - step.rate_B
  sigma_max_B = jnp.clip(  # (1 - alpha_s) / alpha_t, 1 where alpha_t = 0.
      rate_s_B / jnp.maximum(alpha_t_B, jnp.finfo(jnp.float32).tiny), 0.0, 1.0)
  return _reverse_step(step, rate_s_B, sigma_fn(step.options, t_B, sigma_max_B))


def _first_hitting_clock(key, rate_B, masked_B):
  """The rate at the next unmasking time: a position masked at rate r is
  still masked at rate r' < r with probability r' / r, so the first of n to be
  revealed is at r u^(1/n), u ~ U(0, 1)."""
  return rate_B * jax.random.uniform(key, rate_B.shape) ** (1.0 / masked_B)


def _first_hitting(step: Step):
  """Reveals one masked position, picked uniformly, at the clock's time."""
  pick_BxW = jax.random.uniform(step.key, step.candidates_BxW.shape)
  one_B = jnp.ones_like(step.step_B)
  return Move(_commit_top(pick_BxW, step.candidates_BxW, one_B), step.rate_B)


def _confidence(step: Step):
  options = step.options
  score_BxW = ORDERS[options.order](step)
  if options.order_temperature > 0:  # Gumbel top-k: k draws without replacement.
    dtype = jnp.float64 if options.float64 else jnp.float32
    gumbel_BxW = jax.random.gumbel(step.key, score_BxW.shape, dtype)
    score_BxW = score_BxW / options.order_temperature + gumbel_BxW
  n_B = jnp.sum(step.generated_BxW, axis=-1)
  k_B = (n_B * (step.step_B + 1)) // step.steps_B - (n_B * step.step_B) // step.steps_B
  commit_BxW = _commit_top(score_BxW, step.candidates_BxW, k_B)
  return Move(commit_BxW, _fraction_rate(step, commit_BxW))


def _threshold(step: Step):
  confidence_BxW = _top_prob(step)
  eligible_BxW = _spaced(confidence_BxW, step.candidates_BxW, step.options.spacing)
  above_B = jnp.sum(eligible_BxW & (confidence_BxW >= step.options.threshold),
                    axis=-1)
  commit_BxW = _commit_top(confidence_BxW, eligible_BxW, jnp.maximum(above_B, 1))
  return Move(commit_BxW, _fraction_rate(step, commit_BxW))


def _factor(step: Step):
  confidence_BxW = _top_prob(step)
  eligible_BxW = _spaced(confidence_BxW, step.candidates_BxW, step.options.spacing)
  c_BxW = _sorted_candidates(confidence_BxW, eligible_BxW)  # c_(n).
  n_1xW = jnp.arange(1, c_BxW.shape[-1] + 1)[None]
  fits_B = jnp.sum((n_1xW + 1) * (1.0 - c_BxW) < step.options.factor, axis=-1)
  commit_BxW = _commit_top(confidence_BxW, eligible_BxW, jnp.maximum(fits_B, 1))
  return Move(commit_BxW, _fraction_rate(step, commit_BxW))


def _entropy_bounded(step: Step):
  entropy_BxW = _entropy(step)
  eligible_BxW = _spaced(-entropy_BxW, step.candidates_BxW, step.options.spacing)
  h_BxW = -_sorted_candidates(-entropy_BxW, eligible_BxW)  # Ascending.
  # sum_U H - max_U H of each prefix U: the entropies before its last one.
  before_BxW = jnp.cumsum(h_BxW, axis=-1) - h_BxW
  before_BxW = jnp.where(jnp.isfinite(h_BxW), before_BxW, jnp.inf)
  fits_B = jnp.sum(before_BxW <= step.options.gamma, axis=-1)  # >= 1.
  commit_BxW = _commit_top(-entropy_BxW, eligible_BxW, fits_B)
  return Move(commit_BxW, _fraction_rate(step, commit_BxW))


class Sampler(NamedTuple):
  rule: Callable[[Step], Move]
  remasks: bool = False  # A block is then done only when its steps are spent.
  # (key, rate_B, masked_B) -> rate_B, run before the network call.
  clock: Callable | None = None


# The samplers of sampler_options.SAMPLER_OPTIONS.
SAMPLERS = {
    "ancestral": Sampler(_ancestral),
    "first_hitting": Sampler(_first_hitting, clock=_first_hitting_clock),
    "confidence": Sampler(_confidence),
    "threshold": Sampler(_threshold),
    "factor": Sampler(_factor),
    "entropy_bounded": Sampler(_entropy_bounded),
    "remdm": Sampler(_remdm, remasks=True),
}

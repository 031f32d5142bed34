"""Samplers: turn an all-[MASK] (or partly fixed) sequence into tokens.

One jitted loop (`lax.while_loop`, static shapes, one dispatch per `sample`)
over a `denoise_fn(params, z_BxL, mask_rate_B) -> logits_BxLxV`. A sampler is a
small rule in the `SAMPLERS` table: given the logits and the current sequence,
which masked positions to commit and, for remasking samplers, which committed
ones to reopen. The loop owns everything else, so every sampler gets it:

* Tokens: drawn after the rule has chosen, at the committed positions only,
  each from softmax(logits / temperature), top-p filtered (argmax at
  temperature 0), independently.
* Prompts and infill templates: positions that are not [MASK] at the start
  never change (SUBS: unmasked tokens are copied), remasking included.
* Blocks (`block_length` > 0, semi-autoregressive as in LLaDA and BD3-LM): the
  rule only sees the leftmost unfinished block; positions right of it stay
  [MASK] (the network still sees the whole sequence). `steps` is spread over a
  row's blocks that hold a [MASK] at the start, as evenly as integers allow
  (block j of n gets floor(steps (j+1) / n) - floor(steps j / n) steps), each
  getting at least one.
* Per-row state: a row is done when its last block is, or (`stop_at_eos`) once
  it has a generated EOS with no [MASK] before it; every generated position
  after that EOS becomes EOS. A done row's tokens and call count freeze, and
  the loop exits when every row is done.
* Network calls, counted per row: a row needs one when its block has a [MASK]
  and its logits are stale. Logits are stale after its sequence changed, or at
  every step when the model reads the masking rate (`reads_mask_rate`);
  otherwise a step that changed nothing reuses them (MDLM's caching). The
  network runs for the batch when any row needs it; other rows keep theirs.

The masking rate a row's network call sees is the row's current clock, in the
schedule's units (1 - alpha(t)); each block starts at the schedule's maximum:
  ancestral, remdm: the rate at the row's time t = 1 - step / steps of its block
    (remdm's loop schedule has its own piecewise-linear rate, below);
  first_hitting: the rate at the row's next unmasking time (drawn exactly);
  confidence, threshold, factor, entropy_bounded (no time of their own): the
    maximum rate times the fraction of the block's generated positions still
    masked, the rate at which that fraction is expected.

Samplers (`SAMPLER_OPTIONS` lists the options each reads):
* `ancestral` (MD4 / MDLM): step s -> t reveals each masked position with
  probability (alpha(t) - alpha(s)) / (1 - alpha(s)), drawing its token from
  p(x_i | z_s). Exact as steps -> infinity.
* `first_hitting` (Zheng et al. 2024): exact in L calls for L masked. Each
  step jumps the clock to the next unmasking time and reveals one masked
  position, picked uniformly. Reads no `steps`.
* `confidence` (MaskGIT / LLaDA / Dream): commits the k masked positions that
  score best by `order` (k spread evenly: all committed after `steps` steps);
  `order_temperature` > 0 samples the k from softmax(score / T) without
  replacement (Gumbel top-k).
* `threshold` (Fast-dLLM): commits every masked position whose confidence
  (its most likely token's probability) is >= `threshold`, and at least the
  most confident one.
* `factor` (Fast-dLLM's factor rule, its own name rather than a switch of
  `threshold`): with confidences sorted c_(1) >= c_(2) >= ..., commits the
  largest n with (n + 1) (1 - c_(n)) < `factor` (at least one).
* `entropy_bounded` (Ben-Hamu et al. 2025): commits the largest prefix U of the
  masked positions sorted by entropy with sum_U H - max_U H <= `gamma`.
* `remdm` (Wang et al. 2025): ancestral with remasking, see `_remdm`.

`spacing` > 1 (threshold, factor, entropy_bounded) spaces the positions one
call commits, as dilated unmasking does (Luxembourg et al. 2025, arXiv
2506.19037, as a filter on adaptive rules): the rule then chooses among the
masked positions taken greedily by its score, skipping any closer than
`spacing` to one already taken. A per-position score cannot see how two
positions depend on each other; where that dependence falls with distance
(in a Markov chain, geometrically), spaced positions committed together are
nearly independent given the rest.

Scores (probability, margin, entropy) use the model's untempered p(x_i | z)
and never a drawn token (none is drawn before the rule chooses): a rule that
commits one position per call then samples the model's joint exactly, whatever
its order (the chain rule holds for any order chosen from what is already
revealed). Scoring by the drawn token's probability, as LLaDA and Fast-dLLM do
(the same thing at temperature 0, where they decode), would instead defer
positions that drew an unlikely token and redraw them: a bias towards likely
tokens (on the `markov` recipe, n-gram TV 0.59 instead of 0.03 at threshold
0.9, temperature 1).
"""

import dataclasses
import functools
import numbers
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lm import errors
from diffusion_lm.diffusion import schedules


@dataclasses.dataclass(frozen=True)
class SamplerOptions:
  """How to sample; hashable, as a static argument of the jitted loop."""

  sampler: str = "ancestral"
  steps: int = 64  # Per sequence, spread over its blocks.
  temperature: float = 1.0  # 0 = argmax.
  top_p: float = 1.0  # Nucleus: keep the smallest set of tokens reaching top_p.
  float64: bool = False  # float64 Gumbel noise for the token draws.
  block_length: int = 0  # 0 = no blocks.
  stop_at_eos: bool = False
  order: str = "probability"  # confidence: 'probability' | 'margin' | 'entropy'.
  order_temperature: float = 0.0  # confidence: 0 = top-k.
  threshold: float = 0.9  # threshold: in (0, 1].
  factor: float = 1.0  # factor: > 0.
  gamma: float = 0.1  # entropy_bounded: entropy budget in nats, >= 0.
  spacing: int = 1  # threshold, factor, entropy_bounded: 1 = no spacing.
  eta: float = 0.02  # remdm: eta_cap (cap, loop) or eta_rescale (rescale).
  remdm_schedule: str = "cap"  # remdm: 'cap' | 'rescale' | 'loop'.
  t_on: float = 0.55  # remdm loop: remasks while t_off < t <= t_on,
  t_off: float = 0.05  # remdm loop: (see t_on)
  alpha_on: float = 0.9  # remdm loop: holding alpha at alpha_on.


class SampleResult(NamedTuple):
  tokens_BxL: jax.Array  # int32, no [MASK] left.
  calls_B: jax.Array  # int32 network calls per row.
  commit_step_BxL: jax.Array  # int32 loop iteration at which each position
  # received its final token; -1 for positions fixed from the start.
  length_B: jax.Array  # int32 tokens before the generated EOS that stopped the
  # row (stop_at_eos), else L.


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


# Positions drawn together, per row of the batch (see _draw_committed).
_DRAWS_PER_ROW = 2


def _draw_committed(key, logits_BxLxV, commit_BxL, options: SamplerOptions):
  """draw_tokens at the committed positions (0 elsewhere), each drawn apart.

  A call commits a few of its B x L positions, and the draw over V tokens
  costs about what the network does (at the quickstart shape, drawing every
  position took two thirds of an iteration). So the committed positions are
  gathered, _DRAWS_PER_ROW x B at a time (a static buffer), and only they are
  drawn, in as many buffers as they fill: buffer j with key fold_in(key, j).
  """
  b, l, v = logits_BxLxV.shape
  size = min(b * l, _DRAWS_PER_ROW * b)
  logits_NxV = logits_BxLxV.reshape(b * l, v)
  order_N = jnp.argsort(~commit_BxL.reshape(-1), stable=True)  # Committed first.

  def draw_buffer(j, tokens_N):
    # dynamic_slice moves a last buffer that would run past the end back:
    # positions it draws again keep the second of two independent draws.
    n_K = jax.lax.dynamic_slice_in_dim(order_N, j * size, size)
    tokens_K = draw_tokens(jax.random.fold_in(key, j), logits_NxV[n_K],
                           options.temperature, options.top_p, options.float64)
    return tokens_N.at[n_K].set(tokens_K)

  buffers = -(-jnp.sum(commit_BxL) // size)
  tokens_N = jax.lax.fori_loop(0, buffers, draw_buffer,
                               jnp.zeros(b * l, jnp.int32))
  return tokens_N.reshape(b, l)


class _Step(NamedTuple):
  """What a rule sees at one step (per row where suffixed _B)."""

  key: jax.Array
  logits_BxLxV: jax.Array
  candidates_BxL: jax.Array  # Masked positions of the current block.
  generated_BxL: jax.Array  # Positions of the current block not fixed at start.
  step_B: jax.Array  # Steps taken in the current block.
  steps_B: jax.Array  # The current block's step budget.
  rate_B: jax.Array  # Masking rate of the current state (the network's input).
  options: SamplerOptions
  schedule: schedules.Schedule


class _Move(NamedTuple):
  commit_BxL: jax.Array  # Candidates to commit (the loop draws their tokens).
  rate_B: jax.Array  # Masking rate of the next state.
  reopen_BxL: jax.Array | None = None  # Generated tokens set back to [MASK].


def _top_prob(step: _Step):
  """p1, the probability of the most likely token (the confidence)."""
  return jnp.max(jax.nn.softmax(step.logits_BxLxV, axis=-1), axis=-1)


def _margin(step: _Step):
  top2 = jax.lax.top_k(jax.nn.softmax(step.logits_BxLxV, axis=-1), 2)[0]
  return top2[..., 0] - top2[..., 1]


def _entropy(step: _Step):
  probs = jax.nn.softmax(step.logits_BxLxV, axis=-1)
  return jnp.sum(jax.scipy.special.entr(probs), axis=-1)


# confidence's `order`: a score per position, highest committed first.
_ORDERS = {
    "probability": _top_prob,  # p1 (MaskGIT, LLaDA; see the module docstring).
    "margin": _margin,  # p1 - p2 of the top two tokens.
    "entropy": lambda step: -_entropy(step),  # Lowest entropy first (Dream).
}


def _commit_top(score_BxL, candidates_BxL, count_B):
  """The count_B highest-scoring candidates of each row."""
  score_BxL = jnp.where(candidates_BxL, score_BxL, -jnp.inf)
  rank_BxL = jnp.argsort(jnp.argsort(-score_BxL, axis=-1), axis=-1)
  return candidates_BxL & (rank_BxL < count_B[:, None])


def _sorted_candidates(score_BxL, candidates_BxL):
  """Candidates' scores in descending order, then -inf."""
  return -jnp.sort(-jnp.where(candidates_BxL, score_BxL, -jnp.inf), axis=-1)


def _spaced(score_BxL, candidates_BxL, spacing: int):
  """The candidates taken in descending score, each skipped when it is
  closer than `spacing` to one taken before it (all of them at spacing 1)."""
  if spacing <= 1:
    return candidates_BxL
  pos_L = jnp.arange(score_BxL.shape[-1])
  order_BxL = jnp.argsort(jnp.where(candidates_BxL, -score_BxL, jnp.inf), axis=-1)

  def take(k, taken_BxL):
    pos_Bx1 = jax.lax.dynamic_slice_in_dim(order_BxL, k, 1, axis=-1)
    near_BxL = jnp.abs(pos_L - pos_Bx1) < spacing
    free_Bx1 = ~jnp.any(taken_BxL & near_BxL, axis=-1, keepdims=True)
    return taken_BxL | ((pos_L == pos_Bx1) & free_Bx1 & candidates_BxL)

  # Candidates sort first in order_BxL: stop after the most any row has.
  most = jnp.max(jnp.sum(candidates_BxL, axis=-1))
  return jax.lax.fori_loop(0, most, take, jnp.zeros_like(candidates_BxL))


def _max_rate(schedule: schedules.Schedule):
  """1 - alpha(1), where every block starts (traceable, unlike max_mask_rate)."""
  return schedule.mask_rate(jnp.float32(1.0))


def _fraction_rate(step: _Step, commit_BxL):
  """The maximum rate times the fraction of the block still masked."""
  left_B = jnp.sum(step.candidates_BxL & ~commit_BxL, axis=-1)
  total_B = jnp.maximum(jnp.sum(step.generated_BxL, axis=-1), 1)
  return _max_rate(step.schedule) * left_B / total_B


def _times(step: _Step):
  """(t, s): the row's time now and after this step, t = 1 - step / steps."""
  return (1.0 - step.step_B / step.steps_B,
          1.0 - (step.step_B + 1) / step.steps_B)


def _reverse_step(step: _Step, rate_s_B, sigma_B):
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
  u_BxL = jax.random.uniform(step.key, step.candidates_BxL.shape)
  commit_BxL = step.candidates_BxL & (u_BxL < a_B[:, None])
  reopen_BxL = (step.generated_BxL & ~step.candidates_BxL
                & (u_BxL < jnp.asarray(sigma_B)[..., None]))
  return _Move(commit_BxL, rate_s_B, reopen_BxL)


def _ancestral(step: _Step):
  _, s_B = _times(step)
  return _reverse_step(step, step.schedule.mask_rate(s_B), 0.0)


def _schedule_rate(options, schedule, t_B):
  del options
  return schedule.mask_rate(t_B)


def _loop_rate(options, schedule, t_B):
  """ReMDM-loop's masking rate: linear from the schedule's maximum at t = 1 to
  1 - alpha_on at t_on, held there until t_off, then linear to 0 at t = 0."""
  rate_on = 1.0 - options.alpha_on
  high_B = rate_on + (_max_rate(schedule) - rate_on) * (
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
_REMDM_SCHEDULES = {
    "cap": (_schedule_rate, _cap),
    "rescale": (_schedule_rate, _rescale),
    "loop": (_loop_rate, _loop),
}


def _remdm(step: _Step):
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
  rate_fn, sigma_fn = _REMDM_SCHEDULES[step.options.remdm_schedule]
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


def _first_hitting(step: _Step):
  """Reveals one masked position, picked uniformly, at the clock's time."""
  pick_BxL = jax.random.uniform(step.key, step.candidates_BxL.shape)
  one_B = jnp.ones_like(step.step_B)
  return _Move(_commit_top(pick_BxL, step.candidates_BxL, one_B), step.rate_B)


def _confidence(step: _Step):
  options = step.options
  score_BxL = _ORDERS[options.order](step)
  if options.order_temperature > 0:  # Gumbel top-k: k draws without replacement.
    dtype = jnp.float64 if options.float64 else jnp.float32
    gumbel_BxL = jax.random.gumbel(step.key, score_BxL.shape, dtype)
    score_BxL = score_BxL / options.order_temperature + gumbel_BxL
  n_B = jnp.sum(step.generated_BxL, axis=-1)
  k_B = (n_B * (step.step_B + 1)) // step.steps_B - (n_B * step.step_B) // step.steps_B
  commit_BxL = _commit_top(score_BxL, step.candidates_BxL, k_B)
  return _Move(commit_BxL, _fraction_rate(step, commit_BxL))


def _threshold(step: _Step):
  confidence_BxL = _top_prob(step)
  eligible_BxL = _spaced(confidence_BxL, step.candidates_BxL, step.options.spacing)
  above_B = jnp.sum(eligible_BxL & (confidence_BxL >= step.options.threshold),
                    axis=-1)
  commit_BxL = _commit_top(confidence_BxL, eligible_BxL, jnp.maximum(above_B, 1))
  return _Move(commit_BxL, _fraction_rate(step, commit_BxL))


def _factor(step: _Step):
  confidence_BxL = _top_prob(step)
  eligible_BxL = _spaced(confidence_BxL, step.candidates_BxL, step.options.spacing)
  c_BxL = _sorted_candidates(confidence_BxL, eligible_BxL)  # c_(n).
  n_L = jnp.arange(1, c_BxL.shape[-1] + 1)
  fits_B = jnp.sum((n_L + 1) * (1.0 - c_BxL) < step.options.factor, axis=-1)
  commit_BxL = _commit_top(confidence_BxL, eligible_BxL, jnp.maximum(fits_B, 1))
  return _Move(commit_BxL, _fraction_rate(step, commit_BxL))


def _entropy_bounded(step: _Step):
  entropy_BxL = _entropy(step)
  eligible_BxL = _spaced(-entropy_BxL, step.candidates_BxL, step.options.spacing)
  h_BxL = -_sorted_candidates(-entropy_BxL, eligible_BxL)  # Ascending.
  # sum_U H - max_U H of each prefix U: the entropies before its last one.
  before_BxL = jnp.cumsum(h_BxL, axis=-1) - h_BxL
  before_BxL = jnp.where(jnp.isfinite(h_BxL), before_BxL, jnp.inf)
  fits_B = jnp.sum(before_BxL <= step.options.gamma, axis=-1)  # >= 1.
  commit_BxL = _commit_top(-entropy_BxL, eligible_BxL, fits_B)
  return _Move(commit_BxL, _fraction_rate(step, commit_BxL))


class _Sampler(NamedTuple):
  rule: Callable[[_Step], _Move]
  options: tuple[str, ...]  # The sampler-specific options it reads.
  remasks: bool = False  # A block is then done only when its steps are spent.
  # (key, rate_B, masked_B) -> rate_B, run before the network call.
  clock: Callable | None = None


SAMPLERS = {
    "ancestral": _Sampler(_ancestral, ("steps",)),
    "first_hitting": _Sampler(_first_hitting, (), clock=_first_hitting_clock),
    "confidence": _Sampler(_confidence, ("steps", "order", "order_temperature")),
    "threshold": _Sampler(_threshold, ("threshold", "spacing")),
    "factor": _Sampler(_factor, ("factor", "spacing")),
    "entropy_bounded": _Sampler(_entropy_bounded, ("gamma", "spacing")),
    "remdm": _Sampler(_remdm, ("steps", "eta", "remdm_schedule", "t_on", "t_off",
                               "alpha_on"), remasks=True),
}

_COMMON = ("sampler", "temperature", "top_p", "float64", "block_length",
           "stop_at_eos")
SAMPLER_OPTIONS = {name: _COMMON + s.options for name, s in SAMPLERS.items()}

# Option -> (whether a value is valid, what is expected).
_CHECKS = {
    "steps": (lambda v: v >= 1, ">= 1"),
    "temperature": (lambda v: v >= 0, ">= 0"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "block_length": (lambda v: v >= 0, ">= 0 (0 = no blocks)"),
    "order": (lambda v: v in _ORDERS, f"one of {sorted(_ORDERS)}"),
    "order_temperature": (lambda v: v >= 0, ">= 0"),
    "threshold": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "factor": (lambda v: v > 0, "> 0"),
    "gamma": (lambda v: v >= 0, ">= 0"),
    "spacing": (lambda v: v >= 1, ">= 1 (1 = no spacing)"),
    "eta": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "remdm_schedule": (lambda v: v in _REMDM_SCHEDULES,
                       f"one of {sorted(_REMDM_SCHEDULES)}"),
    "t_on": (lambda v: 0 < v < 1, "in (0, 1)"),
    "t_off": (lambda v: 0 < v < 1, "in (0, 1)"),
    "alpha_on": (lambda v: 0 < v < 1, "in (0, 1)"),
}


def _check_sampler(name: str):
  if name not in SAMPLERS:
    raise errors.UserError(f"sample.sampler={name!r} is not one of {sorted(SAMPLERS)}")


def _check(options: SamplerOptions):
  """Raises UserError naming the first bad option the sampler reads."""
  _check_sampler(options.sampler)
  for name in SAMPLER_OPTIONS[options.sampler]:
    if name in _CHECKS:
      valid, expected = _CHECKS[name]
      value = getattr(options, name)
      if not valid(value):
        raise errors.UserError(f"sample.{name} must be {expected}, got {value!r}")
  if options.sampler == "remdm" and not options.t_off < options.t_on:
    raise errors.UserError(
        f"sample.t_off must be < sample.t_on, got {options.t_off} and {options.t_on}")


def _coerce(name: str, value):
  """value as the type of SamplerOptions.name (int for float is fine)."""
  kind = type(getattr(SamplerOptions, name))
  if kind is bool:
    valid = isinstance(value, (bool, np.bool_))
  elif kind is str:
    valid = isinstance(value, str)
  else:
    abstract = numbers.Integral if kind is int else numbers.Real
    valid = isinstance(value, abstract) and not isinstance(value, (bool, np.bool_))
  if not valid:
    raise errors.UserError(
        f"sample.{name} must be of type {kind.__name__}, got {value!r}")
  return kind(value)


def make_options(defaults: Mapping, explicit: Mapping) -> SamplerOptions:
  """The options of one `sample` call.

  Args:
    defaults: a value for each SamplerOptions field (a config's `sample` group;
      other keys are ignored, and fields it lacks, as in configs older than a
      field, take the SamplerOptions default).
    explicit: options the user passed; None values count as not passed.

  Returns:
    SamplerOptions holding the chosen sampler's options; fields it does not
    read keep their defaults, so they never cause a recompilation.

  Raises:
    errors.UserError: for an unknown sampler or option, an option passed
      explicitly that the sampler does not read, or a bad value.
  """
  given = {k: v for k, v in explicit.items() if v is not None}
  fields = [f.name for f in dataclasses.fields(SamplerOptions)]
  unknown = sorted(set(given) - set(fields))
  if unknown:
    raise errors.UserError(f"unknown sampling options {unknown}; known: {fields}")
  values = {**{k: defaults[k] for k in fields if k in defaults}, **given}
  sampler = _coerce("sampler", values.get("sampler", SamplerOptions.sampler))
  _check_sampler(sampler)
  reads = SAMPLER_OPTIONS[sampler]
  not_read = sorted(set(given) - set(reads))
  if not_read:
    raise errors.UserError(
        f"sampler {sampler!r} does not read {', '.join(not_read)}; "
        f"it takes {', '.join(reads)}")
  options = SamplerOptions(
      **{k: _coerce(k, values[k]) for k in reads if k in values})
  _check(options)
  return options


class _Carry(NamedTuple):
  it: jax.Array  # Loop iteration.
  z_BxL: jax.Array
  logits_BxLxV: jax.Array
  fresh_B: jax.Array  # logits_BxLxV were computed from z_BxL.
  calls_B: jax.Array
  block_B: jax.Array  # The current block; num_blocks once the row is done.
  step_B: jax.Array  # Steps taken in the current block.
  rate_B: jax.Array  # Masking rate of z_BxL, the network's input.
  commit_step_BxL: jax.Array
  length_B: jax.Array


@functools.partial(
    jax.jit, static_argnames=("denoise_fn", "mask_id", "eos_id", "reads_mask_rate",
                              "options", "schedule"))
def _sample(denoise_fn, params, key, init_BxL, *, mask_id, eos_id,
            reads_mask_rate, options, schedule):
  sampler = SAMPLERS[options.sampler]
  b, l = init_BxL.shape
  block_length = options.block_length if 0 < options.block_length < l else l
  num_blocks = -(-l // block_length)
  pos_L = jnp.arange(l, dtype=jnp.int32)
  block_L = pos_L // block_length
  fixed_BxL = init_BxL != mask_id
  max_rate = _max_rate(schedule)

  # Step budgets: `steps` spread over the blocks that have something to fill.
  todo_BxN = jnp.zeros((b, num_blocks), bool).at[:, block_L].max(~fixed_BxL)
  ordinal_BxN = jnp.cumsum(todo_BxN, axis=-1) - 1
  count_Bx1 = jnp.maximum(jnp.sum(todo_BxN, axis=-1, keepdims=True), 1)
  budget_BxN = jnp.maximum(
      (options.steps * (ordinal_BxN + 1)) // count_Bx1
      - (options.steps * ordinal_BxN) // count_Bx1, 1)

  def first_masked_block(z_BxL):
    masked_BxL = z_BxL == mask_id
    first_B = block_L[jnp.argmax(masked_BxL, axis=-1)]
    return jnp.where(jnp.any(masked_BxL, axis=-1), first_B, num_blocks)

  def call(z_BxL, rate_B):
    return denoise_fn(params, z_BxL, rate_B.astype(jnp.float32)).astype(jnp.float32)

  def stop_at_eos(c: _Carry, z_BxL, block_B, commit_step_BxL):
    """Done rows whose first generated EOS has no [MASK] before it."""
    eos_BxL = (z_BxL == eos_id) & ~fixed_BxL
    first_B = jnp.argmax(eos_BxL, axis=-1)
    before_BxL = pos_L < first_B[:, None]
    stop_B = (jnp.any(eos_BxL, axis=-1)
              & ~jnp.any((z_BxL == mask_id) & before_BxL, axis=-1))
    fill_BxL = stop_B[:, None] & ~fixed_BxL & (pos_L > first_B[:, None])
    commit_step_BxL = jnp.where(fill_BxL & (z_BxL != eos_id), c.it, commit_step_BxL)
    return (jnp.where(fill_BxL, eos_id, z_BxL),
            jnp.where(stop_B, num_blocks, block_B),
            jnp.where(stop_B, first_B, c.length_B), commit_step_BxL)

  def body(c: _Carry):
    draw_key, rule_key, clock_key = jax.random.split(jax.random.fold_in(key, c.it), 3)
    active_B = c.block_B < num_blocks
    in_block_BxL = block_L == c.block_B[:, None]
    candidates_BxL = (c.z_BxL == mask_id) & in_block_BxL
    rate_B = c.rate_B
    if sampler.clock is not None:
      rate_B = jnp.where(active_B, sampler.clock(
          clock_key, rate_B, jnp.sum(candidates_BxL, axis=-1)), rate_B)

    need_B = jnp.any(candidates_BxL, axis=-1) & (~c.fresh_B | reads_mask_rate)
    logits_BxLxV = jax.lax.cond(
        jnp.any(need_B),
        lambda: jnp.where(need_B[:, None, None], call(c.z_BxL, rate_B),
                          c.logits_BxLxV),
        lambda: c.logits_BxLxV)
    steps_B = jnp.take_along_axis(
        budget_BxN, jnp.minimum(c.block_B, num_blocks - 1)[:, None], axis=-1)[:, 0]
    move = sampler.rule(_Step(
        rule_key, logits_BxLxV, candidates_BxL,
        ~fixed_BxL & in_block_BxL, c.step_B, steps_B, rate_B, options, schedule))
    tokens_BxL = _draw_committed(draw_key, logits_BxLxV, move.commit_BxL, options)

    z_BxL = jnp.where(move.commit_BxL, tokens_BxL, c.z_BxL)
    if move.reopen_BxL is not None:
      z_BxL = jnp.where(move.reopen_BxL, mask_id, z_BxL)
    commit_step_BxL = jnp.where(move.commit_BxL, c.it, c.commit_step_BxL)
    step_B = c.step_B + active_B
    rate_B = jnp.where(active_B, move.rate_B, rate_B)
    finished_B = active_B & ~jnp.any((z_BxL == mask_id) & in_block_BxL, axis=-1)
    if sampler.remasks:
      finished_B &= step_B >= steps_B
    block_B = jnp.where(finished_B, first_masked_block(z_BxL), c.block_B)
    step_B = jnp.where(finished_B, 0, step_B)
    rate_B = jnp.where(finished_B, max_rate, rate_B)
    length_B = c.length_B
    if options.stop_at_eos:
      z_BxL, block_B, length_B, commit_step_BxL = stop_at_eos(
          c, z_BxL, block_B, commit_step_BxL)

    fresh_B = (c.fresh_B | need_B) & jnp.all(z_BxL == c.z_BxL, axis=-1)
    new = _Carry(c.it + 1, z_BxL, logits_BxLxV, fresh_B, c.calls_B + need_B,
                 block_B, step_B, rate_B, commit_step_BxL, length_B)
    return jax.tree.map(lambda x, old: x.astype(old.dtype), new, c)

  rate_B = jnp.full((b,), max_rate, jnp.float32)
  logits = jax.eval_shape(call, init_BxL, rate_B)
  init = _Carry(
      it=jnp.int32(0), z_BxL=init_BxL,
      logits_BxLxV=jnp.zeros(logits.shape, jnp.float32),
      fresh_B=jnp.zeros((b,), bool), calls_B=jnp.zeros((b,), jnp.int32),
      block_B=first_masked_block(init_BxL).astype(jnp.int32),
      step_B=jnp.zeros((b,), jnp.int32), rate_B=rate_B,
      commit_step_BxL=jnp.full((b, l), -1, jnp.int32),
      length_B=jnp.full((b,), l, jnp.int32))
  # Rows need at most max(steps, blocks) iterations, or L with one commit or
  # more each; the bound turns a rule that commits nothing into masks left
  # over rather than a loop that never ends.
  max_iterations = l + options.steps + num_blocks
  c = jax.lax.while_loop(
      lambda c: jnp.any(c.block_B < num_blocks) & (c.it < max_iterations), body, init)
  return SampleResult(c.z_BxL, c.calls_B, c.commit_step_BxL, c.length_B)


def sample(denoise_fn, params, key, init_BxL, *, mask_id: int, eos_id: int | None,
           reads_mask_rate: bool, options: SamplerOptions,
           schedule: schedules.Schedule = schedules.Linear()) -> SampleResult:
  """Fills every [MASK] of init_BxL with the sampler of `options`.

  Args:
    denoise_fn: hashable (a static argument of the jitted loop)
      (params, z_BxL, mask_rate_B) -> float logits_BxLxV over the V = mask_id
      tokens (never [MASK]).
    params: any pytree of arrays, passed to denoise_fn unchanged.
    key: PRNG key.
    init_BxL: token ids; [MASK] (mask_id) where to generate.
    mask_id: the [MASK] id.
    eos_id: the EOS id (needed with options.stop_at_eos).
    reads_mask_rate: whether denoise_fn reads mask_rate_B (time conditioning);
      if not, steps that change nothing reuse the previous logits.
    options: see SamplerOptions and make_options.
    schedule: alpha(t) of the reverse process (ancestral, remdm) and the units
      of the masking rate the network sees.

  Returns:
    SampleResult.
  """
  _check(options)
  if options.stop_at_eos and eos_id is None:
    raise errors.UserError("sample.stop_at_eos needs a tokenizer with an EOS token")
  with jax.enable_x64(options.float64):
    return _sample(denoise_fn, params, key, jnp.asarray(init_BxL, jnp.int32),
                   mask_id=mask_id,
                   eos_id=eos_id if options.stop_at_eos else None,
                   reads_mask_rate=reads_mask_rate, options=options,
                   schedule=schedule)

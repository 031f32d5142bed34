"""What a caller may ask of the samplers: SamplerOptions, the options each
sampler reads (SAMPLER_OPTIONS), and their checks (make_options).

Samplers (the rules are in sampling_rules.py):
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
* `factor` (Fast-dLLM's factor rule): with confidences sorted
  c_(1) >= c_(2) >= ..., commits the largest n with (n + 1) (1 - c_(n)) <
  `factor` (at least one).
* `entropy_bounded` (Ben-Hamu et al. 2025): commits the largest prefix U of the
  masked positions sorted by entropy with sum_U H - max_U H <= `gamma`.
* `remdm` (Wang et al. 2025): ancestral with remasking.
`spacing` > 1 (threshold, factor, entropy_bounded) keeps the positions one
call commits at least `spacing` apart (dilated unmasking).
"""

import dataclasses
import numbers
from typing import Mapping

import numpy as np

from diffusion_lm import errors


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


ORDERS = ("probability", "margin", "entropy")  # confidence's `order`.
REMDM_SCHEDULES = ("cap", "rescale", "loop")

_COMMON = ("sampler", "temperature", "top_p", "float64", "block_length",
           "stop_at_eos")
# Sampler -> the options it reads.
SAMPLER_OPTIONS = {name: _COMMON + reads for name, reads in {
    "ancestral": ("steps",),
    "first_hitting": (),
    "confidence": ("steps", "order", "order_temperature"),
    "threshold": ("threshold", "spacing"),
    "factor": ("factor", "spacing"),
    "entropy_bounded": ("gamma", "spacing"),
    "remdm": ("steps", "eta", "remdm_schedule", "t_on", "t_off", "alpha_on"),
}.items()}


# Option -> (whether a value is valid, what is expected).
_CHECKS = {
    "steps": (lambda v: v >= 1, ">= 1"),
    "temperature": (lambda v: v >= 0, ">= 0"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "block_length": (lambda v: v >= 0, ">= 0 (0 = no blocks)"),
    "order": (lambda v: v in ORDERS, f"one of {sorted(ORDERS)}"),
    "order_temperature": (lambda v: v >= 0, ">= 0"),
    "threshold": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "factor": (lambda v: v > 0, "> 0"),
    "gamma": (lambda v: v >= 0, ">= 0"),
    "spacing": (lambda v: v >= 1, ">= 1 (1 = no spacing)"),
    "eta": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "remdm_schedule": (lambda v: v in REMDM_SCHEDULES,
                       f"one of {sorted(REMDM_SCHEDULES)}"),
    "t_on": (lambda v: 0 < v < 1, "in (0, 1)"),
    "t_off": (lambda v: 0 < v < 1, "in (0, 1)"),
    "alpha_on": (lambda v: 0 < v < 1, "in (0, 1)"),
}


def _check_sampler(name: str):
  if name not in SAMPLER_OPTIONS:
    raise errors.UserError(f"sample.sampler={name!r} is not one of {sorted(SAMPLER_OPTIONS)}")


def check(options: SamplerOptions):
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
  check(options)
  return options

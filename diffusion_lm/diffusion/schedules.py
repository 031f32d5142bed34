"""Masking schedules: alpha(t), the probability that a token is still clean at time t.

Each token is replaced by [MASK] with probability 1 - alpha(t); alpha falls from
alpha(0) = 1 to alpha(1) ~ 0. Schedules state the masking rate 1 - alpha(t)
directly so that it is exact near t = 0, where 1 - alpha(t) would cancel.

The NELBO does not depend on the schedule as long as alpha(1) = 0: substituting
u = 1 - alpha(t) turns it into the same integral over the masking rate u. A
schedule only decides where the Monte Carlo samples of u fall (its variance).
"""

import dataclasses
import math

import jax.numpy as jnp

from diffusion_lm import errors


class Schedule:
  """alpha(t) = 1 - mask_rate(t) on t in [0, 1]."""

  def mask_rate(self, t):
    raise NotImplementedError

  def alpha_deriv(self, t):
    raise NotImplementedError

  def alpha(self, t):
    return 1.0 - self.mask_rate(t)

  def weight(self, t):
    """-alpha'(t) / (1 - alpha(t)) >= 0, the NELBO's weight on masked tokens."""
    return -self.alpha_deriv(t) / self.mask_rate(t)

  @property
  def max_mask_rate(self) -> float:
    """1 - alpha(1): the NELBO covers masking rates in [0, max_mask_rate]."""
    return float(self.mask_rate(jnp.float32(1.0)))


@dataclasses.dataclass(frozen=True)
class Linear(Schedule):
  """alpha(t) = 1 - t (MD4, MDLM)."""

  def mask_rate(self, t):
    return t

  def alpha_deriv(self, t):
    return -jnp.ones_like(t)

  def weight(self, t):
    return 1.0 / t


@dataclasses.dataclass(frozen=True)
class Cosine(Schedule):
  """alpha(t) = 1 - cos(pi/2 (1 - t)), MaskGIT's schedule as used by MD4.

  cos(pi/2 t) is written sin(pi/2 (1 - t)): exactly 0 at t = 1 in float32,
  where cos(float32(pi/2)) is -4e-8 and would make the weight negative.
  """

  def mask_rate(self, t):
    return jnp.sin(0.5 * math.pi * t)

  def alpha_deriv(self, t):
    return -0.5 * math.pi * jnp.sin(0.5 * math.pi * (1.0 - t))

  def weight(self, t):
    return 0.5 * math.pi * jnp.sin(0.5 * math.pi * (1.0 - t)) / self.mask_rate(t)


@dataclasses.dataclass(frozen=True)
class Polynomial(Schedule):
  """alpha(t) = 1 - t^power (MD4's polynomial family)."""

  power: float = 2.0

  def __post_init__(self):
    if self.power <= 0:
      raise errors.UserError(f"diffusion.power must be > 0, got {self.power}")

  def mask_rate(self, t):
    return t**self.power

  def alpha_deriv(self, t):
    return -self.power * t ** (self.power - 1.0)

  def weight(self, t):
    return self.power / t


@dataclasses.dataclass(frozen=True)
class LogLinear(Schedule):
  """MDLM's log-linear noise sigma(t) = -log(1 - (1 - eps) t), so alpha = exp(-sigma).

  alpha(1) = eps > 0: its NELBO stops at masking rate 1 - eps and is not an
  exact bound, which is why evaluation always uses the linear schedule.
  """

  eps: float = 1e-3

  def __post_init__(self):
    if not 0 <= self.eps < 1:
      raise errors.UserError(f"diffusion.eps must be in [0, 1), got {self.eps}")

  def mask_rate(self, t):
    return (1.0 - self.eps) * t

  def alpha_deriv(self, t):
    return -(1.0 - self.eps) * jnp.ones_like(t)

  def weight(self, t):
    return 1.0 / t


SCHEDULES = {
    "linear": Linear,
    "cosine": Cosine,
    "polynomial": Polynomial,
    "loglinear": LogLinear,
}


def get_schedule(name: str, **params) -> Schedule:
  """The schedule called `name`, given those of `params` that it takes."""
  if name not in SCHEDULES:
    raise errors.UserError(
        f"diffusion.schedule={name!r} is not one of {sorted(SCHEDULES)}")
  cls = SCHEDULES[name]
  fields = {f.name for f in dataclasses.fields(cls)}
  return cls(**{k: v for k, v in params.items() if k in fields})


def from_config(diffusion_config) -> Schedule:
  return get_schedule(
      diffusion_config.schedule,
      power=diffusion_config.power,
      eps=diffusion_config.eps)

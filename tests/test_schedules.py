"""Masking schedules: boundary values, derivatives, weights, registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats

from diffusion_lm import errors
from diffusion_lm.diffusion import schedules

ALL = [schedules.get_schedule(name) for name in schedules.SCHEDULES] + [
    schedules.Polynomial(power=0.5), schedules.Polynomial(power=3.0)]
T = jnp.linspace(0.02, 0.98, 25)


@pytest.mark.parametrize("schedule", ALL, ids=repr)
def test_alpha_runs_from_one_to_near_zero(schedule):
  assert float(schedule.alpha(jnp.float32(0.0))) == 1.0
  expected_end = schedule.eps if isinstance(schedule, schedules.LogLinear) else 0.0
  assert float(schedule.alpha(jnp.float32(1.0))) == pytest.approx(expected_end, abs=1e-6)
  assert np.all(np.diff(np.asarray(schedule.alpha(T))) < 0)


@pytest.mark.parametrize("schedule", ALL, ids=repr)
def test_alpha_deriv_is_the_derivative(schedule):
  autodiff = jax.vmap(jax.grad(schedule.alpha))(T)
  np.testing.assert_allclose(schedule.alpha_deriv(T), autodiff, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("schedule", ALL, ids=repr)
def test_weight_is_minus_alpha_deriv_over_mask_rate(schedule):
  expected = -schedule.alpha_deriv(T) / schedule.mask_rate(T)
  np.testing.assert_allclose(schedule.weight(T), expected, rtol=1e-5)
  assert np.all(np.asarray(schedule.weight(T)) > 0)


@pytest.mark.parametrize("schedule", ALL, ids=repr)
def test_weights_integrate_to_the_any_order_coefficients(schedule):
  """int_0^1 w(t) Binomial(k; L, rate(t)) dt = I_{u_max}(k, L - k + 1) / k:
  with u_max = 1, the 1/k of the any-order identity (DESIGN.md)."""
  # Bug caught: a weight that does not match its schedule's mask rate (the
  # NELBO would then depend on the schedule), e.g. tan for cot in Cosine.
  length = 6
  u_max = schedule.max_mask_rate
  for k in range(1, length + 1):
    def integrand(t):
      rate = float(schedule.mask_rate(jnp.float32(t)))
      return float(schedule.weight(jnp.float32(t))) * stats.binom.pmf(
          k, length, rate)
    value, _ = integrate.quad(integrand, 0.0, 1.0, limit=200)
    expected = special.betainc(k, length - k + 1, u_max) / k
    assert value == pytest.approx(expected, rel=1e-4), k


def test_cosine_weight_is_not_negative_at_one():
  # Bug caught: cos(float32(pi / 2)) < 0 making the weight slightly negative.
  assert float(schedules.Cosine().weight(jnp.float32(1.0))) == 0.0


def test_mask_rate_is_exact_near_zero():
  # 1 - alpha(t) computed as such would round to 0 in float32 here.
  t = jnp.float32(1e-9)
  assert float(schedules.Cosine().mask_rate(t)) == pytest.approx(np.pi / 2 * 1e-9, rel=1e-5)


def test_unknown_schedule_names_the_choices():
  with pytest.raises(errors.UserError, match="diffusion.schedule='cosin'.*cosine"):
    schedules.get_schedule("cosin")


def test_bad_parameters_are_rejected():
  with pytest.raises(errors.UserError, match="diffusion.power"):
    schedules.get_schedule("polynomial", power=0.0)
  with pytest.raises(errors.UserError, match="diffusion.eps"):
    schedules.get_schedule("loglinear", eps=1.0)

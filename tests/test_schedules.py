"""Masking schedules: boundary values, derivatives, weights, registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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

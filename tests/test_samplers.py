"""Samplers against an oracle denoiser of a known joint distribution.

The oracle returns the exact p(x_i | z) of a distribution over a few length-3
sequences, so any departure of the samples from that distribution is the
sampler's own doing.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_lm import errors
from diffusion_lm.diffusion import samplers, schedules

MASK = 3
SUPPORT = np.array([[0, 0, 0], [1, 1, 1], [0, 1, 2], [2, 2, 0], [1, 0, 1]], np.int32)
PROBS = np.array([0.35, 0.25, 0.2, 0.12, 0.08])
N = 4_000


@dataclasses.dataclass(frozen=True)
class Oracle:
  """p(x_i | z): the marginals of the posterior over SUPPORT given z."""

  def __call__(self, params, z_BxL, mask_rate_B):
    support, probs = params
    fits = jnp.all((z_BxL[:, None, :] == MASK) | (z_BxL[:, None, :] == support[None]),
                   axis=-1)  # [B, N]
    posterior = probs[None] * fits
    posterior = posterior / posterior.sum(-1, keepdims=True)
    onehot = jax.nn.one_hot(support, 3)  # [N, L, V]
    marginals = jnp.einsum("bn,nlv->blv", posterior, onehot)
    return jnp.log(marginals + 1e-30)


PARAMS = (jnp.asarray(SUPPORT), jnp.asarray(PROBS, jnp.float32))


def run(init, steps, sampler="ancestral", seed=0, **kwargs):
  init = np.broadcast_to(np.asarray(init, np.int32), (N, 3))
  tokens, calls = samplers.sample(Oracle(), PARAMS, jax.random.PRNGKey(seed), init,
                                  mask_id=MASK, steps=steps, sampler=sampler,
                                  **kwargs)
  return np.asarray(tokens), int(calls)


def empirical(tokens):
  """Frequencies of every sequence in {0,1,2}^3."""
  codes = tokens @ np.array([9, 3, 1])
  return np.bincount(codes, minlength=27) / len(tokens)


def truth(prompt_mask=None):
  p = np.zeros(27)
  for seq, prob in zip(SUPPORT, PROBS):
    if prompt_mask is None or np.all(seq[prompt_mask[0]] == prompt_mask[1]):
      p[seq @ np.array([9, 3, 1])] += prob
  return p / p.sum()


def total_variation(p, q):
  return 0.5 * np.abs(p - q).sum()


# Expected TV of N samples from the truth is about 0.01; the product of the
# marginals (one step) is 0.37 away.
@pytest.mark.parametrize("schedule", [schedules.Linear(), schedules.Cosine()], ids=repr)
def test_many_steps_match_the_joint_distribution(schedule):
  tokens, _ = run([MASK] * 3, steps=256, schedule=schedule)
  assert total_variation(empirical(tokens), truth()) < 0.04


def test_float64_draws_match_the_joint_distribution():
  tokens, _ = run([MASK] * 3, steps=256, float64=True, seed=1)
  assert total_variation(empirical(tokens), truth()) < 0.04


def test_one_step_samples_the_product_of_marginals():
  tokens, calls = run([MASK] * 3, steps=1)
  marginals = [np.bincount(SUPPORT[:, i], PROBS, minlength=3) for i in range(3)]
  product = np.einsum("a,b,c->abc", *marginals).reshape(-1)
  assert calls == 1
  assert total_variation(empirical(tokens), product) < 0.04
  assert total_variation(empirical(tokens), truth()) > 0.25  # The factorisation error.


def test_confidence_one_token_per_step_stays_in_the_support():
  tokens, _ = run([MASK] * 3, steps=3, sampler="confidence")
  codes = set((tokens @ np.array([9, 3, 1])).tolist())
  assert codes <= set((SUPPORT @ np.array([9, 3, 1])).tolist())
  assert not np.any(tokens == MASK)


def test_confidence_commits_the_most_confident_position_first():
  # Position 0 given position 2 = 0: x = (0,0,0) or (2,2,0); position 1 too;
  # with greedy draws the first commit is the higher-probability argmax.
  tokens, _ = run([MASK, MASK, 0], steps=2, sampler="confidence", temperature=0.0)
  np.testing.assert_array_equal(tokens, np.broadcast_to([0, 0, 0], tokens.shape))


@pytest.mark.parametrize("sampler", sorted(samplers.SAMPLERS))
def test_prompt_and_infill_positions_are_kept(sampler):
  tokens, _ = run([MASK, 1, MASK], steps=64, sampler=sampler)
  assert np.all(tokens[:, 1] == 1)
  # Prompt: position 0 fixed to 2 -> only (2,2,0).
  tokens, _ = run([2, MASK, MASK], steps=8, sampler=sampler)
  assert np.all(tokens == [2, 2, 0])


def test_ancestral_infill_matches_the_conditional_distribution():
  tokens, _ = run([MASK, 1, MASK], steps=64)
  conditional = truth((np.array([1]), np.array([1])))
  assert total_variation(empirical(tokens), conditional) < 0.04


def test_caching_skips_calls_when_nothing_changed():
  init = np.full((1, 3), MASK, np.int32)
  _, calls = samplers.sample(Oracle(), PARAMS, jax.random.PRNGKey(0), init,
                             mask_id=MASK, steps=100)
  assert 1 <= calls <= 3  # One call per distinct state with masks left.
  _, calls = samplers.sample(Oracle(), PARAMS, jax.random.PRNGKey(0), init,
                             mask_id=MASK, steps=100, reads_mask_rate=True)
  assert calls > 10  # Every step until the last mask is gone.


def test_top_p_keeps_the_smallest_set_reaching_p():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  kept = np.isfinite(np.asarray(samplers.filter_top_p(logits, 0.6)))
  np.testing.assert_array_equal(kept, [[True, True, False, False]])
  kept = np.isfinite(np.asarray(samplers.filter_top_p(logits, 0.5)))
  np.testing.assert_array_equal(kept, [[True, False, False, False]])


def test_zero_temperature_is_greedy():
  logits = jnp.log(jnp.array([[0.2, 0.5, 0.3]]))
  draws = samplers.draw_tokens(jax.random.PRNGKey(0), logits, 0.0, 1.0, False)
  assert int(draws[0]) == 1


def test_bad_arguments_are_rejected():
  init = np.full((1, 3), MASK, np.int32)
  for kwargs, pattern in [({"sampler": "greedy"}, "sampler 'greedy'"),
                          ({"steps": 0}, "steps"), ({"top_p": 0.0}, "top_p")]:
    with pytest.raises(errors.UserError, match=pattern):
      samplers.sample(Oracle(), PARAMS, jax.random.PRNGKey(0), init, mask_id=MASK,
                      **{"steps": 4, **kwargs})

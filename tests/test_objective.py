"""The continuous-time NELBO against its exact any-order form (DESIGN.md).

For a model that reads only z (no time input), substituting u = 1 - alpha(t)
gives, with S_k the mean over masks M of size k of sum_{i in M} -log p(x_i | x_M
masked),

  NELBO = sum_k S_k * int_0^{u_max} Binomial(k; L, u) / u du
        = sum_k S_k / k * I_{u_max}(k, L - k + 1)

(I the regularised incomplete beta; u_max = 1 - alpha(1)). For u_max = 1 this
is the any-order identity sum_k S_k / k. Exact enumeration of all 2^L masks
gives the right side; the Monte Carlo estimate must match it.
"""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import special

from conftest import TINY_MODEL, randomised
from diffusion_lm import batching
from diffusion_lm.diffusion import objective, schedules

VOCAB, L, MASK = 3, 4, 3
N_MC = 40_000


def random_model(time_conditioning: bool):
  """Large random weights, so that predictions vary a lot."""
  cfg = dataclasses.replace(
      TINY_MODEL, vocab_size=VOCAB, num_layers=1, head_dim=4, embed_dim=8,
      mlp_dim=16, time_conditioning=time_conditioning)
  return randomised(cfg, seed=1, scale=1.0)


@pytest.fixture(scope="module")
def model():
  return random_model(time_conditioning=False)


X = jnp.array([[0, 2, 1, 2]], jnp.int32)


def exact_nelbo(model, x, max_mask_rate: float) -> float:
  """Enumerates every mask; returns the NELBO of x in nats."""
  masks = np.array(list(itertools.product([0, 1], repeat=L)), bool)
  z = jnp.where(masks, MASK, x)
  nll = objective.token_nll(model(z, None), jnp.broadcast_to(x, z.shape))
  per_mask = np.sum(np.where(masks, np.asarray(nll, np.float64), 0.0), axis=1)
  sizes = masks.sum(axis=1)
  total = 0.0
  for k in range(1, L + 1):
    s_k = per_mask[sizes == k].mean()
    total += s_k / k * special.betainc(k, L - k + 1, max_mask_rate)
  return total


def monte_carlo(model, x, schedule, seed=0):
  """Mean and standard error of N_MC one-sample NELBO estimates."""
  t_key, m_key = jax.random.split(jax.random.PRNGKey(seed))
  t = objective.stratified_times(t_key, N_MC)
  tokens = jnp.broadcast_to(x, (N_MC, L))
  batch = {"tokens": tokens, "weights": jnp.ones((N_MC, L))}
  est = objective.sequence_nelbo(model, batch, t, m_key, schedule, MASK)
  est = np.asarray(est, np.float64)
  return est.mean(), est.std() / np.sqrt(N_MC)


@pytest.mark.parametrize("name", sorted(schedules.SCHEDULES))
@pytest.mark.slow
def test_monte_carlo_nelbo_matches_exact_enumeration(model, name):
  schedule = schedules.get_schedule(name, eps=0.05)
  exact = exact_nelbo(model, X, schedule.max_mask_rate)
  mean, stderr = monte_carlo(model, X, schedule)
  assert abs(mean - exact) < 4 * stderr + 1e-3 * exact, (mean, stderr, exact)


@pytest.mark.slow
def test_enumeration_matches_the_any_order_form(model):
  """exact_nelbo at u_max = 1 is sum_k S_k / k, computed here the other way:
  the mean over orderings of the positions of the cost of revealing them one
  at a time, each -log p(x_i | the positions not yet revealed masked)."""
  # Bug caught: exact_nelbo (the truth the Monte Carlo tests lean on) off by a
  # mask-size weighting.
  x = np.asarray(X)[0]
  total = 0.0
  orders = list(itertools.permutations(range(L)))
  for order in orders:
    hidden = np.ones(L, bool)
    for i in order:  # Reveal i given everything revealed before it.
      z = jnp.asarray(np.where(hidden, MASK, x))[None]
      total += float(objective.token_nll(model(z, None), X)[0, i])
      hidden[i] = False
  assert exact_nelbo(model, X, 1.0) == pytest.approx(total / len(orders),
                                                     rel=1e-5)


@dataclasses.dataclass(frozen=True)
class RateEcho:
  """A stub model whose logit for token 0 is 10 x the masking rate it reads."""

  def __call__(self, z_BxL, mask_rate_B, segment_ids_BxL=None):
    logits = jnp.zeros((*z_BxL.shape, VOCAB))
    return logits.at[..., 0].set(10.0 * mask_rate_B[:, None])


@pytest.mark.slow
def test_time_form_feeds_the_model_the_masking_rate_not_t():
  # Bug caught: the model fed t (or 1 - t) instead of mask_rate(t), which
  # only changes the NELBO of a time-conditioned model slightly.
  schedule, t = schedules.Polynomial(power=3.0), jnp.array([0.5])
  batch = {"tokens": jnp.ones((1, 32), jnp.int32), "weights": jnp.ones((1, 32))}
  key = jax.random.PRNGKey(0)
  nelbo = objective.sequence_nelbo(RateEcho(), batch, t, key, schedule, MASK)
  _, masked = objective.mask_tokens(key, batch["tokens"], batch["weights"],
                                    schedule.mask_rate(t)[:, None], MASK)
  nll = objective.token_nll(RateEcho()(batch["tokens"], schedule.mask_rate(t)),
                            batch["tokens"])
  expected = schedule.weight(t) * jnp.sum(jnp.where(masked, nll, 0.0))
  assert masked.any()
  assert float(nelbo[0]) == pytest.approx(float(expected[0]), rel=1e-6)


def exact_time_conditioned_nelbo(model, x) -> float:
  """int_0^1 (1/u) E_{M ~ Binomial masks at rate u}[sum_M -log p(x_i | z, u)] du,
  by enumerating the masks at 64 Gauss-Legendre rates."""
  masks = np.array(list(itertools.product([0, 1], repeat=L)), bool)
  nodes, weights = np.polynomial.legendre.leggauss(64)
  u, w = (nodes + 1) / 2, weights / 2
  z = jnp.tile(jnp.where(masks, MASK, x), (len(u), 1))
  rates = jnp.repeat(jnp.asarray(u, jnp.float32), len(masks))
  nll = np.asarray(objective.token_nll(model(z, rates),
                                       jnp.broadcast_to(x, z.shape)), np.float64)
  loss = np.where(np.tile(masks, (len(u), 1)), nll, 0.0).sum(axis=1)
  sizes = np.tile(masks.sum(axis=1), len(u))
  prob = np.repeat(u, len(masks))**sizes * (1 - np.repeat(u, len(masks)))**(L - sizes)
  per_u = (prob * loss).reshape(len(u), len(masks)).sum(axis=1) / u
  return float(np.sum(w * per_u))


@pytest.mark.parametrize("time_conditioning", [False, True])
@pytest.mark.slow
def test_eval_estimates_are_unbiased_and_bounded(model, time_conditioning):
  """The any-order estimate of every row averages to the exact NELBO (for a
  time-conditioned model, with the masking rate drawn given k); each one is
  at most L times the largest per-position loss (finite variance)."""
  # Bugs caught: a wrong k-weight or rate distribution in any_order_nelbo; a
  # 1/t-style weight that gives the estimate a heavy tail.
  if time_conditioning:
    model = random_model(time_conditioning=True)
    exact = exact_time_conditioned_nelbo(model, X)
  else:
    exact = exact_nelbo(model, X, 1.0)
  batch = {"tokens": jnp.broadcast_to(X, (8, L)), "weights": jnp.ones((8, L))}
  nelbo_KxB = np.asarray(objective.eval_nelbo(
      model, batch, jax.random.PRNGKey(0), MASK, num_t_samples=4_000))
  assert nelbo_KxB.shape == (4_000, 8)
  stderr = nelbo_KxB.std() / np.sqrt(nelbo_KxB.size)
  assert abs(nelbo_KxB.mean() - exact) < 4 * stderr, (nelbo_KxB.mean(), exact)
  per_row_err = 4 * stderr * np.sqrt(8)
  assert np.all(np.abs(nelbo_KxB.mean(axis=0) - exact) < per_row_err)
  if not time_conditioning:
    masks = np.array(list(itertools.product([0, 1], repeat=L)), bool)
    nll = objective.token_nll(model(jnp.where(masks, MASK, X), None),
                              jnp.broadcast_to(X, masks.shape))
    assert nelbo_KxB.max() <= L * float(jnp.max(jnp.where(masks, nll, 0))) + 1e-4


def test_stratified_times_cover_every_stratum():
  t = np.asarray(objective.stratified_times(jax.random.PRNGKey(3), 16))
  assert np.all((t > 0) & (t <= 1))
  assert sorted(np.floor((1 - t) * 16).astype(int)) == list(range(16))


# Bugs caught: the loss divided by every position (B x L) or by rows instead
# of by the scored positions; a biased time draw (uniform or paired) or a
# complementary pair scored at the wrong weight.
@pytest.mark.parametrize("times,complementary", [
    ("stratified", False), ("uniform", False), ("stratified", True)])
@pytest.mark.slow
def test_train_loss_is_nats_per_scored_position(model, times, complementary):
  tokens = jnp.concatenate([X, jnp.zeros((1, 3), jnp.int32)], axis=1)
  segments = jnp.array([[1, 1, 1, 1, 0, 0, 0]])  # Padding out of sight.
  batch = {"tokens": jnp.broadcast_to(tokens, (N_MC, 7)),
           "weights": jnp.broadcast_to(segments > 0, (N_MC, 7)).astype(jnp.float32),
           "segment_ids": jnp.broadcast_to(segments, (N_MC, 7))}
  loss = objective.train_loss(model, batch, jax.random.PRNGKey(5),
                              schedules.Linear(), MASK, times=times,
                              complementary=complementary)
  assert float(loss) == pytest.approx(exact_nelbo(model, X, 1.0) / L, rel=0.03)


# Bug caught: the second row of a pair drawing its own uniforms (or u instead
# of 1 - u): its mask is then not the complement of the first's.
def test_complementary_masks_split_the_positions():
  tokens = jnp.zeros((8, 6), jnp.int32)
  weights = jnp.ones((8, 6)).at[:, 5].set(0.0)  # Position 5 is padding.
  t = jnp.array([0.1, 0.3, 0.5, 0.9])
  _, masked = objective.mask_tokens(jax.random.PRNGKey(2), tokens, weights,
                                    jnp.concatenate([t, 1.0 - t])[:, None],
                                    MASK, complementary=True)
  masked = np.asarray(masked)
  np.testing.assert_array_equal(masked[:4] ^ masked[4:], np.asarray(weights[:4]) > 0)


def test_padding_adds_nothing(model):
  tokens = jnp.concatenate([X, jnp.zeros((1, 3), jnp.int32)], axis=1)
  weights = jnp.array([[1, 1, 1, 1, 0, 0, 0]], jnp.float32)
  t = jnp.full((1,), 0.999)
  key = jax.random.PRNGKey(0)
  z, masked = objective.mask_tokens(key, tokens, weights, t[:, None], MASK)
  assert not np.any(np.asarray(masked)[:, 4:])
  assert np.all(np.asarray(z)[:, 4:] == 0)


@pytest.mark.slow
def test_packed_row_loss_is_the_sum_of_its_documents_losses(model):
  """With segment ids, a row holding two documents and padding has the NELBO
  of the documents evaluated one by one under the same t and mask."""
  doc_a, doc_b = jnp.array([[0, 2, 1]]), jnp.array([[2, 2, 0, 1]])
  tokens = jnp.concatenate([doc_a, doc_b, jnp.zeros((1, 2), jnp.int32)], axis=1)
  segments = jnp.array([[1, 1, 1, 2, 2, 2, 2, 0, 0]])
  batch = {"tokens": tokens, "weights": (segments > 0).astype(jnp.float32),
           "segment_ids": segments}
  schedule, t, key = schedules.Linear(), jnp.array([0.6]), jax.random.PRNGKey(4)
  packed = objective.sequence_nelbo(model, batch, t, key, schedule, MASK)
  z, masked = objective.mask_tokens(key, tokens, batch["weights"],
                                    schedule.mask_rate(t)[:, None], MASK)
  one_by_one = 0.0
  for lo, hi in [(0, 3), (3, 7)]:
    nll = objective.token_nll(model(z[:, lo:hi]), tokens[:, lo:hi])
    one_by_one += float(jnp.sum(jnp.where(masked[:, lo:hi], nll, 0.0)))
  assert masked[:, :3].any() and masked[:, 3:7].any()
  assert float(packed[0]) == pytest.approx(
      float(schedule.weight(t)[0]) * one_by_one, rel=1e-5)


@pytest.mark.slow
def test_batch_slices_give_the_same_loss_and_gradient():
  """Scoring the rows in 4 strided slices is a different computation of the
  same estimate: loss and gradient match one slice to float rounding, with
  time conditioning and segment ids riding along with their rows."""
  model = random_model(time_conditioning=True)
  graphdef, params = nnx.split(model)
  rng = np.random.default_rng(0)
  segments = jnp.asarray(rng.integers(0, 3, (8, 6)))
  batch = {"tokens": jnp.asarray(rng.integers(0, VOCAB, (8, 6)), jnp.int32),
           "weights": (segments > 0).astype(jnp.float32), "segment_ids": segments}

  def loss(params, slices):
    return objective.train_loss(nnx.merge(graphdef, params), batch,
                                jax.random.PRNGKey(3), schedules.Linear(), MASK,
                                slices)

  value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  value_1, grad_1 = value_and_grad(params, 1)
  value_4, grad_4 = value_and_grad(params, 4)
  assert float(value_4) == pytest.approx(float(value_1), rel=1e-6)
  assert float(value_1) > 0
  for g1, g4 in zip(jax.tree.leaves(grad_1), jax.tree.leaves(grad_4)):
    np.testing.assert_allclose(g4, g1, rtol=1e-5, atol=1e-6)
  # Evaluation and the sampler's logits slice their rows the same way.
  model = nnx.merge(graphdef, params)
  nelbo = jax.jit(lambda slices: objective.eval_nelbo(
      model, batch, jax.random.PRNGKey(4), MASK, 3, slices), static_argnums=0)
  np.testing.assert_allclose(nelbo(4), nelbo(1), rtol=1e-5)
  logits = lambda rows: model(rows["z"], rows["rate"])
  rows = {"z": batch["tokens"], "rate": jnp.linspace(0.1, 0.9, 8)}
  in_slices = jax.jit(lambda slices: batching.in_slices(logits, rows, slices),
                      static_argnums=0)
  np.testing.assert_allclose(in_slices(4), in_slices(1), rtol=1e-5, atol=1e-6)

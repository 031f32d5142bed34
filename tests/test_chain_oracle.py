"""The chain oracle against brute force: every document of a tiny chain."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_lm import chain_oracle, config_base, errors, quality
from diffusion_lm.data import markov, tokenizers
from diffusion_lm.diffusion import sampler_options, samplers

TOKENIZER = tokenizers.ByteTokenizer()
N, L = 5, 7  # Symbols a document, positions a row (EOS after the document).


def data_config(**markov_fields):
  data = config_base.base_config().data
  data.update(corpus="markov", packing="pad", seq_len=L)
  data.markov.update(alphabet_size=3, order=1, concentration=0.5,
                     document_length=N, min_document_length=0, seed=3)
  data.markov.update(markov_fields)
  return data


def brute_force_marginals(data, template):
  """p(x_i | template) by summing over all documents (None = masked)."""
  params = markov.checked_params(data.markov)
  docs = [d for d in itertools.product(range(3), repeat=N)
          if all(v is None or v == x for v, x in zip(template, d))]
  p_D = 2.0**-markov.document_log2_probs(params, docs)
  marginals = np.zeros((N, 3))
  for doc, p in zip(docs, p_D):
    marginals[np.arange(N), doc] += p
  return marginals / marginals.sum(-1, keepdims=True)


# Catches: a message that skips the evidence (forward only gives p(x_i | the
# left context), a backward that reads e_j instead of e_(j+1)), a transposed T,
# a uniform start instead of pi, symbols mapped to the wrong token ids, or
# (order 2) a first state that ignores its older symbol's evidence or
# marginals read off the wrong symbol of a state.
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.slow
def test_posterior_marginals_equal_brute_force(order):
  data = data_config(order=order)
  denoiser, chain = chain_oracle.from_config(data, TOKENIZER)
  templates = [[None] * N, [None, 2, None, None, 0], [1, None, None, None, None],
               [None, None, None, None, 2], [0, None, 1, None, None],
               [None, 1, None, 2, None]]
  ids = {None: TOKENIZER.mask_id, **{a: ord("a") + a for a in range(3)}}
  z_BxL = jnp.array([[ids[v] for v in tpl] + [TOKENIZER.mask_id] * (L - N)
                     for tpl in templates], jnp.int32)
  probs_BxLxV = np.asarray(jax.nn.softmax(denoiser(chain, z_BxL, None), axis=-1))
  for b, template in enumerate(templates):
    np.testing.assert_allclose(probs_BxLxV[b, :N, ord("a"):ord("a") + 3],
                               brute_force_marginals(data, template), atol=1e-5)
    np.testing.assert_allclose(probs_BxLxV[b, N:, TOKENIZER.eos_id], 1.0)


@pytest.mark.parametrize("field,value,pattern", [
    ("min_document_length", 2, "data.markov.min_document_length"),
    ("document_length", L, f"below data.seq_len={L}"),
])
def test_rows_it_cannot_score_are_refused(field, value, pattern):
  with pytest.raises(errors.UserError, match=pattern):
    chain_oracle.from_config(data_config(**{field: value}), TOKENIZER)


def sample_with_oracle(data, num_rows, **options):
  denoiser, chain = chain_oracle.from_config(data, TOKENIZER)
  init = np.full((num_rows, L), TOKENIZER.mask_id, np.int32)
  result = samplers.sample(
      denoiser, chain, jax.random.PRNGKey(0), init, mask_id=TOKENIZER.mask_id,
      eos_id=TOKENIZER.eos_id, reads_mask_rate=False,
      options=sampler_options.SamplerOptions(float64=True, **options))
  log2_q = quality.replay_log2_probs(denoiser, chain, result, TOKENIZER.mask_id)
  docs = np.asarray(result.tokens_BxL)[:, :N] - ord("a")
  return result, docs, log2_q


# Catches a replay that conditions a call's positions on each other (z with
# the call's own positions visible: log q = 0) or on later ones, or that
# masks positions committed before the call (log q of the marginals).
@pytest.mark.slow
def test_replay_of_first_hitting_with_the_exact_denoiser_is_the_chain():
  """One position per call in any order: q(x | order) = p(x) by the chain
  rule, for every document, not only on average."""
  data = data_config(order=2)
  result, docs, log2_q = sample_with_oracle(data, 64, sampler="first_hitting")
  assert len(np.unique(np.asarray(result.commit_step_BxL))) == L
  log2_p = -markov.document_log2_probs(data.markov, docs)
  np.testing.assert_allclose(log2_q, log2_p, rtol=0, atol=1e-9)
  assert np.std(log2_p) > 1.0  # Documents of very different probability.


# Catches a sampler whose one-call draws are not the product of the
# marginals, a replay that is not that product, or a KL of the wrong sign or
# base.
@pytest.mark.slow
def test_kl_of_committing_everything_at_once_matches_enumeration():
  """threshold 0.01 commits the whole row in its first call: q is the
  product of the marginals, and KL(q || p) can be summed over all 3^5
  documents."""
  data = data_config()
  _, docs, log2_q = sample_with_oracle(data, 4000, sampler="threshold",
                                       threshold=0.01)
  log2_marginals = np.log2(brute_force_marginals(data, [None] * N))
  np.testing.assert_allclose(
      log2_q, log2_marginals[np.arange(N), docs].sum(-1), rtol=0, atol=1e-9)
  every = np.array(list(itertools.product(range(3), repeat=N)))
  log2_q_all = log2_marginals[np.arange(N), every].sum(-1)
  exact_kl = np.sum(2.0**log2_q_all * (
      log2_q_all + markov.document_log2_probs(data.markov, every)))
  texts = [TOKENIZER.decode(row) for row in docs + ord("a")]
  texts = [t + quality.EOS_TEXT * (L - N) for t in texts]
  report = quality.chain_report(texts, data.markov, draws=5, log2_q=log2_q)
  assert exact_kl > 0.3
  assert abs(report["kl_bits"] - exact_kl) < 4 * report["kl_se_bits"]

"""The chain oracle against brute force: every document of a tiny chain."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_lm import chain_oracle, config_base, errors
from diffusion_lm.data import markov, tokenizers

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
  t = markov.transition_matrix(params)
  pi = markov.stationary_distribution(t, 1)
  marginals = np.zeros((N, 3))
  for doc in itertools.product(range(3), repeat=N):
    if all(v is None or v == d for v, d in zip(template, doc)):
      p = pi[doc[0]] * np.prod([t[a, b] for a, b in zip(doc, doc[1:])])
      marginals[np.arange(N), doc] += p
  return marginals / marginals.sum(-1, keepdims=True)


# Catches: a message that skips the evidence (forward only gives p(x_i | the
# left context), a backward that reads e_i instead of e_(i+1)), a transposed T,
# a uniform start instead of pi, or symbols mapped to the wrong token ids.
def test_posterior_marginals_equal_brute_force():
  data = data_config()
  denoiser, chain = chain_oracle.from_config(data, TOKENIZER)
  templates = [[None] * N, [None, 2, None, None, 0], [1, None, None, None, None],
               [None, None, None, None, 2], [0, None, 1, None, None]]
  ids = {None: TOKENIZER.mask_id, **{a: ord("a") + a for a in range(3)}}
  z_BxL = jnp.array([[ids[v] for v in tpl] + [TOKENIZER.mask_id] * (L - N)
                     for tpl in templates], jnp.int32)
  probs_BxLxV = np.asarray(jax.nn.softmax(denoiser(chain, z_BxL, None), axis=-1))
  for b, template in enumerate(templates):
    np.testing.assert_allclose(probs_BxLxV[b, :N, ord("a"):ord("a") + 3],
                               brute_force_marginals(data, template), atol=1e-5)
    np.testing.assert_allclose(probs_BxLxV[b, N:, TOKENIZER.eos_id], 1.0)


@pytest.mark.parametrize("field,value,pattern", [
    ("order", 2, "data.markov.order = 1, got 2"),
    ("min_document_length", 2, "data.markov.min_document_length"),
    ("document_length", L, f"below data.seq_len={L}"),
])
def test_rows_it_cannot_score_are_refused(field, value, pattern):
  with pytest.raises(errors.UserError, match=pattern):
    chain_oracle.from_config(data_config(**{field: value}), TOKENIZER)

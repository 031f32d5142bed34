"""The exact denoiser of a `markov` corpus: what a perfect network would output.

For a row z (some tokens visible, the rest [MASK]) it returns, at every
position, log p(x_i | the visible tokens) under the chain that wrote the
corpus, computed by forward-backward over the row: with evidence
e_i(a) = 1 where position i may hold symbol a (a [MASK], or that symbol),

  forward   f_0 = pi e_0,              f_i = (f_(i-1) T) e_i
  backward  b_(n-1) = 1,               b_i = T (e_(i+1) b_(i+1))
  posterior p(x_i = a | z) = f_i(a) b_i(a) / sum_a' f_i(a') b_i(a')

(each message renormalised, which leaves the ratio unchanged). A sampler run
with it in place of the network shows the sampler's own error, the model's
left out (benchmarks/sampling.py --oracle).

Rows as the `markov` recipe writes them: one document of exactly
`document_length` symbols from an order-1 chain, then EOS to the end of the
row (`data.packing='pad'`).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lm import errors
from diffusion_lm.data import markov

# Forbidden transitions (Dirichlet draws can be exactly 0) get this much
# probability, so that a row a parallel sampler made impossible still has a
# posterior: the chain's, given the near-impossible event.
_FLOOR = 1e-30


def _normalised(x, axis=-1):
  return x / jnp.maximum(jnp.sum(x, axis=axis, keepdims=True), jnp.finfo(x.dtype).tiny)


@dataclasses.dataclass(frozen=True)
class ChainDenoiser:
  """(chain, z_BxL, mask_rate_B) -> logits_BxLxV, the samplers' denoise_fn;
  `chain` holds the arrays (see `from_config`)."""

  document_length: int
  eos_id: int
  mask_id: int  # Also the number of tokens V.

  def __call__(self, chain, z_BxL, mask_rate_B):
    del mask_rate_B  # The truth does not depend on the time.
    return jax.vmap(lambda z_L: self._row(chain, z_L))(z_BxL)

  def _row(self, chain, z_L):
    n = self.document_length
    symbols_A, t_AxA = chain["symbol_ids"], chain["transitions"]
    doc_N = z_L[:n]
    e_NxA = jnp.where((doc_N == self.mask_id)[:, None], 1.0,
                      (doc_N[:, None] == symbols_A).astype(jnp.float32))

    def forward(f_A, e_A):
      f_A = _normalised((f_A @ t_AxA) * e_A)
      return f_A, f_A

    def backward(b_A, e_A):  # b_(i+1), e_(i+1) -> b_i
      b_A = _normalised(t_AxA @ (e_A * b_A))
      return b_A, b_A

    f0_A = _normalised(chain["initial"] * e_NxA[0])
    _, f_NxA = jax.lax.scan(forward, f0_A, e_NxA[1:])
    ones_A = jnp.ones_like(f0_A)
    _, b_NxA = jax.lax.scan(backward, ones_A, e_NxA[1:], reverse=True)
    posterior_NxA = _normalised(jnp.concatenate([f0_A[None], f_NxA])
                                * jnp.concatenate([b_NxA, ones_A[None]]))

    logits_LxV = jnp.full((z_L.shape[0], self.mask_id), -jnp.inf)
    logits_LxV = logits_LxV.at[:n, symbols_A].set(jnp.log(posterior_NxA))
    return logits_LxV.at[n:, self.eos_id].set(0.0)


def from_config(data_config, tokenizer) -> tuple[ChainDenoiser, dict]:
  """The denoiser and its `chain` arrays for a `markov` data config.

  Raises:
    errors.UserError: naming the data field when the rows are not one
      fixed-length order-1 document each, padded with EOS.
  """
  params = markov.checked_params(data_config.markov)
  n = params["document_length"]
  problems = [
      (data_config.corpus != "markov", "data.corpus", data_config.corpus,
       "'markov'"),
      (params["order"] != 1, "data.markov.order", params["order"], "1"),
      (params["min_document_length"] != 0, "data.markov.min_document_length",
       params["min_document_length"], "0 (documents of one fixed length)"),
      (data_config.packing != "pad", "data.packing", data_config.packing,
       "'pad' (one document a row)"),
      (n >= data_config.seq_len, "data.markov.document_length", n,
       f"below data.seq_len={data_config.seq_len} (room for the EOS)"),
  ]
  for bad, field, value, expected in problems:
    if bad:
      raise errors.UserError(
          f"the chain oracle needs {field} = {expected}, got {value!r}")
  transitions = markov.transition_matrix(params)
  symbol_ids = [tokenizer.encode(chr(ord("a") + a)) for a in range(len(transitions))]
  chain = {
      "transitions": jnp.asarray(np.maximum(transitions, _FLOOR), jnp.float32),
      "initial": jnp.asarray(markov.stationary_distribution(transitions, 1),
                             jnp.float32),
      "symbol_ids": jnp.asarray(np.concatenate(symbol_ids), jnp.int32),
  }
  return ChainDenoiser(n, tokenizer.eos_id, tokenizer.mask_id), chain

"""The exact denoiser of a `markov` corpus: what a perfect network would output.

For a row z (some tokens visible, the rest [MASK]) it returns, at every
position, log p(x_i | the visible tokens) under the chain that wrote the
corpus, computed by forward-backward over the row. An order-k chain is an
order-1 chain on k-tuples: state j is the k symbols ending at position
k - 1 + j, T the chain on them, pi its stationary distribution. With
evidence e_j(s) = 1 where the row allows state s (its newest symbol is
[MASK] there or that symbol; the first state's k symbols all),

  forward   f_0 = pi e_0,              f_j = (f_(j-1) T) e_j
  backward  b_last = 1,                b_j = T (e_(j+1) b_(j+1))
  posterior p(s_j = s | z) = f_j(s) b_j(s) / sum_s' f_j(s') b_j(s')

(each message renormalised, which leaves the ratio unchanged); a position's
marginal sums the posterior of the state that ends there (the first k - 1
positions: of the first state). A sampler run with it in place of the
network shows the sampler's own error, the model's left out
(benchmarks/sampling.py --oracle).

Rows as the `markov` recipe writes them: one document of exactly
`document_length` symbols, then EOS to the end of the row
(`data.packing='pad'`). The chain's arrays are float64 numpy: a jitted
caller computes in float32, or in float64 under jax.enable_x64.
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
  order: int
  eos_id: int
  mask_id: int  # Also the number of tokens V.

  def __call__(self, chain, z_BxL, mask_rate_B):
    del mask_rate_B  # The truth does not depend on the time.
    return jax.vmap(lambda z_L: self._row(chain, z_L))(z_BxL)

  def _row(self, chain, z_L):
    n, k = self.document_length, self.order
    t_MxM = jnp.asarray(chain["transitions"])  # float64 only under enable_x64.
    symbols_MxK = chain["state_symbols"]
    doc_N = z_L[:n]
    e_NxA = jnp.where((doc_N == self.mask_id)[:, None], 1.0,
                      doc_N[:, None] == chain["symbol_ids"][None]
                      ).astype(t_MxM.dtype)
    # The evidence of each state: its newest symbol's; the first state's, all k.
    e_JxM = e_NxA[k - 1:, symbols_MxK[:, -1]]
    e_JxM = e_JxM.at[0].set(jnp.prod(e_NxA[jnp.arange(k), symbols_MxK], axis=-1))

    def forward(f_M, e_M):
      f_M = _normalised((f_M @ t_MxM) * e_M)
      return f_M, f_M

    def backward(b_M, e_M):  # b_(j+1), e_(j+1) -> b_j
      b_M = _normalised(t_MxM @ (e_M * b_M))
      return b_M, b_M

    f0_M = _normalised(chain["initial"] * e_JxM[0])
    _, f_JxM = jax.lax.scan(forward, f0_M, e_JxM[1:])
    ones_M = jnp.ones_like(f0_M)
    _, b_JxM = jax.lax.scan(backward, ones_M, e_JxM[1:], reverse=True)
    posterior_JxM = _normalised(jnp.concatenate([f0_M[None], f_JxM])
                                * jnp.concatenate([b_JxM, ones_M[None]]))
    # Marginals: the first state's first k - 1 symbols, then each newest one.
    onehot_MxKxA = jax.nn.one_hot(symbols_MxK, len(chain["symbol_ids"]),
                                  dtype=t_MxM.dtype)
    posterior_NxA = jnp.concatenate([
        jnp.einsum("m,mka->ka", posterior_JxM[0], onehot_MxKxA[:, :k - 1]),
        posterior_JxM @ onehot_MxKxA[:, -1]])

    logits_LxV = jnp.full((z_L.shape[0], self.mask_id), -jnp.inf, t_MxM.dtype)
    logits_LxV = logits_LxV.at[:n, chain["symbol_ids"]].set(jnp.log(posterior_NxA))
    return logits_LxV.at[n:, self.eos_id].set(0.0)


def from_config(data_config, tokenizer) -> tuple[ChainDenoiser, dict]:
  """The denoiser and its `chain` arrays for a `markov` data config.

  Raises:
    errors.UserError: naming the data field when the rows are not one
      fixed-length document each, padded with EOS.
  """
  params = markov.checked_params(data_config.markov)
  n, k = params["document_length"], params["order"]
  problems = [
      (data_config.corpus != "markov", "data.corpus", data_config.corpus,
       "'markov'"),
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
  a = params["alphabet_size"]
  chain = {
      "transitions": markov.state_transitions(np.maximum(transitions, _FLOOR), k),
      "initial": markov.stationary_distribution(transitions, k),
      "state_symbols": markov.state_symbols(a, k),
      "symbol_ids": np.concatenate(
          [tokenizer.encode(chr(ord("a") + i)) for i in range(a)]).astype(np.int32),
  }
  return ChainDenoiser(n, k, tokenizer.eos_id, tokenizer.mask_id), chain

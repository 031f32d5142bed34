"""A synthetic corpus from a random order-k Markov chain, its entropy known exactly.

The chain (`data.markov`): `alphabet_size` symbols written as the letters
'a', 'b', ... (one byte-tokenizer token each); each symbol depends on the
`order` = k symbols before it. The transition rows P(. | s), one for each
k-tuple s, are drawn from Dirichlet(concentration) by numpy's
default_rng(seed). A document is n symbols whose first k come from the
chain's stationary distribution pi over k-tuples, so the process is
stationary: every window of k symbols is distributed as pi. Its length n is
`document_length`, or, when `min_document_length` > 0, uniform on
min_document_length .. document_length (drawn after the symbols, each
document the prefix of a full-length draw).

Exact entropies, in bits (`entropy_bits`, computed without preparing anything,
and stored with the parameters in the prepared dataset's metadata,
`builder.info.metadata`):

  entropy rate       H = -sum_s pi(s) sum_a P(a|s) log2 P(a|s)
  whole document     H(X_1..X_n) = H(X_1..X_k) + (n - k) H,  H(X_1..X_k) = H(pi)
  random length n    H(n, X_1..X_n) = log2(#lengths) + H(pi) + (E[n] - k) H

`document_log2_probs` gives the exact -log2 p(document, its length) of given
documents: the truth their bound is measured against.

Splits: documents are independent, so the first ~90% are train, the next ~5%
validation and the last ~5% test (at least one document each). The builder
config name encodes every parameter; the corpus is prepared on first use.
"""

from collections.abc import Mapping
import math

import numpy as np
import tensorflow_datasets as tfds

from diffusion_lm import errors
from diffusion_lm.data import builder_base

FIELDS = ("alphabet_size", "order", "concentration", "num_documents",
          "document_length", "min_document_length", "seed")
MAX_STATES = 4096  # alphabet_size**order: the stationary solve is dense.
_HELD_OUT_FRACTION = 0.05  # Of the documents, for each of validation and test.


def checked_params(params: Mapping) -> dict:
  """The chain's parameters (`data.markov`) as plain numbers, validated."""
  p = {field: (float if field == "concentration" else int)(params[field])
       for field in FIELDS}
  a, k = p["alphabet_size"], p["order"]
  problems = [
      (not 2 <= a <= 26, "alphabet_size", "between 2 and 26 (the letters a-z)"),
      (k < 1, "order", "at least 1"),
      (2 <= a <= 26 and k >= 1 and a**k > MAX_STATES, "order",
       f"such that alphabet_size**order <= {MAX_STATES} states"),
      (not p["concentration"] > 0, "concentration", "positive"),
      (p["num_documents"] < 3, "num_documents",
       "at least 3 (validation and test hold out one each)"),
      (p["document_length"] < k, "document_length", "at least order"),
      (p["min_document_length"] and not
       k <= p["min_document_length"] <= p["document_length"],
       "min_document_length", "0 (fixed length) or between order and "
       "document_length"),
      (p["seed"] < 0, "seed", "non-negative"),
  ]
  for bad, field, expected in problems:
    if bad:
      raise errors.UserError(
          f"data.markov.{field}={p[field]!r} must be {expected}")
  return p


def _draw_chain(p: dict) -> tuple[np.random.Generator, np.ndarray]:
  """The generator of seed `p["seed"]` and the transitions it draws first."""
  rng = np.random.default_rng(p["seed"])
  a, k = p["alphabet_size"], p["order"]
  return rng, rng.dirichlet(np.full(a, p["concentration"]), size=a**k)


def transition_matrix(params: Mapping) -> np.ndarray:
  """P [alphabet_size**order, alphabet_size]: row s is P(next | s), where the
  k-tuple s = (x_1, ..., x_k), oldest first, is the base-alphabet_size number
  x_1 x_2 ... x_k."""
  return _draw_chain(checked_params(params))[1]


def _next_states(states: np.ndarray, symbols: np.ndarray, a: int,
                 k: int) -> np.ndarray:
  """The k-tuple after `states` when `symbols` follow (oldest symbol dropped)."""
  return (states % a**(k - 1)) * a + symbols


def state_transitions(transitions: np.ndarray, order: int) -> np.ndarray:
  """T [a**k, a**k], the chain on k-tuples: T[s, s'] = P(s' follows s)."""
  num_states, a = transitions.shape
  states = np.arange(num_states)
  t = np.zeros((num_states, num_states))
  t[states[:, None], _next_states(states[:, None], np.arange(a), a, order)] = transitions
  return t


def state_symbols(alphabet_size: int, order: int) -> np.ndarray:
  """[a**k, k]: the symbols of each k-tuple state, oldest first."""
  powers = alphabet_size**np.arange(order - 1, -1, -1)
  return np.arange(alphabet_size**order)[:, None] // powers % alphabet_size


def stationary_distribution(transitions: np.ndarray, order: int) -> np.ndarray:
  """pi over k-tuples with pi T = pi, T the chain on k-tuples (dense solve)."""
  num_states = len(transitions)
  # (T^T - I) pi = 0, with the last equation replaced by sum(pi) = 1.
  system = state_transitions(transitions, order).T - np.eye(num_states)
  system[-1] = 1.0
  rhs = np.zeros(num_states)
  rhs[-1] = 1.0
  try:
    pi = np.linalg.solve(system, rhs)
  except np.linalg.LinAlgError:
    raise errors.UserError(
        "data.markov.concentration is so small that the chain has no unique "
        "stationary distribution; raise it") from None
  pi = np.clip(pi, 0.0, None)
  return pi / pi.sum()


def _entropy_terms(p: np.ndarray) -> np.ndarray:
  """-p log2 p elementwise, with 0 log 0 = 0."""
  return -p * np.log2(np.where(p > 0, p, 1.0))


def entropy_bits(params: Mapping) -> dict:
  """The exact entropies of the corpus, in bits.

  entropy_rate_bits: H, per symbol of the stationary chain;
  initial_entropy_bits: H(X_1..X_k), of a document's first k symbols;
  document_entropy_bits: H(X_1..X_n) = initial + (n - k) H.
  """
  p = checked_params(params)
  transitions = _draw_chain(p)[1]
  pi = stationary_distribution(transitions, p["order"])
  rate = float(pi @ _entropy_terms(transitions).sum(axis=1))
  initial = float(_entropy_terms(pi).sum())
  lengths = document_lengths(p)
  return {"entropy_rate_bits": rate, "initial_entropy_bits": initial,
          "document_entropy_bits": math.log2(len(lengths)) + initial
                                   + (np.mean(lengths) - p["order"]) * rate}


def document_lengths(p: dict) -> range:
  """The document lengths, equally likely."""
  return range(p["min_document_length"] or p["document_length"],
               p["document_length"] + 1)


def document_log2_probs(params: Mapping, docs) -> np.ndarray:
  """-log2 p(document and its length) under the chain, for each of `docs`
  (sequences of symbols 0 .. alphabet_size - 1, or the corpus's letters)."""
  p = checked_params(params)
  a, k = p["alphabet_size"], p["order"]
  transitions = _draw_chain(p)[1]
  log2_pi = np.log2(stationary_distribution(transitions, k))
  log2_t = np.log2(transitions)
  lengths = document_lengths(p)
  bits = []
  for doc in docs:
    x = np.frombuffer(doc, np.uint8) - ord("a") if isinstance(doc, bytes) else (
        np.asarray(doc, np.int64))
    if len(x) not in lengths or x.min() < 0 or x.max() >= a:
      raise ValueError(f"not a document of this corpus: {doc!r}")
    # The k-tuple ending at each position from k - 1 on, oldest symbol first.
    states = np.lib.stride_tricks.sliding_window_view(x, k) @ a**np.arange(k - 1, -1, -1)
    bits.append(math.log2(len(lengths)) - log2_pi[states[0]]
                - log2_t[states[:-1], x[k:]].sum())
  return np.array(bits)


def sample_documents(params: Mapping,
                     rng: np.random.Generator | None = None) -> np.ndarray:
  """All documents' symbols at full length, uint8 [num_documents,
  document_length] (0 = 'a'): drawn by the corpus's generator, which
  continues after drawing the transitions, or by `rng` (fresh documents of
  the same chain)."""
  p = checked_params(params)
  a, k = p["alphabet_size"], p["order"]
  num_docs, length = p["num_documents"], p["document_length"]
  corpus_rng, transitions = _draw_chain(p)
  rng = rng or corpus_rng
  pi = stationary_distribution(transitions, k)
  states = rng.choice(len(pi), size=num_docs, p=pi)
  docs = np.empty((num_docs, length), np.uint8)
  for i in range(k):  # The digits of the initial k-tuple, oldest first.
    docs[:, i] = states // a**(k - 1 - i) % a
  cdf = np.cumsum(transitions, axis=1)
  for t in range(k, length):
    u = rng.random(num_docs)
    symbols = np.minimum((u[:, None] >= cdf[states]).sum(axis=1), a - 1)
    docs[:, t] = symbols
    states = _next_states(states, symbols, a, k)
  return docs


def documents(params: Mapping) -> list[np.ndarray]:
  """All documents' symbols (uint8, 0 = 'a'), each of its own length."""
  p = checked_params(params)
  docs = sample_documents(p)
  if not p["min_document_length"]:
    return list(docs)
  rng = np.random.default_rng([p["seed"], 1])  # Independent of the symbols.
  lengths = document_lengths(p)
  n = rng.integers(lengths.start, lengths.stop, size=len(docs))
  return [doc[:length] for doc, length in zip(docs, n)]


def split_ranges(num_documents: int) -> dict[str, range]:
  """Document indices of each split: ~90% train, then ~5% validation, ~5% test."""
  held_out = max(1, round(_HELD_OUT_FRACTION * num_documents))
  val_start = num_documents - 2 * held_out
  return {"train": range(0, val_start),
          "validation": range(val_start, val_start + held_out),
          "test": range(val_start + held_out, num_documents)}


def _name_number(x) -> str:
  return repr(x).replace(".", "p").replace("-", "m").replace("+", "")


class MarkovConfig(tfds.core.BuilderConfig):
  """One chain and corpus size; the name encodes every parameter."""

  def __init__(self, params: Mapping):
    p = checked_params(params)
    super().__init__(
        name=(f"a{p['alphabet_size']}_k{p['order']}_"
              f"c{_name_number(p['concentration'])}_docs{p['num_documents']}_"
              f"len{p['document_length']}_seed{p['seed']}"
              + (f"_min{p['min_document_length']}"
                 if p["min_document_length"] else "")),
        description=f"Order-{p['order']} Markov chain: {p}")
    self.params = p
    self.entropy = entropy_bits(p)


class Markov(builder_base.DocumentBuilder, skip_registration=True):
  """Documents from a random order-k Markov chain of known entropy (no download)."""

  def _metadata(self):
    return tfds.core.MetadataDict(**self.builder_config.params,
                                  **self.builder_config.entropy)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    params = self.builder_config.params
    docs = documents(params)
    return {split: self._generate_examples(docs, indices)
            for split, indices in split_ranges(params["num_documents"]).items()}

  def _generate_examples(self, docs, indices):
    for i in indices:
      yield i, {"text": (docs[i] + np.uint8(ord("a"))).tobytes(),
                "path": f"doc{i:07d}"}

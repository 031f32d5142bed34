"""Judging samples: exactly against a known Markov chain, or model-free.

On the `markov` corpus the chain that wrote the data scores every sample
exactly: its -log2 p per symbol, and how far the samples' (k+1)-gram
frequencies lie from the chain's stationary (k+1)-gram distribution
pi(s) P(x | s) (total variation and KL). Both distances are biased upward by
the finite number of samples; `chain_report` gives, beside each, its floor:
the same distance for equally many fresh documents of the true chain. A
sampler is as good as the chain when it sits at the floor. (The likelihood
alone rewards greedy samplers: a chain's most likely documents are not
typical of it, so read it beside the distances.)
"""

import numpy as np

from diffusion_lm.data import markov

EOS_TEXT = "<|eos|>"


def documents(texts: list[str], params) -> tuple[list[np.ndarray], float]:
  """The chain's symbols (0 = 'a') of each text that is one valid document
  (letters of the alphabet, of an allowed length, then only EOS), and the
  fraction of texts that were."""
  p = markov.checked_params(params)
  lengths = range(p["min_document_length"] or p["document_length"],
                  p["document_length"] + 1)
  alphabet = {chr(ord("a") + i) for i in range(p["alphabet_size"])}
  docs = []
  for text in texts:
    doc, _, rest = text.partition(EOS_TEXT)
    if (len(doc) in lengths and set(doc) <= alphabet
        and not rest.replace(EOS_TEXT, "")):
      docs.append(np.frombuffer(doc.encode(), np.uint8) - ord("a"))
  return docs, len(docs) / max(len(texts), 1)


def ngram_counts(docs: list[np.ndarray], alphabet_size: int, n: int) -> np.ndarray:
  """Counts of every n-gram (as a base-alphabet_size number) in the docs."""
  counts = np.zeros(alphabet_size**n)
  for doc in docs:
    doc = np.asarray(doc, np.int64)
    if len(doc) >= n:
      codes = sum(doc[i:len(doc) - n + 1 + i] * alphabet_size**(n - 1 - i)
                  for i in range(n))
      np.add.at(counts, codes, 1)
  return counts


def true_ngrams(params) -> np.ndarray:
  """The stationary distribution of (order + 1)-grams: pi(s) P(x | s)."""
  transitions = markov.transition_matrix(params)
  pi = markov.stationary_distribution(transitions, params["order"])
  return (pi[:, None] * transitions).reshape(-1)


def total_variation(p, q) -> float:
  return 0.5 * float(np.abs(np.asarray(p) - np.asarray(q)).sum())


def kl_bits(p, q) -> float:
  """KL(p || q) in bits, with 0 log 0 = 0."""
  p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
  support = p > 0
  return float(np.sum(p[support] * np.log2(p[support] / q[support])))


def _distances(docs, params, truth) -> tuple[float, float]:
  counts = ngram_counts(docs, params["alphabet_size"], params["order"] + 1)
  empirical = counts / max(counts.sum(), 1)
  return total_variation(empirical, truth), kl_bits(empirical, truth)


def chain_report(texts: list[str], params, seed: int = 0) -> dict:
  """Exact quality of sampled texts under the chain (module docstring)."""
  params = markov.checked_params(params)
  docs, valid = documents(texts, params)
  report = {"valid_fraction": valid}
  if not docs:
    return report
  truth = true_ngrams(params)
  symbols = sum(len(d) for d in docs)
  report["chain_nll_bits_per_symbol"] = float(
      markov.document_log2_probs(params, docs).sum() / symbols)
  report["ngram_tv"], report["ngram_kl_bits"] = _distances(docs, params, truth)
  fresh = markov.sample_documents(dict(params, num_documents=len(docs)),
                                  rng=np.random.default_rng([seed, 7]))
  fresh = [d[:len(doc)] for d, doc in zip(fresh, docs)]  # The same lengths.
  report["ngram_tv_floor"], report["ngram_kl_bits_floor"] = _distances(
      fresh, params, truth)
  report["chain_entropy_rate_bits"] = markov.entropy_bits(params)[
      "entropy_rate_bits"]
  return report


def unigram_entropy_bits(tokens) -> float:
  """Entropy (bits) of the frequencies of the tokens in one sample: low for
  repetitive text, which games a perplexity."""
  _, counts = np.unique(np.asarray(tokens), return_counts=True)
  p = counts / counts.sum()
  return float(-(p * np.log2(p)).sum())

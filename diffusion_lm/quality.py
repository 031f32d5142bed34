"""Judging samples: exactly against a known Markov chain, or model-free.

On the `markov` corpus the chain that wrote the data scores samples exactly:

* KL(q || p) per document, by replay (`replay_log2_probs`): a sampler whose
  positions are chosen from logits that never read the drawn tokens
  (threshold, factor, entropy_bounded, top-k confidence) has one commit path
  per sample, so log q(x) is the sum, over its network calls, of
  log p_net(x_i | z) of the positions committed in that call, z the row with
  every position committed then or later masked. KL = mean(log q - log p)
  over the samples, with its standard error. Where the positions are drawn
  independently of the tokens (ancestral, first_hitting) the same sum is
  log q(x | order), and its mean is an upper bound (`kl_upper_bits`): the
  joint (x, order) is at least as far from p(x) q(order) as x is from p
  (0 for first_hitting with the exact denoiser, by the chain rule). remdm,
  which redraws committed tokens, has neither.
* Total variation of the skip-gram frequencies (x_i, x_(i+d)), d = 1..8,
  from the chain's stationary pairs pi P^d, and of the (k+1)-grams from
  pi(s) P(x | s); the mean -log2 p per symbol under the chain.

Each distance and the likelihood sit beside their floor: the same measure for
`draws` sets of as many fresh documents of the chain (median, 5th-95th
percentile, standard deviation), the noise a sampler as good as the chain
shows. (The likelihood alone rewards greedy samplers: a chain's most likely
documents are not typical of it, so read it beside the distances.)
"""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lm.data import markov

EOS_TEXT = "<|eos|>"
DISTANCES = range(1, 9)  # Of the skip-grams.

# Per sampler: what the replay's mean log2 q - log2 p is (module docstring).
_REPLAY = {"threshold": "kl_bits", "factor": "kl_bits",
           "entropy_bounded": "kl_bits", "confidence": "kl_bits",
           "ancestral": "kl_upper_bits", "first_hitting": "kl_upper_bits"}


def documents(texts: list[str], params) -> tuple[list[np.ndarray], np.ndarray]:
  """The chain's symbols (0 = 'a') of each text that is one valid document
  (letters of the alphabet, of an allowed length, then only EOS), and which
  texts were."""
  p = markov.checked_params(params)
  alphabet = {chr(ord("a") + i) for i in range(p["alphabet_size"])}
  docs, valid = [], []
  for text in texts:
    doc, _, rest = text.partition(EOS_TEXT)
    valid.append(len(doc) in markov.document_lengths(p) and set(doc) <= alphabet
                 and not rest.replace(EOS_TEXT, ""))
    if valid[-1]:
      docs.append(np.frombuffer(doc.encode(), np.uint8) - ord("a"))
  return docs, np.array(valid, bool)


def ngram_counts(docs: list[np.ndarray], alphabet_size: int, n: int) -> np.ndarray:
  """Counts of every n-gram (as a base-alphabet_size number) in the docs."""
  codes = [sum(np.asarray(doc[i:len(doc) - n + 1 + i], np.int64)
               * alphabet_size**(n - 1 - i) for i in range(n))
           for doc in docs if len(doc) >= n]
  return np.bincount(np.concatenate(codes or [[]]).astype(np.int64),
                     minlength=alphabet_size**n).astype(np.float64)


def skipgram_counts(docs: list[np.ndarray], alphabet_size: int, d: int) -> np.ndarray:
  """Counts of every pair (x_i, x_(i+d)), as x_i * alphabet_size + x_(i+d)."""
  codes = [np.asarray(doc[:-d], np.int64) * alphabet_size + doc[d:]
           for doc in docs if len(doc) > d]
  return np.bincount(np.concatenate(codes or [[]]).astype(np.int64),
                     minlength=alphabet_size**2).astype(np.float64)


def true_ngrams(params) -> np.ndarray:
  """The stationary distribution of (order + 1)-grams: pi(s) P(x | s)."""
  transitions = markov.transition_matrix(params)
  pi = markov.stationary_distribution(transitions, params["order"])
  return (pi[:, None] * transitions).reshape(-1)


def true_skipgrams(params, d: int) -> np.ndarray:
  """P(x_i = a, x_(i+d) = b) of the stationary chain, flattened as
  `skipgram_counts`: sum over k-tuple states s, s' ending in a, b of
  pi(s) T^d(s, s')."""
  p = markov.checked_params(params)
  a, k = p["alphabet_size"], p["order"]
  transitions = markov.transition_matrix(p)
  pi = markov.stationary_distribution(transitions, k)
  newest_MxA = np.eye(a)[markov.state_symbols(a, k)[:, -1]]
  t_d = np.linalg.matrix_power(markov.state_transitions(transitions, k), d)
  return (newest_MxA.T @ (pi[:, None] * t_d) @ newest_MxA).reshape(-1)


def total_variation(p, q) -> float:
  return 0.5 * float(np.abs(np.asarray(p) - np.asarray(q)).sum())


def _tv(counts, truth) -> float:
  return total_variation(counts / max(counts.sum(), 1), truth)


def measures(docs: list[np.ndarray], params) -> dict:
  """The distances and likelihood of a set of valid documents."""
  p = markov.checked_params(params)
  a = p["alphabet_size"]
  truths = _truths(json.dumps(p, sort_keys=True))
  return {
      "ngram_tv": _tv(ngram_counts(docs, a, p["order"] + 1), truths[0]),
      "skipgram_tv": [_tv(skipgram_counts(docs, a, d), truth)
                      for d, truth in zip(DISTANCES, truths[1:])],
      "chain_nll_bits_per_symbol": float(
          markov.document_log2_probs(p, docs).sum() / sum(map(len, docs))),
  }


@functools.lru_cache(maxsize=16)
def _truths(params_json: str) -> list[np.ndarray]:
  params = json.loads(params_json)
  return [true_ngrams(params)] + [true_skipgrams(params, d) for d in DISTANCES]


@functools.lru_cache(maxsize=16)
def _floors(params_json: str, n: int, draws: int, seed: int) -> dict:
  """measures() of `draws` sets of n fresh documents, each measure's values
  over the draws ([draws] or [draws, len(DISTANCES)])."""
  p = json.loads(params_json)
  values = []
  for draw in range(draws):
    rng = np.random.default_rng([seed, 7, draw])
    docs = markov.sample_documents(dict(p, num_documents=n), rng=rng)
    lengths = markov.document_lengths(p)
    cut = rng.integers(lengths.start, lengths.stop, size=n)
    values.append(measures([d[:m] for d, m in zip(docs, cut)], p))
  return {key: np.array([v[key] for v in values]) for key in values[0]}


def floors(params, n: int, draws: int = 100, seed: int = 0) -> dict:
  """Per measure: the median, 5th-95th percentile interval and standard
  deviation (per distance for the skip-grams) over `draws` sets of n fresh
  documents of the chain."""
  params = markov.checked_params(params)
  values = _floors(json.dumps(params, sort_keys=True), n, draws, seed)
  out = {}
  for key, v in values.items():
    out[f"{key}_floor"] = np.median(v, axis=0).tolist()
    out[f"{key}_floor_interval"] = np.percentile(v, [5, 95], axis=0).T.tolist()
    out[f"{key}_floor_sd"] = np.std(v, axis=0, ddof=1).tolist()
  return out


def replay_kind(options) -> str | None:
  """The name of what the replay measures for these options (a
  sampler_options.SamplerOptions; module docstring), or None when it measures nothing exact: remdm,
  confidence drawing its positions (order_temperature), EOS-filled rows
  (stop_at_eos), or tokens drawn at a temperature or top_p."""
  if (options.temperature != 1 or options.top_p < 1 or options.stop_at_eos
      or (options.sampler == "confidence" and options.order_temperature > 0)):
    return None
  return _REPLAY.get(options.sampler)


@functools.partial(jax.jit, static_argnames=("denoise_fn", "mask_id"))
def _replay_call(denoise_fn, params, tokens_BxL, commit_step_BxL, step, mask_id):
  """log2 p_net(x_i | z) summed over the positions committed at `step`."""
  z_BxL = jnp.where(commit_step_BxL >= step, mask_id, tokens_BxL)
  # NaN masking rates: a denoiser that reads them answers NaN, never a
  # silently wrong number (the loop's rates are not recorded).
  rate_B = jnp.full(tokens_BxL.shape[:1], jnp.nan)
  logits_BxLxV = denoise_fn(params, z_BxL, rate_B).astype(jnp.float64)
  log_p_BxL = jnp.take_along_axis(jax.nn.log_softmax(logits_BxLxV),
                                  tokens_BxL[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(commit_step_BxL == step, log_p_BxL, 0.0), -1) / math.log(2)


def replay_log2_probs(denoise_fn, params, result, mask_id: int) -> np.ndarray:
  """log2 q of each row of a samplers.SampleResult along its commit path
  (result.commit_step_BxL: positions committed at one loop iteration were
  drawn together, from the logits of the row with every position committed
  then or later masked; an iteration that made no call reused logits of that
  same row). In float64 at temperature 1, with a denoiser that does not
  read the masking rate."""
  tokens_BxL = np.asarray(result.tokens_BxL)
  commit_step_BxL = np.asarray(result.commit_step_BxL)
  log2_q_B = np.zeros(len(tokens_BxL))
  with jax.enable_x64(True):
    for step in np.unique(commit_step_BxL[commit_step_BxL >= 0]):
      log2_q_B += np.asarray(_replay_call(denoise_fn, params, tokens_BxL,
                                          commit_step_BxL, step, mask_id))
  return log2_q_B


def chain_report(texts: list[str], params, seed: int = 0, draws: int = 100,
                 log2_q=None, kl_name: str = "kl_bits") -> dict:
  """Exact quality of sampled texts under the chain (module docstring), with
  floors for as many documents as the texts. With log2_q (the replay's, one
  per text), also kl_name: mean log2 q - log2 p over the valid documents
  (texts the chain cannot write make KL(q || p) infinite: valid_fraction),
  and its standard error."""
  params = markov.checked_params(params)
  docs, valid = documents(texts, params)
  report = {"valid_fraction": float(valid.mean()) if len(texts) else 0.0}
  if not docs:
    return report
  report.update(measures(docs, params))
  report.update(floors(params, len(texts), draws, seed))
  if log2_q is not None:
    excess = np.asarray(log2_q)[valid] + markov.document_log2_probs(params, docs)
    report[kl_name] = float(excess.mean())
    report["kl_se_bits"] = float(excess.std(ddof=1) / math.sqrt(len(excess))
                                 if len(excess) > 1 else math.inf)
  report["chain_entropy_rate_bits"] = markov.entropy_bits(params)[
      "entropy_rate_bits"]
  return report


def unigram_entropy_bits(tokens) -> float:
  """Entropy (bits) of the frequencies of the tokens in one sample: low for
  repetitive text, which games a perplexity."""
  _, counts = np.unique(np.asarray(tokens), return_counts=True)
  p = counts / counts.sum()
  return float(-(p * np.log2(p)).sum())

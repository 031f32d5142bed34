"""diffusion_lm.quality: judging samples against a known chain, on inputs
whose answers are known."""

import numpy as np
import pytest

from diffusion_lm import quality
from diffusion_lm.data import markov

CHAIN = dict(alphabet_size=3, order=1, concentration=0.5, num_documents=400,
             document_length=40, min_document_length=0, seed=1)


def as_text(doc) -> str:
  return bytes(np.asarray(doc, np.uint8) + ord("a")).decode() + quality.EOS_TEXT


def test_documents_keep_only_whole_valid_ones():
  # Bugs caught: texts with a wrong length, a letter outside the alphabet
  # or tokens after the EOS counted as documents.
  params = dict(CHAIN, document_length=3)
  texts = ["abc<|eos|>", "abc<|eos|><|eos|>", "abd<|eos|>", "ab<|eos|>",
           "abc<|eos|>a", "cab"]
  docs, valid = quality.documents(texts, params)
  assert valid.tolist() == [True, True, False, False, False, True]
  assert [d.tolist() for d in docs] == [[0, 1, 2], [0, 1, 2], [2, 0, 1]]


def test_ngram_and_skipgram_counts_by_hand():
  # "abab" has pairs ab, ba, ab: codes 1, 2, 1 over a 2-letter alphabet; at
  # distance 2, aa and bb; at 3, ab.
  doc = np.array([0, 1, 0, 1], np.uint8)
  np.testing.assert_array_equal(quality.ngram_counts([doc], 2, 2), [0, 2, 1, 0])
  np.testing.assert_array_equal(quality.skipgram_counts([doc], 2, 1), [0, 2, 1, 0])
  np.testing.assert_array_equal(quality.skipgram_counts([doc], 2, 2), [1, 0, 0, 1])
  np.testing.assert_array_equal(quality.skipgram_counts([doc, doc[:3]], 2, 3),
                                [0, 1, 0, 0])
  assert quality.total_variation([0.5, 0.5], [1.0, 0.0]) == pytest.approx(0.5)


def test_true_ngrams_are_the_chains_pair_frequencies():
  # Bug caught: pi and P(x | s) combined in the wrong order or axis.
  truth = quality.true_ngrams(CHAIN)
  assert truth.sum() == pytest.approx(1.0)
  docs = markov.sample_documents(dict(CHAIN, num_documents=4000),
                                 rng=np.random.default_rng(3))
  counts = quality.ngram_counts(list(docs), 3, 2)
  assert quality.total_variation(counts / counts.sum(), truth) < 0.01


@pytest.mark.parametrize("order", [1, 2])
def test_true_skipgrams_are_the_chains_pair_frequencies_at_each_distance(order):
  # Bugs caught: T^d at the wrong power (every d but 1 off), pairs read off
  # the wrong symbol of an order-2 state, or pi and T^d on the wrong axes.
  params = dict(CHAIN, order=order)
  docs = list(markov.sample_documents(dict(params, num_documents=4000),
                                      rng=np.random.default_rng(4)))
  if order == 1:  # Pairs at distance 1 are the chain's 2-grams.
    np.testing.assert_allclose(quality.true_skipgrams(params, 1),
                               quality.true_ngrams(params))
  for d in quality.DISTANCES:
    truth = quality.true_skipgrams(params, d)
    counts = quality.skipgram_counts(docs, 3, d)
    assert truth.sum() == pytest.approx(1.0)
    assert quality.total_variation(counts / counts.sum(), truth) < 0.015, d
  # The dependence fades with distance: far pairs tend to pi x pi.
  pi = quality.true_skipgrams(params, 8).reshape(3, 3).sum(-1)
  assert quality.total_variation(quality.true_skipgrams(params, 8),
                                 np.outer(pi, pi).reshape(-1)) < (
      quality.total_variation(quality.true_skipgrams(params, 1),
                              np.outer(pi, pi).reshape(-1)))


def test_true_chain_samples_sit_in_the_floor_and_noise_far_above():
  """Fresh documents of the chain lie inside the floor's interval; uniform
  letters are many of its standard deviations away, and their likelihood is
  worse."""
  # Bugs caught: a floor computed from the samples themselves (zero width),
  # floors of the wrong size or a report that cannot tell the chain from
  # noise.
  true_docs = markov.sample_documents(CHAIN, rng=np.random.default_rng(5))
  report = quality.chain_report([as_text(d) for d in true_docs], CHAIN, draws=40)
  assert report["valid_fraction"] == 1.0
  for key in ("ngram_tv", "chain_nll_bits_per_symbol"):
    low, high = report[f"{key}_floor_interval"]
    assert low <= report[key] <= high and high - low > report[f"{key}_floor_sd"]
  within = [low <= tv <= high for tv, (low, high) in zip(
      report["skipgram_tv"], report["skipgram_tv_floor_interval"])]
  assert sum(within) >= 6  # 90% intervals: 8 distances, a few may fall out.
  assert report["chain_nll_bits_per_symbol_floor"] == pytest.approx(
      markov.entropy_bits(CHAIN)["entropy_rate_bits"], abs=0.05)
  noise = np.random.default_rng(6).integers(0, 3, (400, 40))
  bad = quality.chain_report([as_text(d) for d in noise], CHAIN, draws=40)
  for tv, floor, sd in zip(bad["skipgram_tv"], bad["skipgram_tv_floor"],
                           bad["skipgram_tv_floor_sd"]):
    assert tv > floor + 5 * sd
  assert bad["chain_nll_bits_per_symbol"] > report["chain_nll_bits_per_symbol"] + 0.2


def test_unigram_entropy():
  assert quality.unigram_entropy_bits([1, 1, 2, 2]) == pytest.approx(1.0)
  assert quality.unigram_entropy_bits([7, 7, 7]) == 0.0

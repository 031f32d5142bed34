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
  assert valid == pytest.approx(3 / 6)
  assert [d.tolist() for d in docs] == [[0, 1, 2], [0, 1, 2], [2, 0, 1]]


def test_ngram_counts_and_distances_by_hand():
  # "abab" has pairs ab, ba, ab: codes 1, 2, 1 over a 2-letter alphabet.
  counts = quality.ngram_counts([np.array([0, 1, 0, 1])], 2, 2)
  np.testing.assert_array_equal(counts, [0, 2, 1, 0])
  assert quality.total_variation([0.5, 0.5], [1.0, 0.0]) == pytest.approx(0.5)
  assert quality.kl_bits([0.5, 0.5, 0.0], [0.25, 0.25, 0.5]) == pytest.approx(1.0)


def test_true_ngrams_are_the_chains_pair_frequencies():
  # Bug caught: pi and P(x | s) combined in the wrong order or axis.
  truth = quality.true_ngrams(CHAIN)
  assert truth.sum() == pytest.approx(1.0)
  docs = markov.sample_documents(dict(CHAIN, num_documents=4000),
                                 rng=np.random.default_rng(3))
  counts = quality.ngram_counts(list(docs), 3, 2)
  assert quality.total_variation(counts / counts.sum(), truth) < 0.01


def test_true_chain_samples_sit_at_the_floor_and_noise_far_above():
  """Fresh documents of the chain are as far from it as the floor says;
  uniform letters are not, and their likelihood is worse."""
  # Bugs caught: a floor computed from the samples themselves, or a report
  # that cannot tell the chain from noise.
  true_docs = markov.sample_documents(CHAIN, rng=np.random.default_rng(5))
  report = quality.chain_report([as_text(d) for d in true_docs], CHAIN)
  assert report["valid_fraction"] == 1.0
  assert abs(report["ngram_tv"] - report["ngram_tv_floor"]) < 0.02
  assert report["chain_nll_bits_per_symbol"] == pytest.approx(
      markov.entropy_bits(CHAIN)["entropy_rate_bits"], abs=0.05)
  noise = np.random.default_rng(6).integers(0, 3, (400, 40))
  bad = quality.chain_report([as_text(d) for d in noise], CHAIN)
  assert bad["ngram_tv"] > report["ngram_tv_floor"] + 0.1
  assert bad["chain_nll_bits_per_symbol"] > report["chain_nll_bits_per_symbol"] + 0.2


def test_unigram_entropy():
  assert quality.unigram_entropy_bits([1, 1, 2, 2]) == pytest.approx(1.0)
  assert quality.unigram_entropy_bits([7, 7, 7]) == 0.0

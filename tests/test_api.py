"""The Python API on the reference run's checkpoint: sample, infill, score."""

import numpy as np
import pytest

import diffusion_lm
from diffusion_lm import errors


@pytest.fixture(scope="module")
def lm(reference):
  return diffusion_lm.load(reference[0])


def test_load_brings_config_tokenizer_and_step(lm):
  assert lm.step == 40
  assert lm.config.data.seq_len == 64
  assert lm.tokenizer.to_json() == {"kind": "byte"}


def test_generate_fills_exactly_the_masked_positions(lm):
  mask = lm.tokenizer.mask_id
  template = np.array([[65, mask, mask, 66, mask, 67]] * 3, np.int32)
  tokens, calls = lm.generate(template, steps=4, seed=1)
  tokens = np.asarray(tokens)
  np.testing.assert_array_equal(tokens[:, [0, 3, 5]], template[:, [0, 3, 5]])
  assert np.all(tokens < lm.tokenizer.vocab_size)  # No [MASK] left or made.
  assert 1 <= int(calls) <= 4


def test_sample_and_infill_keep_their_text(lm):
  for text in lm.sample(2, length=16, prompt="def ", steps=4):
    assert text.startswith("def ")
  for text in lm.infill(["alpha ", 4, " beta"], num_samples=2, steps=4):
    assert text.startswith("alpha ") and text.endswith(" beta")


def test_same_seed_same_samples(lm):
  assert lm.sample(2, length=16, steps=4, seed=3) == lm.sample(2, length=16, steps=4, seed=3)
  assert lm.sample(2, length=16, steps=4, seed=3) != lm.sample(2, length=16, steps=4, seed=4)


def test_score_prefers_corpus_like_text_to_noise(lm):
  rng = np.random.default_rng(0)
  noise = bytes(rng.integers(33, 127, 40).tolist()).decode()
  familiar = "alpha beta gamma\ndef return import\n"[:40]
  familiar_bits, noise_bits = lm.score([familiar, noise], num_t_samples=32)
  assert 0 < familiar_bits < noise_bits


def test_bad_requests_name_the_problem(lm):
  with pytest.raises(errors.UserError, match="prompt is 20 tokens but the sample length is 16"):
    lm.sample(1, length=16, prompt="x" * 20)
  with pytest.raises(errors.UserError, match="integer gap"):
    lm.infill(["no gaps"])
  with pytest.raises(TypeError, match="temp"):
    lm.sample(1, length=16, temp=0.5)

"""The Python API on the reference run's checkpoint: sample, infill, score."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import diffusion_lm
from diffusion_lm import errors
from diffusion_lm.diffusion import objective


pytestmark = pytest.mark.slow  # Every test reads a trained model.


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
  result = lm.generate(template, steps=4, seed=1)
  tokens = np.asarray(result.tokens_BxL)
  np.testing.assert_array_equal(tokens[:, [0, 3, 5]], template[:, [0, 3, 5]])
  assert np.all(tokens < lm.tokenizer.vocab_size)  # No [MASK] left or made.
  assert np.all((1 <= result.calls_B) & (result.calls_B <= 4))


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


def test_score_of_a_wrap_model_is_the_bound_at_the_texts_length(lm):
  """A wrap-trained model scores text + EOS on its own (the rest of the row
  out of sight): the same bound as the sequence alone at its length."""
  # Bugs caught: the filler visible to the text, or EOS left out.
  text = "def alpha(self):\n  return beta\n"
  (bits,) = lm.score([text], num_t_samples=1024)
  ids = np.append(lm.tokenizer.encode(text), lm.tokenizer.eos_id)[None]
  batch = {"tokens": jnp.asarray(ids), "weights": jnp.ones(ids.shape)}
  model = nnx.merge(lm.graphdef, lm.params)
  alone = np.asarray(objective.eval_nelbo(model, batch, jax.random.PRNGKey(9),
                                          lm.tokenizer.mask_id, 1024))[:, 0]
  alone_bits = alone.mean() / np.log(2)
  stderr = alone.std() / np.sqrt(len(alone)) / np.log(2)
  assert abs(bits - alone_bits) < 4 * np.sqrt(2) * stderr, (bits, alone_bits)
  compiled = lm._eval_step(1024)
  lm.score([text, "x", "y" * 20], num_t_samples=1024)
  assert compiled._cache_size() == 1  # Compiled once, whatever the texts.


def test_bad_requests_name_the_problem(lm):
  with pytest.raises(errors.UserError, match="prompt is 20 tokens but the sample length is 16"):
    lm.sample(1, length=16, prompt="x" * 20)
  with pytest.raises(errors.UserError, match="integer gap"):
    lm.infill(["no gaps"])
  with pytest.raises(errors.UserError, match="unknown sampling options \\['temp'\\]"):
    lm.sample(1, length=16, temp=0.5)
  with pytest.raises(errors.UserError, match="does not read threshold"):
    lm.sample(1, length=16, sampler="ancestral", threshold=0.5)
  with pytest.raises(errors.UserError, match="a list of texts"):
    lm.score("one text")
  with pytest.raises(errors.UserError, match="data.seq_len=64"):
    lm.score(["x" * 64])

"""The autoregressive twin: causal mask, KV-cache decoding, exact likelihood."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import diffusion_lm
from diffusion_lm import autoregressive, errors, parallel, train_step
from diffusion_lm.data import markov, pipeline, tokenizers
from diffusion_lm.diffusion import sampler_options

from conftest import TINY_MODEL, randomised
from test_markov_bound import CHAIN, train_on_markov

CFG = dataclasses.replace(TINY_MODEL, objective="autoregressive",
                          local_width=2)
BOS = 11


@pytest.fixture(scope="module")
def model():
  """A causal model (mixing 2 tokens before each into its input) with every
  parameter random (the head starts at zero)."""
  return randomised(CFG, seed=0, scale=0.5)


TOKENS = jnp.array([[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]])


@pytest.mark.slow
def test_causal_mask_leaks_nothing(model):
  # Bug caught: a bidirectional (or off-by-one) mask in the causal model.
  inputs = autoregressive.shifted_inputs(TOKENS, BOS)
  for j in range(8):
    changed = inputs.at[:, j].set((inputs[:, j] + 1) % 11)
    before, after = np.asarray(model(inputs)), np.asarray(model(changed))
    np.testing.assert_array_equal(before[:, :j], after[:, :j])
    assert not np.allclose(before[:, j:], after[:, j:])


@pytest.mark.slow
def test_cached_decoding_gives_the_full_forwards_logits(model):
  # Bugs caught: keys written at the wrong cache position, rotary positions
  # off by the prompt's length, a mask that sees unwritten cache entries.
  inputs = autoregressive.shifted_inputs(TOKENS, BOS)
  full = np.asarray(model(inputs))
  cache = model.init_cache(2, 8)
  prefill, cache = model.decode(inputs[:, :3], cache, 0)  # The prompt at once.
  pieces = [np.asarray(prefill)]
  for i in range(3, 8):
    logits, cache = model.decode(inputs[:, i:i + 1], cache, i)
    pieces.append(np.asarray(logits))
  np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-5)


def greedy_by_full_forward(model, prompt, length):
  """Argmax continuation, recomputing the whole causal forward per token."""
  tokens = list(prompt)
  while len(tokens) < length:
    inputs = autoregressive.shifted_inputs(
        jnp.array([tokens + [0] * (length - len(tokens))]), BOS)
    tokens.append(int(jnp.argmax(model(inputs)[0, len(tokens)])))
  return tokens


@pytest.mark.slow
def test_generate_at_temperature_zero_is_the_greedy_continuation(model):
  # Bug caught: the loop feeding back the wrong token or position.
  graphdef, params = nnx.split(model)
  init = np.array([[3, 1, 4] + [BOS] * 5] * 2, np.int32)
  options = sampler_options.SamplerOptions(temperature=0.0)
  result = autoregressive.generate(graphdef, params, jax.random.PRNGKey(0), init,
                                   bos_id=BOS, eos_id=None, options=options)
  expected = greedy_by_full_forward(model, [3, 1, 4], 8)
  np.testing.assert_array_equal(result.tokens_BxL, [expected] * 2)
  np.testing.assert_array_equal(result.calls_B, [5, 5])  # Prefill + 4 steps.
  np.testing.assert_array_equal(result.commit_step_BxL[0],
                                [-1, -1, -1, 0, 1, 2, 3, 4])


def test_rows_with_longer_prompts_read_them_on(model):
  # Bug caught: a row's longer prompt overwritten by drawn tokens, or drawn
  # from logits that did not see it.
  graphdef, params = nnx.split(model)
  init = np.array([[3, 1, 4, 1] + [BOS] * 4, [2, 7] + [BOS] * 6], np.int32)
  result = autoregressive.generate(
      graphdef, params, jax.random.PRNGKey(0), init, bos_id=BOS, eos_id=None,
      options=sampler_options.SamplerOptions(temperature=0.0))
  np.testing.assert_array_equal(result.tokens_BxL, [
      greedy_by_full_forward(model, [3, 1, 4, 1], 8),
      greedy_by_full_forward(model, [2, 7], 8)])
  np.testing.assert_array_equal(result.commit_step_BxL[0][:4], -1)


def test_rows_stop_at_their_eos(model):
  # Bug caught: a finished row that goes on calling or writing tokens.
  graphdef, params = nnx.split(model)
  greedy = greedy_by_full_forward(model, [3], 8)
  eos = greedy[2]  # Make the greedy row's third token its EOS.
  init = np.array([[3] + [BOS] * 7], np.int32)
  options = sampler_options.SamplerOptions(temperature=0.0, stop_at_eos=True)
  result = autoregressive.generate(graphdef, params, jax.random.PRNGKey(0), init,
                                   bos_id=BOS, eos_id=eos, options=options)
  assert int(result.length_B[0]) == 2
  assert np.all(np.asarray(result.tokens_BxL)[0, 2:] == eos)
  assert int(result.calls_B[0]) == 2  # Prefill, then the step that drew x_1.


def test_gaps_and_other_sampler_options_are_refused():
  with pytest.raises(errors.UserError, match="cannot fill a gap"):
    autoregressive.prompt_length(np.array([[BOS, 3, BOS]]), BOS)
  with pytest.raises(errors.UserError, match="does not read steps"):
    autoregressive.check_options({"steps": 8, "temperature": None})


@pytest.mark.slow
def test_likelihood_on_a_markov_corpus_is_exact_and_near_the_truth(
    tiny_config, tmp_path):
  """Exact -log p of held-out documents: never far below what the chain
  gives them (only chance), and close above it once trained."""
  # Bugs caught: a target shift that lets the model see the token it
  # predicts (far below the truth), or a model that learned nothing.
  tiny_config.model.objective = "autoregressive"
  result, docs = train_on_markov(tiny_config, CHAIN, tmp_path)
  truth = markov.document_log2_probs(CHAIN, docs).sum() / sum(map(len, docs))
  assert result["bits_per_byte_stderr"] == 0.0
  assert truth - 0.02 < result["bits_per_byte"] < truth + 0.05, (
      result["bits_per_byte"], truth)

  lm = diffusion_lm.load(str(tmp_path))
  assert isinstance(lm, diffusion_lm.api.AutoregressiveLM)
  texts = lm.sample(4, prompt="ab", seed=1)
  assert all(t.startswith("ab") for t in texts)
  text = docs[0].decode()
  a, b = lm.score([text], num_t_samples=1), lm.score([text], num_t_samples=7)
  assert a == b  # Exact: nothing to average.
  with pytest.raises(errors.UserError, match="infill needs a diffusion model"):
    lm.infill(["a", 3, "b"])


@pytest.mark.slow
def test_ar_variant_trains_on_the_same_batches(tiny_config):
  # Bug caught: the twin reading other data or another token budget.
  tiny_config.model.objective = "autoregressive"
  mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1}),
                            devices=jax.devices()[:1])
  tokenizer = tokenizers.ByteTokenizer()
  training = train_step.build(tiny_config, tokenizer, mesh)
  batch = next(iter(pipeline.train_dataset(tiny_config, tokenizer)))
  _, metrics = training.step(training.init(), parallel.global_batch(batch, mesh))
  # A fresh model predicts uniformly: the next-token loss is log(257).
  assert float(metrics["train/loss"]) == pytest.approx(np.log(257), rel=1e-4)

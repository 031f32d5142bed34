"""Block diffusion: the two-stream pass, its bound, and the cached sampler."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_MODEL, random_params
from test_markov_bound import CHAIN, train_on_markov

import diffusion_lm
from diffusion_lm import config_base, errors, models, validation
from diffusion_lm.data import markov
from diffusion_lm.diffusion import (objective, sampler_options, samplers,
                                    schedules)

MASK = TINY_MODEL.vocab_size  # 11
L, W = 12, 4  # Three blocks of four.
BLOCKS = dataclasses.replace(TINY_MODEL, objective="block_diffusion",
                             block_size=W, local_width=2)
PLAIN = dataclasses.replace(TINY_MODEL, local_width=2)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, MASK, (3, L)),
                     jnp.int32)
BATCH = {"tokens": TOKENS, "weights": jnp.ones((3, L), jnp.float32)}


def build(cfg, seed=0, scale=0.3):
  graphdef, _ = models.abstract_model(cfg)
  return graphdef, random_params(cfg, seed, scale)


def model_of(cfg, seed=0):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  return nnx.merge(*build(cfg, seed))


# Catches: a two-stream pass whose noisy stream reads the clean one where it
# must not (or misses its own block), block times drawn differently from the
# row's time, or per-block sums and weights that do not reduce to the plain
# NELBO when the row is one block.
def test_one_block_is_plain_diffusion():
  whole = model_of(dataclasses.replace(BLOCKS, block_size=L))
  plain = model_of(PLAIN)  # The same parameters: the trees are equal.
  key = jax.random.PRNGKey(3)
  linear = schedules.Linear()
  got = objective.train_loss(whole, BATCH, key, linear, MASK, block_size=L)
  want = objective.train_loss(plain, BATCH, key, linear, MASK)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  got = objective.eval_nelbo(whole, BATCH, key, MASK, 3, block_size=L)
  want = objective.eval_nelbo(plain, BATCH, key, MASK, 3)
  np.testing.assert_allclose(got, want, rtol=1e-5)


# Catches: the noisy stream reading its own block's (or a later block's)
# clean tokens, the local mixing reaching into them, or the noisy stream of
# other blocks leaking in; and a clean stream that is not read at all.
def test_a_block_sees_only_its_noisy_self_and_the_clean_blocks_before_it():
  model = model_of(BLOCKS)
  z = TOKENS.at[:, ::3].set(MASK)

  def logits(z_BxL, x_BxL):
    return np.asarray(model(z_BxL, None, None, clean_BxL=x_BxL))

  base = logits(z, TOKENS)
  for b in range(L // W):
    block = slice(b * W, (b + 1) * W)
    # Clean tokens of block b and after: no block up to b moves.
    x = TOKENS.at[:, b * W:].set((TOKENS[:, b * W:] + 1) % MASK)
    np.testing.assert_allclose(logits(z, x)[:, :(b + 1) * W],
                               base[:, :(b + 1) * W], atol=1e-6)
    # Noisy tokens outside block b: block b does not move.
    outside = jnp.asarray(np.arange(L) // W != b)
    z_other = jnp.where(outside[None], MASK, z)
    np.testing.assert_allclose(logits(z_other, TOKENS)[:, block],
                               base[:, block], atol=1e-6)
    if b:  # Clean tokens of the block before: block b moves.
      x = TOKENS.at[:, b * W - 1].set((TOKENS[:, b * W - 1] + 1) % MASK)
      assert not np.allclose(logits(z, x)[:, block], base[:, block], atol=1e-4)


# Catches: per-block k or weights n/k off (k = 0, or positions of other blocks
# masked): with blocks of one position the any-order bound is exact, the
# same for every draw: sum_i -log p(x_i | x_{<i}).
def test_blocks_of_one_make_the_bound_exact():
  cfg = dataclasses.replace(BLOCKS, block_size=1)
  model = model_of(cfg)
  estimates = np.asarray(objective.eval_nelbo(
      model, BATCH, jax.random.PRNGKey(0), MASK, 4, block_size=1))
  all_masked = jnp.full_like(TOKENS, MASK)
  exact = np.asarray(jnp.sum(objective.token_nll(
      model(all_masked, None, None, clean_BxL=TOKENS), TOKENS), axis=-1))
  np.testing.assert_allclose(estimates, np.tile(exact, (4, 1)), rtol=1e-5)


def decoder_logits(graphdef, params, z, cache, start, clean_start, clean_length):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  return nnx.merge(graphdef, params).block_step(
      z, cache, jnp.asarray(start), jnp.asarray(clean_start), clean_length)


# Catches: cached keys and values at the wrong slots or positions (RoPE), a
# mask that lets the noisy block see stale or later slots, a finished block
# not written before the next reads it, or local mixing that reads other
# tokens than the two-stream pass does.
@pytest.mark.parametrize("scan_layers", [False, True])
def test_cached_logits_equal_a_full_recompute(scan_layers):
  cfg = dataclasses.replace(BLOCKS, scan_layers=scan_layers)
  graphdef, params = build(cfg)
  model = model_of(cfg)
  # Row 0 at block 2, row 1 at block 1; each block partly masked.
  z = TOKENS[:2].at[0, 9].set(MASK).at[1, 4:].set(MASK).at[1, 5].set(3)
  start = np.array([8, 4])
  full = np.asarray(model(z, None, None, clean_BxL=z))
  want = np.stack([full[r, s:s + W] for r, s in enumerate(start)])
  empty = model.init_block_cache(2, L)
  # A prompt of two blocks read in the call (prefill).
  got, cache = decoder_logits(graphdef, params, z, empty, start, [0, 0], 8)
  np.testing.assert_allclose(got, want, atol=1e-5)
  # Again from that cache, reading nothing more.
  got, _ = decoder_logits(graphdef, params, z, cache, start, start, 0)
  np.testing.assert_allclose(got, want, atol=1e-5)
  # The block before written in the call, on a cache of the ones before it.
  _, cache = decoder_logits(graphdef, params, z, empty, start - W, [0, 0], 4)
  got, _ = decoder_logits(graphdef, params, z, cache, start, start - W, W)
  np.testing.assert_allclose(got, want, atol=1e-5)


def options(sampler, **kw):
  return sampler_options.make_options(
      {}, {"sampler": sampler, "stop_at_eos": True, **kw})


# Catches: anything in the cached decoder that differs from reading the
# whole row (stale cache after a block, prompts of different lengths, rows
# in different blocks), seen as one different draw.
@pytest.mark.parametrize("sampler,kw", [
    ("first_hitting", {}), ("threshold", {"threshold": 0.3, "spacing": 2}),
    ("ancestral", {"steps": 6})])
def test_cached_sampling_equals_uncached_draw_for_draw(sampler, kw):
  # Large weights: logits that move with every token of the context, so a
  # stale or misplaced cache entry changes draws.
  graphdef, params = build(BLOCKS, seed=1, scale=1.5)
  init = np.full((4, L), MASK, np.int32)
  init[0, :2] = [1, 2]  # Prompts of 2, 5 (into block 1) and 9 tokens.
  init[1, :5] = [3, 4, 5, 6, 7]
  init[2, :9] = 1
  init[3, 6] = 4  # Fixed text inside a gap's block.
  opts = options(sampler, **kw)
  cached = models.sampling_network(graphdef, W, init, MASK, 0)
  assert cached.prefix == 8
  init = np.tile(init, (8, 1))
  args = (params, jax.random.PRNGKey(5), init)
  kwargs = dict(mask_id=MASK, eos_id=0, reads_mask_rate=False)
  with jax.transfer_guard("disallow"):  # One dispatch, no host round trips.
    got = jax.block_until_ready(samplers.sample(
        cached, *args, **kwargs, options=opts))
  want = samplers.sample(models.Denoiser(graphdef), *args, **kwargs,
                         options=dataclasses.replace(opts, block_length=W))
  for g, w in zip(got, want):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
  tokens = np.asarray(got.tokens_BxL)
  assert not np.any(tokens == MASK)
  np.testing.assert_array_equal(tokens[init != MASK], init[init != MASK])


# Catches: templates the cached decoder cannot write correctly accepted.
@pytest.mark.parametrize("template,block_length,pattern", [
    ([MASK] * 10, 0, "multiple of 4"),
    ([1] * 4 + [MASK] * 4 + [2] * 4, 0, "blocks left to right"),
    ([MASK] * 12, 3, "own blocks"),
])
def test_templates_a_block_decoder_cannot_write_are_refused(
    template, block_length, pattern):
  graphdef, _ = build(BLOCKS)
  with pytest.raises(errors.UserError, match=pattern):
    models.sampling_network(graphdef, W, np.array([template]), MASK,
                            block_length)


# Catches: block settings that cannot work accepted by the config check.
@pytest.mark.parametrize("overrides,pattern", [
    ({"model.block_size": 5}, "must divide data.seq_len=128"),
    ({"model.objective": "diffusion"}, "the other objectives read none"),
    ({"model.time_conditioning": True}, "time_conditioning=True needs"),
    ({"sample.length": 12}, "must divide sample.length=12"),
    ({"sample.block_length": 4}, "samples in its own blocks"),
])
def test_block_configs_are_checked(overrides, pattern):
  config = config_base.variant(config_base.base_config(), "bd3")
  validation.check(config)
  for field, value in overrides.items():
    group, name = field.split(".")
    config[group][name] = value
  with pytest.raises(errors.UserError, match=pattern):
    validation.check(config)


# Catches: a leak that lets the block bound fall below the truth (a noisy
# block reading its own clean tokens), a model that does not learn, and the
# API not sampling, filling or scoring a block-diffusion checkpoint.
@pytest.mark.slow
def test_markov_bound_holds_and_the_api_samples(tiny_config, tmp_path):
  tiny_config.model.update(objective="block_diffusion", block_size=4)
  result, docs = train_on_markov(tiny_config, CHAIN, tmp_path)
  truth = markov.document_log2_probs(CHAIN, docs).sum() / sum(map(len, docs))
  bound, stderr = result["bits_per_byte"], result["bits_per_byte_stderr"]
  assert 0 < stderr < 0.03
  assert truth - 3 * stderr < bound < truth + 0.1, (bound, stderr, truth)

  lm = diffusion_lm.load(str(tmp_path))
  assert isinstance(lm, diffusion_lm.api.DiffusionLM)
  texts = lm.sample(4, prompt="abcab", seed=1, sampler="threshold",
                    threshold=0.5)
  assert all(t.startswith("abcab") and len(t) >= 5 for t in texts)
  filled = lm.infill(["ab", 3, "c", 26])  # Text inside the gap's block.
  assert filled[0].startswith("ab") and filled[0][5] == "c"
  with pytest.raises(errors.UserError, match="blocks left to right"):
    lm.infill(["ab", 2, "cabc", 24])  # Block 1 all text after a gap.
  text = docs[0].decode()
  assert lm.score([text], num_t_samples=4)[0] > 0

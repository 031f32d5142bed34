"""The transformer: shapes, attention direction, time input, axis metadata."""

import dataclasses
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from conftest import TINY_MODEL, random_params, randomised
from diffusion_lm import errors, models
from diffusion_lm.models.transformer import Transformer, TransformerConfig

CFG = TINY_MODEL
LOCAL = dataclasses.replace(CFG, local_width=2)


TOKENS = jnp.array([[1, 2, 3, 4, 5, 11]], jnp.int32)  # 11 = [MASK]


@pytest.mark.slow
def test_logits_cover_the_vocabulary_but_not_mask():
  logits = randomised(CFG)(TOKENS)
  assert logits.shape == (1, 6, CFG.vocab_size) and logits.dtype == jnp.float32


def test_fresh_model_predicts_uniformly():
  model = Transformer(CFG, nnx.Rngs(0))
  np.testing.assert_allclose(model(TOKENS), 0.0)


def test_attention_is_bidirectional():
  # Bug caught: a causal (or otherwise one-sided) mask in the denoiser.
  model = randomised(CFG)
  changed = TOKENS.at[0, -1].set(7)
  assert not np.allclose(np.asarray(model(TOKENS))[0, 0],
                         np.asarray(model(changed))[0, 0])


def test_model_config_takes_exactly_the_config_fields():
  # Bug caught: a second set of defaults filling in a missing field, or an
  # unknown (misspelt) field ignored.
  model_config = ml_collections.ConfigDict(
      {k: v for k, v in CFG.__dict__.items() if k != "vocab_size"})
  assert TransformerConfig.from_config(model_config, 11) == CFG
  del model_config["rope_base"]
  model_config.rope = 1.0
  with pytest.raises(errors.UserError, match=r"missing \['rope_base'\], "
                     r"unknown \['rope'\]"):
    TransformerConfig.from_config(model_config, 11)


@pytest.mark.parametrize("cfg", [CFG, LOCAL], ids=["attention", "local_mixing"])
@pytest.mark.slow
def test_segment_ids_make_a_packed_row_equal_its_documents_alone(cfg):
  """With segment masking (and RoPE's relative positions) each document of a
  packed row gets the logits it gets on its own; without, it does not."""
  # Bug caught: attention or the local mixing reaching across documents (or
  # past the row's ends).
  model = randomised(cfg)
  docs = [jnp.array([[3, 11, 5, 0, 11]]), jnp.array([[7, 7, 11, 2, 9, 1, 11]])]
  packed = jnp.concatenate(docs, axis=1)
  segments = jnp.array([[1] * 5 + [2] * 7])
  together = np.asarray(model(packed, None, segments))
  alone = np.concatenate([np.asarray(model(d)) for d in docs], axis=1)
  np.testing.assert_allclose(together, alone, atol=1e-5)
  assert not np.allclose(np.asarray(model(packed)), alone, atol=1e-3)


def test_local_mixing_sees_exactly_k_neighbours():
  # Bug caught: a shift off by one, or a window wider or narrower than k.
  model = randomised(LOCAL)
  x = np.asarray(model._embed(TOKENS))  # pylint: disable=protected-access
  for j in range(6):
    changed = np.array(x)
    changed[0, j] += 1.0
    moved = np.any(np.asarray(model.local(jnp.asarray(changed))) !=
                   np.asarray(model.local(jnp.asarray(x))), axis=-1)[0]
    np.testing.assert_array_equal(moved, np.abs(np.arange(6) - j) <= 2)


def test_a_causal_input_layer_read_bidirectionally_computes_what_it_did():
  # Bug caught (train.init_from from an AR twin): the causal kernel's offsets
  # -k..0 placed at other offsets of the bidirectional one, or the new ones
  # not zero.
  causal = dataclasses.replace(LOCAL, objective="autoregressive")
  source = random_params(causal)
  graphdef, _ = models.abstract_model(LOCAL)
  model = nnx.merge(graphdef, models.in_layout(source, causal, LOCAL))
  x = model._embed(TOKENS)  # pylint: disable=protected-access
  np.testing.assert_allclose(model.local(x), randomised(causal).local(x),
                             rtol=1e-6)
  assert models.in_layout(source, causal, causal) is source


@pytest.mark.slow
def test_time_conditioning_reads_the_mask_rate():
  model = randomised(TransformerConfig(**{**CFG.__dict__, "time_conditioning": True}))
  a = model(TOKENS, jnp.array([0.1]))
  b = model(TOKENS, jnp.array([0.9]))
  assert not np.allclose(a, b)
  with pytest.raises(ValueError, match="masking rate"):
    model(TOKENS)


@pytest.mark.slow
def test_bfloat16_compute_stays_close_to_float32():
  model = randomised(CFG)
  graphdef, params = nnx.split(model)
  bf16_graphdef, _ = models.abstract_model(
      TransformerConfig(**{**CFG.__dict__, "dtype": "bfloat16"}))
  low = nnx.merge(bf16_graphdef, params)(TOKENS)
  assert low.dtype == jnp.float32
  # Bug caught: model.dtype ignored (identical logits) or misapplied (far off;
  # bfloat16 rounding moves these logits of size ~1 by about 0.006).
  assert not np.array_equal(low, model(TOKENS))
  np.testing.assert_allclose(low, model(TOKENS), atol=0.02)


@pytest.mark.slow
def test_positions_matter():
  # Bug caught: RoPE not applied (every other test here is blind to the
  # order of positions): two [MASK]s at different places get one prediction.
  out = np.asarray(randomised(CFG)(jnp.array([[3, 11, 11, 5]])))
  assert not np.allclose(out[0, 1], out[0, 2], atol=1e-4)


def test_every_parameter_names_its_axes():
  _, state = models.abstract_model(CFG)
  for path, variable in nnx.to_flat_state(state):
    axes = variable.get_metadata()["logical_axes"]
    assert len(axes) == len(variable.shape), path


def test_flops_per_token_match_the_parameter_count():
  from diffusion_lm import metrics  # pylint: disable=g-import-not-at-top
  params = models.init_params(CFG, jax.random.PRNGKey(0))
  matmul = models.count_params(params) - params["embed"].size - sum(
      x.size for x in jax.tree.leaves(params) if x.ndim == 1)
  attention = 3 * CFG.num_layers * 4 * 32 * CFG.num_heads * CFG.head_dim
  assert metrics.train_flops_per_token(CFG, 32) == 6 * matmul + attention

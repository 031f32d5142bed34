"""For large models: scanned blocks, remat, gradient accumulation, bf16
compute, the attention implementation, and what training logs about speed."""

import dataclasses
import glob
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from conftest import TINY_MODEL, load_tiny_config, random_params
from diffusion_lm import (autoregressive, errors, metrics, models, parallel,
                          train, train_step, validation)
from diffusion_lm.models import transformer

TOKENIZER_SIZE = 256


class _Vocab:
  vocab_size = mask_id = TOKENIZER_SIZE


def one_device():
  return parallel.make_mesh(ml_collections.ConfigDict(
      {"data": 1, "fsdp": 1, "tensor": 1}), devices=jax.devices()[:1])


def tiny(**model_fields):
  config = load_tiny_config("")
  config.model.update(model_fields)
  return config


# Microbatches take strided rows (even, odd): the odd rows score fewer
# positions, so parts averaged without their weights give another loss.
_WEIGHTS = np.ones((8, 32), np.float32)
_WEIGHTS[1::2, 20:] = 0.0
BATCH = {"tokens": np.random.default_rng(0).integers(
    0, TOKENIZER_SIZE, (8, 32), np.int32), "weights": _WEIGHTS}


def steps(config, n=2, program=None):
  """Losses, gradient norms and the final state of n train steps; the
  step's lowered program (StableHLO) is appended to `program`."""
  mesh = one_device()
  training = train_step.build(config, _Vocab(), mesh)
  state, batch = training.init(), parallel.global_batch(BATCH, mesh)
  if program is not None:
    program.append(training.step.lower(state, batch).as_text())
  out = []
  for _ in range(n):
    state, step_metrics = training.step(state, batch)
    out.append([float(step_metrics["train/loss"]),
                float(step_metrics["train/grad_norm"])])
  return out, jax.device_get(state)


def stacked(params):
  """Per-block parameters (blocks/0/...) stacked as scan_layers keeps them."""
  blocks = params["blocks"]
  return {**params, "blocks": jax.tree.map(lambda *xs: np.stack(xs),
                                           *(blocks[i] for i in sorted(blocks)))}


@pytest.mark.slow
def test_scan_remat_and_microbatches_train_as_the_plain_step():
  # Catches: scanned blocks in the wrong order or with another block's
  # weights, remat changing the numbers, microbatch losses and gradients
  # averaged without their scored positions as weights or not divided back
  # (x2 off), a microbatch left out.
  # The autoregressive loss draws no random numbers: accumulated over
  # microbatches it is the whole batch's.
  plain, plain_state = steps(tiny(objective="autoregressive"))
  config = tiny(objective="autoregressive", scan_layers=True, remat="full")
  config.train.microbatches = 2
  scaled, scaled_state = steps(config)
  np.testing.assert_allclose(plain, scaled, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(stacked(plain_state["params"])),
                  jax.tree.leaves(scaled_state["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_bfloat16_computes_in_bf16_with_float32_state():
  # Catches: bf16 parameters or optimizer moments (updates below bf16's
  # resolution lost), matmuls left in float32, a loss far from float32's.
  program = []
  out, state = steps(tiny(dtype="bfloat16"), program=program)
  dots = [line for line in program[0].splitlines() if "dot_general" in line]
  assert dots and all("bf16" in line for line in dots), dots[:3]
  floats = [x for x in jax.tree.leaves(state) if np.issubdtype(x.dtype, np.floating)]
  assert floats and all(x.dtype == np.float32 for x in floats)
  reference, _ = steps(tiny())
  np.testing.assert_allclose(out, reference, rtol=0.02)


@pytest.mark.slow
def test_scanned_program_does_not_grow_with_depth():
  # Catches: scan_layers unrolling the blocks (compile time growing with
  # depth, as it does without scan).
  def program_lines(**fields):
    training = train_step.build(tiny(**fields), _Vocab(), one_device())
    state = jax.eval_shape(training.init)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in BATCH.items()}
    return len(training.step.lower(state, batch).as_text().splitlines())

  scanned = [program_lines(num_layers=n, scan_layers=True) for n in (2, 8)]
  unrolled = [program_lines(num_layers=n) for n in (2, 8)]
  assert scanned[1] == scanned[0]
  assert unrolled[1] > 2 * unrolled[0]


@pytest.mark.slow
def test_cached_decoding_works_with_scanned_blocks():
  # Catches: the autoregressive twin's KV cache broken by scan_layers (a
  # cache per block where the blocks are stacked, or layers mixed up).
  cfg = dataclasses.replace(TINY_MODEL, objective="autoregressive",
                            local_width=1, scan_layers=True)
  graphdef, _ = models.abstract_model(cfg)
  inputs = autoregressive.shifted_inputs(
      jnp.array([[3, 1, 4, 1, 5, 9], [2, 7, 1, 8, 2, 8]]), 11)

  params = random_params(cfg, scale=0.5)

  @jax.jit
  def decoded_and_full(params):
    model = nnx.merge(graphdef, params)
    cache = model.init_cache(2, 6)
    prefill, cache = model.decode(inputs[:, :4], cache, 0)
    pieces = [prefill]
    for i in range(4, 6):
      logits, cache = model.decode(inputs[:, i:i + 1], cache, i)
      pieces.append(logits)
    return jnp.concatenate(pieces, axis=1), model(inputs)

  decoded, full = decoded_and_full(params)
  np.testing.assert_allclose(decoded, full, atol=1e-5)


def test_attention_impl_reaches_the_attention_and_is_checked(monkeypatch):
  # Catches: model.attention_impl not passed to jax.nn.dot_product_attention
  # (cuDNN never used on GPUs), and cudnn accepted where it cannot run.
  seen = []
  real = jax.nn.dot_product_attention

  def spy(*args, implementation=None, **kwargs):
    seen.append(implementation)
    return real(*args, implementation="xla", **kwargs)

  monkeypatch.setattr(transformer.jax.nn, "dot_product_attention", spy)
  cfg = models.TransformerConfig.from_config(
      tiny(attention_impl="cudnn", scan_layers=True).model, 11)
  graphdef, _ = models.abstract_model(cfg)
  params = jax.eval_shape(lambda: models.init_params(cfg, jax.random.PRNGKey(0)))
  jax.eval_shape(lambda p: nnx.merge(graphdef, p)(jnp.zeros((1, 8), jnp.int32)),
                 params)
  assert seen == ["cudnn"]  # One scanned block, traced once.
  with pytest.raises(errors.UserError) as e:
    validation.check(tiny(attention_impl="cudnn"), devices=jax.devices())
  assert "model.attention_impl='cudnn' needs model.dtype 'bfloat16'" in str(e.value)
  assert "needs NVIDIA GPUs, not cpu devices" in str(e.value)
  with pytest.raises(errors.UserError, match="model.attention_impl='flash' must "
                     "be one of"):
    validation.check(tiny(attention_impl="flash"))
  with pytest.raises(errors.UserError, match="model.remat='some' must be one of"):
    validation.check(tiny(remat="some"))


@pytest.mark.slow
def test_training_logs_speed_profiles_and_keeps_its_layout(data_dir, corpus_glob,
                                                           tmp_path):
  # Catches: no compile time, per-device throughput or step time in the
  # metrics, train.profile_steps writing no trace, a checkpoint resumed with
  # the other scan_layers (its parameters' tree does not match: every
  # checkpoint would be taken for damaged and moved aside).
  config = load_tiny_config(data_dir, corpus_glob)
  config.train.update(steps=4, log_every=2, eval_every=4, checkpoint_every=4,
                      profile_steps=(2, 3))
  config.sample.num_samples = 0
  config.eval.batches_during_training = 1
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir)
  records = metrics.read_jsonl(workdir)
  assert [r["train/compile_s"] for r in records if "train/compile_s" in r]
  logged = [r for r in records if "train/loss" in r]
  assert [r["step"] for r in logged] == [2, 4]
  for r in logged:
    assert r["train/tokens_per_s_per_device"] == pytest.approx(
        r["train/tokens_per_s"] / jax.device_count())
    assert r["train/step_time_s"] > 0
  assert glob.glob(os.path.join(workdir, "profile", "**", "*.xplane.pb"),
                   recursive=True)
  config.model.scan_layers = True
  config.train.steps = 6
  with pytest.raises(errors.UserError, match="saved with model.scan_layers=False"
                     ".*resume with --config.model.scan_layers=False"):
    train.train_and_evaluate(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4"]


def test_validation_of_the_new_fields(tiny_config):
  # Catches: microbatches that do not divide the batch (or its shards)
  # accepted, a bad profile range accepted.
  tiny_config.train.update(microbatches=3, profile_steps=(5, 2))
  with pytest.raises(errors.UserError) as e:
    validation.check(tiny_config, devices=jax.devices())
  assert "train.microbatches=3 must divide train.batch_size=8" in str(e.value)
  odd = load_tiny_config("", "")  # 8 rows in 8 microbatches: one a step.
  odd.train.microbatches = 8
  odd.diffusion.complementary_masks = True
  with pytest.raises(errors.UserError, match=(
      "diffusion.complementary_masks=True pairs the rows of each step's "
      "batch: train.batch_size=8 / train.microbatches=8 must be even")):
    validation.check(odd)
  assert "train.profile_steps=(5, 2) must be () (off) or (first, last)" in str(e.value)
  tiny_config.train.update(microbatches=2, profile_steps=())
  with pytest.raises(errors.UserError, match=r"train.batch_size=8 must be divisible "
                     r"by 16 \(the 8 devices times train.microbatches=2\)"):
    validation.check(tiny_config, devices=jax.devices())

"""Sharding: the train step on 8 devices equals one device; restore on another mesh."""

import jax
import ml_collections
import numpy as np
import pytest

from diffusion_lm import checkpoints, errors, parallel, train, validation
from diffusion_lm.data import pipeline, tokenizers

TOKENIZER = tokenizers.ByteTokenizer()


def mesh(data, fsdp):
  devices = jax.devices()[:data * fsdp]
  return parallel.make_mesh(ml_collections.ConfigDict({"data": data, "fsdp": fsdp}),
                            devices=devices)


def test_mesh_shapes_and_errors():
  assert dict(mesh(4, 2).shape) == {"data": 4, "fsdp": 2}
  full = parallel.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 2}))
  assert dict(full.shape) == {"data": 4, "fsdp": 2}
  with pytest.raises(errors.UserError, match="mesh.data \\* mesh.fsdp"):
    parallel.make_mesh(ml_collections.ConfigDict({"data": 3, "fsdp": 2}))


def test_params_are_sharded_by_the_rules(tiny_config):
  state = train.build(tiny_config, TOKENIZER, mesh(4, 2)).init()
  qkv = state["params"]["blocks"][0]["attn"]["qkv"]
  assert qkv.sharding.spec[0] == "fsdp"  # embed -> fsdp
  assert qkv.addressable_shards[0].data.shape[0] == qkv.shape[0] // 2
  mu = state["opt_state"][1][0].mu["blocks"][0]["attn"]["qkv"]
  assert mu.sharding == qkv.sharding


def test_batch_slices_must_divide_the_batch(tiny_config):
  tiny_config.model.batch_slices = 3
  with pytest.raises(errors.UserError, match="model.batch_slices=3 .* "
                     "train.batch_size=8"):
    validation.check(tiny_config)


def test_train_step_on_8_devices_matches_one_device(tiny_config):
  """Also with the 8-device step scoring its rows in 2 strided slices: the
  slices keep each device's rows, and the loss is the same."""
  tiny_config.train.ema_decay = 0.9
  batch_np = next(iter(pipeline.train_dataset(tiny_config, TOKENIZER)))
  results = []
  for m, slices in ((mesh(1, 1), 1), (mesh(4, 2), 2)):
    tiny_config.model.batch_slices = slices
    training = train.build(tiny_config, TOKENIZER, m)
    state = training.init()
    losses = []
    for _ in range(3):
      state, metrics = training.step(state, parallel.global_batch(batch_np, m))
      losses.append([float(metrics["train/loss"]),
                     float(metrics["train/grad_norm"])])
    results.append((losses, jax.device_get(state)))
  (loss_1, state_1), (loss_8, state_8) = results
  # Loss and gradient norm: Adam's update hides a wrongly scaled gradient.
  np.testing.assert_allclose(loss_1, loss_8, rtol=1e-4)
  # Adam divides by sqrt(v): tiny float differences in tiny gradients can
  # move a weight by a fraction of one step (lr = 3e-3).
  for a, b in zip(jax.tree.leaves(state_1), jax.tree.leaves(state_8)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_checkpoint_restores_onto_a_different_mesh(tiny_config, tmp_path):
  training = train.build(tiny_config, TOKENIZER, mesh(8, 1))
  data = iter(pipeline.train_dataset(tiny_config, TOKENIZER))
  state, _ = training.step(training.init(),
                           parallel.global_batch(next(data), mesh(8, 1)))
  mngr = checkpoints.manager(str(tmp_path))
  checkpoints.save(mngr, 1, state, data, tiny_config, TOKENIZER)
  mngr.wait_until_finished()
  expected_next = next(data)["tokens"]

  target = train.build(tiny_config, TOKENIZER, mesh(2, 4)).state_target
  fresh_data = iter(pipeline.train_dataset(tiny_config, TOKENIZER))
  restored = checkpoints.restore_train_state(mngr, 1, target, fresh_data)
  for a, b, t in zip(jax.tree.leaves(state), jax.tree.leaves(restored),
                     jax.tree.leaves(target)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert b.sharding == t.sharding
  np.testing.assert_array_equal(next(fresh_data)["tokens"], expected_next)
  config, tokenizer = checkpoints.restore_metadata(mngr, 1)
  assert config.model.embed_dim == tiny_config.model.embed_dim
  assert isinstance(tokenizer, tokenizers.ByteTokenizer)

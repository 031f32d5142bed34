"""Sharding: the train step on 8 devices in every layout equals one device;
the tensor layout's collectives; restore on another mesh."""

import re

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import load_tiny_config
from diffusion_lm import (checkpoints, errors, parallel, train_step,
                          validation)
from diffusion_lm.data import pipeline, tokenizers

TOKENIZER = tokenizers.ByteTokenizer()


def mesh(data, fsdp, tensor=1):
  devices = jax.devices()[:data * fsdp * tensor]
  return parallel.make_mesh(ml_collections.ConfigDict(
      {"data": data, "fsdp": fsdp, "tensor": tensor}), devices=devices)


def test_mesh_shapes_and_errors():
  # Catches: -1 filling the wrong axis, a mesh that leaves devices out.
  assert dict(mesh(4, 2).shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  full = parallel.make_mesh(ml_collections.ConfigDict(
      {"data": 2, "fsdp": -1, "tensor": 2}))
  assert dict(full.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  with pytest.raises(errors.UserError,
                     match=r"mesh.data \* mesh.fsdp \* mesh.tensor = 3 \* 2 \* 1"):
    parallel.make_mesh(ml_collections.ConfigDict({"data": 3, "fsdp": 2, "tensor": 1}))
  with pytest.raises(errors.UserError, match="at most one"):
    parallel.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": -1}))


@pytest.mark.slow
def test_params_are_sharded_by_the_rules(tiny_config):
  # Catches: a rule not applied (heads or MLP units whole on every tensor
  # device), optimizer moments placed unlike their parameters.
  state = train_step.build(tiny_config, TOKENIZER, mesh(2, 2, 2)).init()
  block = state["params"]["blocks"][0]
  assert block["attn"]["qkv"].sharding.spec == P("fsdp", None, "tensor", None)
  assert block["mlp"]["down"].sharding.spec == P("tensor", "fsdp")
  assert block["attn"]["qkv"].addressable_shards[0].data.shape == (16, 3, 1, 16)
  mu = state["opt_state"][1][0].mu["blocks"][0]["attn"]["qkv"]
  assert mu.sharding == block["attn"]["qkv"].sharding


def test_tensor_groups_stay_within_a_process(tiny_config):
  # Catches: a tensor-parallel group spread over processes (each process's
  # rows would then be needed on another), heads that mesh.tensor does not
  # split (silently replicated), or a batch that the data-parallel shards
  # do not divide accepted.
  tiny_config.mesh.update(data=-1, tensor=4)
  with pytest.raises(errors.UserError) as e:
    validation.check(tiny_config, devices=jax.devices(), process_count=4)
  assert "mesh.tensor=4 must divide the 2 devices" in str(e.value)
  assert "mesh.tensor=4 must divide model.num_heads=2" in str(e.value)
  tiny_config.mesh.tensor = 2  # data = 4: 4 shards of the rows.
  tiny_config.train.batch_size = tiny_config.eval.batch_size = 6
  with pytest.raises(errors.UserError, match=r"train.batch_size=6 must be divisible "
                     r"by the 4 data-parallel shards \(mesh.data \* mesh.fsdp\)"):
    validation.check(tiny_config, devices=jax.devices())


def test_batch_slices_must_divide_the_batch(tiny_config):
  tiny_config.model.batch_slices = 3
  with pytest.raises(errors.UserError, match="model.batch_slices=3 .* "
                     "train.batch_size=8"):
    validation.check(tiny_config)


class _Vocab:
  """256 predicted ids: a vocabulary that `tensor` divides."""
  vocab_size = mask_id = 256


LAYOUTS = {(1, 1, 1): 1, (2, 2, 2): 2, (1, 1, 8): 1, (1, 8, 1): 1}
ROWS, LENGTH, LAYERS, WIDTH, HEADS, HEAD_DIM, MLP = 8, 16, 1, 48, 8, 2, 80


@pytest.fixture(scope="module")
def layouts(data_dir):
  """Each layout (data, fsdp, tensor) -> (losses and gradient norms of 3
  steps, the final state, the compiled step's HLO); (2, 2, 2) scores its
  rows in 2 strided slices (model.batch_slices), each device's 2 rows
  staying on it."""
  config = load_tiny_config(data_dir)
  config.model.update(num_layers=LAYERS, num_heads=HEADS, head_dim=HEAD_DIM,
                      embed_dim=WIDTH, mlp_dim=MLP)
  config.train.ema_decay = 0.9
  tokens = np.random.default_rng(0).integers(0, 256, (ROWS, LENGTH), np.int32)
  batch_np = {"tokens": tokens, "weights": np.ones((ROWS, LENGTH), np.float32)}
  results = {}
  for layout, slices in LAYOUTS.items():
    config.model.batch_slices = slices
    m = mesh(*layout)
    training = train_step.build(config, _Vocab(), m)
    state, batch = training.init(), parallel.global_batch(batch_np, m)
    step = training.step.lower(state, batch).compile()
    losses = []
    for _ in range(3):
      state, metrics = step(state, batch)
      losses.append([float(metrics["train/loss"]),
                     float(metrics["train/grad_norm"])])
    results[layout] = (losses, jax.device_get(state), step.as_text())
  return results


@pytest.mark.slow
def test_train_step_in_every_layout_matches_one_device(layouts):
  # Catches: a layout that changes the numbers (a missing reduction over a
  # mesh axis, heads or vocabulary split and not put back together, strided
  # slices moving rows between devices).
  loss_1, state_1, _ = layouts[(1, 1, 1)]
  for layout in LAYOUTS:
    losses, state, _ = layouts[layout]
    # Loss and gradient norm: Adam's update hides a wrongly scaled gradient.
    np.testing.assert_allclose(loss_1, losses, rtol=1e-4, err_msg=str(layout))
    # Adam divides by sqrt(v): tiny float differences in tiny gradients can
    # move a weight by a fraction of one step (lr = 3e-3).
    for a, b in zip(jax.tree.leaves(state_1), jax.tree.leaves(state)):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4, err_msg=str(layout))


def collectives(hlo: str, kind: str) -> list[str]:
  """The result shapes of each `kind` instruction (a tuple: its parts)."""
  return [line.split(" = ", 1)[1].split(f" {kind}(")[0]
          for line in hlo.splitlines() if re.search(rf" {kind}(-start)?\(", line)]


# Per-layer weights, as dense() flattens them: whole ([D, H*K], [D, F]) and
# split over tensor = 2 ([D, H*K/2], [D, F/2]), by element count.
WHOLE = {WIDTH * HEADS * HEAD_DIM, WIDTH * MLP}
HALVES = {WIDTH * HEADS * HEAD_DIM // 2, WIDTH * MLP // 2}


def sizes(shapes: list[str]) -> list[int]:
  return [int(np.prod([int(d) for d in dims.split(",") if d]))
          for shape in shapes for dims in re.findall(r"f32\[([\d,]*)\]", shape)]


@pytest.mark.slow
def test_tensor_layout_has_megatron_collectives_and_gathers_no_whole_weight(
    layouts):
  # Catches: a weight split over `tensor` gathered whole on every device
  # (qkv flattened to [D, 3*H*K] before the matmul did this), activations
  # left split over heads (more collectives), FSDP gathering whole weights.
  _, _, hlo = layouts[(1, 1, 8)]
  activation = f"f32[{ROWS * LENGTH},{WIDTH}]"
  reduces = [s for s in collectives(hlo, "all-reduce") if activation in s]
  # One per attention and MLP sub-block, forward and backward (XLA bundles
  # a backward sub-block's partial sums into one tuple all-reduce), and one
  # for the gradient through the head, whose vocabulary is split.
  assert len(reduces) == 4 * LAYERS + 1, reduces
  assert not collectives(hlo, "all-gather"), collectives(hlo, "all-gather")

  _, _, hlo = layouts[(2, 2, 2)]
  gathered = sizes(collectives(hlo, "all-gather"))
  assert not WHOLE & set(gathered), gathered
  assert HALVES <= set(gathered)  # fsdp gathers each tensor half.


@pytest.mark.slow
def test_checkpoint_restores_onto_a_different_mesh(tiny_config, tmp_path):
  training = train_step.build(tiny_config, TOKENIZER, mesh(8, 1))
  data = iter(pipeline.train_dataset(tiny_config, TOKENIZER))
  state, _ = training.step(training.init(),
                           parallel.global_batch(next(data), mesh(8, 1)))
  mngr = checkpoints.manager(str(tmp_path))
  checkpoints.save(mngr, 1, state, data, tiny_config, TOKENIZER)
  mngr.wait_until_finished()
  expected_next = next(data)["tokens"]

  target = train_step.build(tiny_config, TOKENIZER, mesh(2, 2, 2)).state_target
  fresh_data = iter(pipeline.train_dataset(tiny_config, TOKENIZER))
  restored = checkpoints.restore_train_state(mngr, 1, target)
  checkpoints.restore_data_position(mngr, 1, fresh_data)
  for a, b, t in zip(jax.tree.leaves(state), jax.tree.leaves(restored),
                     jax.tree.leaves(target)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert b.sharding == t.sharding
  np.testing.assert_array_equal(next(fresh_data)["tokens"], expected_next)
  config, tokenizer = checkpoints.restore_metadata(mngr, 1)
  assert config.model.embed_dim == tiny_config.model.embed_dim
  assert isinstance(tokenizer, tokenizers.ByteTokenizer)

"""The pieces of the training loop: optimizer, schedule, EMA, logging."""

import json
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from diffusion_lm import checkpoints, errors, metrics, parallel, train, train_step
from diffusion_lm.data import pipeline, tokenizers

TOKENIZER = tokenizers.ByteTokenizer()


def test_learning_rate_warms_up_then_decays_to_the_final_fraction(tiny_config):
  # Bug caught: warmup or decay lengths off, or decay to 0 instead of the
  # configured fraction of the peak.
  c = tiny_config.train
  c.update(steps=100, warmup_steps=10, learning_rate=2e-3, final_lr_fraction=0.1)
  lr = train_step.learning_rate_schedule(c)
  assert float(lr(0)) == 0.0
  assert float(lr(10)) == pytest.approx(2e-3)
  assert float(lr(100)) == pytest.approx(2e-4)
  assert float(lr(55)) == pytest.approx(2e-4 + 0.5 * 1.8e-3, rel=1e-5)


def test_weight_decay_skips_exactly_the_vectors(tiny_config):
  # Bug caught: norm scales decayed towards 0, or matrices not decayed.
  tiny_config.train.update(learning_rate=1.0, warmup_steps=0, weight_decay=0.5,
                           final_lr_fraction=1.0, grad_clip=0.0)
  optimizer = train_step.make_optimizer(tiny_config.train)
  params = {"matrix": np.ones((2, 2), np.float32), "scale": np.ones(2, np.float32)}
  zero = jax.tree.map(np.zeros_like, params)
  # A zero gradient leaves only AdamW's decay: -learning_rate * 0.5 * param.
  updates, _ = optimizer.update(zero, optimizer.init(params), params)
  np.testing.assert_allclose(updates["matrix"], -0.5)
  np.testing.assert_array_equal(updates["scale"], 0.0)


def mesh_1():
  return parallel.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1}),
                            devices=jax.devices()[:1])


@pytest.mark.slow
def test_ema_tracks_the_parameters_and_is_what_evaluation_reads(tiny_config,
                                                                  tmp_path):
  # Bugs caught: EMA arguments swapped (0.1 ema + 0.9 params), EMA not used
  # for evaluation and sampling when on.
  tiny_config.train.ema_decay = 0.9
  mesh = mesh_1()
  training = train_step.build(tiny_config, TOKENIZER, mesh)
  data = iter(pipeline.train_dataset(tiny_config, TOKENIZER))
  state = training.init()
  ema = jax.device_get(state["params"])
  for _ in range(3):
    state, _ = training.step(state, parallel.global_batch(next(data), mesh))
    params = jax.device_get(state["params"])
    ema = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, ema, params)
    for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(state["ema"])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert checkpoints.eval_params_name(tiny_config.train) == "ema"
  mngr = checkpoints.manager(str(tmp_path))
  checkpoints.save(mngr, 3, state, data, tiny_config, TOKENIZER)
  mngr.wait_until_finished()
  restored = checkpoints.restore_params(
      mngr, 3, training.state_target["params"], tiny_config.train)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state["ema"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class _Recorder:

  def __init__(self):
    self.records = []

  def write(self, step, scalars):
    self.records.append((step, scalars))


def test_train_log_writes_one_step_behind_with_throughput(monkeypatch):
  # Bugs caught: a record lost or written twice, throughput counted from the
  # wrong mark (an evaluation's time included), the wrong step's rate.
  clock = iter([0.0, 10.0, 30.0, 31.0, 41.0])
  monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
  recorder = _Recorder()
  log = metrics.TrainLog(recorder, start_step=0, total_steps=20,
                         tokens_per_step=100, flops_per_step=1e3,
                         peak_flops=1e4, learning_rate=lambda s: s / 100)
  log.queue(5, {"train/loss": np.float32(2.0)})
  assert not recorder.records  # Held until the next flush.
  log.queue(10, {"train/loss": np.float32(1.0)})  # Writes step 5 at t = 10.
  log.flush()  # Writes step 10 at t = 30; an evaluation follows.
  log.restart_clock(10)  # t = 31, after the evaluation.
  log.queue(15, {"train/loss": np.float32(0.5)})
  log.flush()  # Step 15 at t = 41.
  assert [s for s, _ in recorder.records] == [5, 10, 15]
  (_, r5), (_, r10), (_, r15) = recorder.records
  assert (r5["train/loss"], r5["train/learning_rate"]) == (2.0, 0.04)
  assert r5["train/tokens_per_s"] == pytest.approx(5 * 100 / 10)
  assert r5["train/mfu"] == pytest.approx(5 * 1e3 / 10 / 1e4)
  assert r10["train/tokens_per_s"] == pytest.approx(5 * 100 / 20)
  assert r15["train/tokens_per_s"] == pytest.approx(5 * 100 / 10)


@pytest.mark.slow
def test_old_checkpoint_configs_take_todays_defaults(tiny_config, tmp_path):
  # Bug caught: a checkpoint written before a config field existed (or after
  # one was removed) that no longer loads.
  mesh = mesh_1()
  training = train_step.build(tiny_config, TOKENIZER, mesh)
  data = iter(pipeline.train_dataset(tiny_config, TOKENIZER))
  old = tiny_config.copy_and_resolve_references()
  with old.unlocked():
    del old.model["batch_slices"]
    old.train.retired_field = 1
  mngr = checkpoints.manager(str(tmp_path))
  checkpoints.save(mngr, 0, training.init(), data, old, TOKENIZER)
  mngr.wait_until_finished()
  config, _ = checkpoints.restore_metadata(mngr, 0)
  assert config.model.batch_slices == 1 and "retired_field" not in config.train
  assert config.model.embed_dim == tiny_config.model.embed_dim


@pytest.mark.slow
def test_a_restarted_data_order_survives_the_next_resume(tiny_config, tmp_path):
  # Bug caught: after a resume whose data position does not apply the data
  # stream restarts in a new order, but a later resume rebuilt the original
  # order and moved it to the new order's position (other batches, so other
  # losses than the run that was not stopped).
  tiny_config.train.update(steps=12, checkpoint_every=4, max_checkpoints=5,
                           log_every=1, eval_every=100)
  tiny_config.sample.num_samples = 0

  def losses(workdir):
    records = metrics.read_jsonl(str(workdir))
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}

  def keep_only(workdir, step):
    for saved in (workdir / "checkpoints").iterdir():
      if saved.name.isdigit() and int(saved.name) > step:
        shutil.rmtree(saved)

  first = tmp_path / "first"
  train.train_and_evaluate(tiny_config, str(first))
  # As if step 4 had been saved with another train.batch_size: its data
  # position does not apply.
  position = first / "checkpoints" / "4" / "data" / "process_0-of-1.json"
  position.write_text(json.dumps({**json.loads(position.read_text()),
                                  "batch_size": 2}))
  keep_only(first, 4)
  train.train_and_evaluate(tiny_config, str(first))  # New order from step 4.
  again = tmp_path / "again"
  shutil.copytree(first, again)
  keep_only(again, 8)  # Saved in the new order.
  train.train_and_evaluate(tiny_config, str(again))
  assert losses(again) == losses(first)


@pytest.mark.slow
def test_a_run_started_from_another_runs_parameters(tiny_config, tmp_path):
  # Bugs caught: train.init_from ignored (a random start evaluates
  # otherwise), the source's optimizer step or another checkpoint's
  # parameters taken, a model of other shapes accepted.
  tiny_config.train.update(steps=3, log_every=1, eval_every=100)
  tiny_config.sample.num_samples = 0
  source = train.train_and_evaluate(tiny_config, str(tmp_path / "source"))
  tiny_config.train.update(steps=0, init_from=str(tmp_path / "source"))
  started = train.train_and_evaluate(tiny_config, str(tmp_path / "started"))
  assert started["bits_per_byte"] == source["bits_per_byte"]
  records = metrics.read_jsonl(str(tmp_path / "started"))
  assert {"step": 0, "train/init_from_step": 3.0} in records

  # From an AR twin whose input layer reads fewer neighbours (models.in_layout).
  tiny_config.model.local_width = 2
  tiny_config.train.update(steps=2, init_from="")
  twin = tiny_config.copy_and_resolve_references()
  twin.model.objective = "autoregressive"
  train.train_and_evaluate(twin, str(tmp_path / "twin"))
  tiny_config.train.update(steps=0, init_from=str(tmp_path / "twin"))
  train.train_and_evaluate(tiny_config, str(tmp_path / "from_twin"))
  assert {"step": 0, "train/init_from_step": 2.0} in metrics.read_jsonl(
      str(tmp_path / "from_twin"))

  tiny_config.train.init_from = str(tmp_path / "source")
  tiny_config.model.update(local_width=0, num_layers=3)
  with pytest.raises(errors.UserError, match=(
      r"model.num_layers=\d \(this run: \d\).*train.init_from=.*source needs "
      r"a run with this run's transformer \(--config.model.num_layers=\d here")):
    train.train_and_evaluate(tiny_config, str(tmp_path / "other"))

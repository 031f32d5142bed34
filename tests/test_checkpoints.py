"""Damaged, unverified and mismatched checkpoints on every path that restores
one: training's resume, --mode=eval, the sample command and diffusion_lm.load.

Each damage mode is applied to its own copy of the tiny run's last checkpoint
(test_faults.run: steps 3 and 6), saved as a newer step (7, 8, ...): one
restore per path then meets every mode in turn and must pass over each, with
one log line naming its step and why, to the intact step 6.
"""

import glob
import json
import logging
import os
import re
import shutil
import sys
import types

import jax
import numpy as np
import pytest

from conftest import run_module
from test_faults import (assert_one_clear_error, copy_run,
                         run, strict_json)  # pylint: disable=unused-import

from diffusion_lm import (api, checkpoint_integrity, checkpoints, errors,
                          parallel, train, train_step)
from diffusion_lm.data import pipeline, tokenizers

ARRAY_FILES = "params/ocdbt.process_0/d/*"  # The parameters' compressed chunks.
ZSTD_MAGIC = bytes.fromhex("28b52ffd")


def on_files(pattern: str, apply):
  """Damage: `apply(path)` to each of the step's files matching `pattern`."""
  def damage(step_dir):
    paths = glob.glob(os.path.join(step_dir, pattern))
    assert paths, pattern
    for path in paths:
      apply(path)
  return damage


def truncate(path):  # Within its first zstd frame: no value reads whole.
  os.truncate(path, 8)


def zero(path):
  size = os.path.getsize(path)
  with open(path, "wb") as f:
    f.write(bytes(size))


def flip_zstd_bits(path):  # One bit of each zstd frame's magic number.
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data.replace(ZSTD_MAGIC, bytes([ZSTD_MAGIC[0] ^ 1])
                         + ZSTD_MAGIC[1:]))


def garble(path):
  with open(path, "w") as f:
    f.write("{not json")


def delete_item(item: str):
  return lambda step_dir: shutil.rmtree(os.path.join(step_dir, item))


def edit_json(step_dir, item: str, edit) -> None:
  """Edits a JSON item, and its checksum to match."""
  def rewrite(name, change):
    path = os.path.join(step_dir, name, "metadata")
    with open(path) as f:
      value = json.load(f)
    change(value)
    with open(path, "w") as f:
      json.dump(value, f)
    return value

  value = rewrite(item, edit)
  rewrite(checkpoint_integrity.CHECKSUMS, lambda sums: sums["json"].update(
      {item: checkpoint_integrity.digest(value)}))


def num_layers_as_text(step_dir):
  edit_json(step_dir, "config",
            lambda config: config["model"].update(num_layers="four"))


def unknown_objective(step_dir):
  edit_json(step_dir, "config",
            lambda config: config["model"].update(objective="bert"))


# Damage every path must pass over: mode -> (damage, part of the reason).
DAMAGE = {
    "truncated arrays": (on_files(ARRAY_FILES, truncate),
                         "params, checksums: ValueError"),
    "zeroed arrays": (on_files(ARRAY_FILES, zero),
                      "params, checksums: ValueError"),
    "deleted arrays": (on_files(ARRAY_FILES, os.remove),
                       "params, checksums: ValueError"),
    "bit-flipped arrays": (on_files(ARRAY_FILES, flip_zstd_bits),
                           "params, checksums: ValueError"),
    "garbled array metadata": (on_files("params/_METADATA", garble),
                               "params, checksums: JSONDecodeError"),
    "garbled manifest": (on_files("params/manifest.ocdbt", garble),
                         "params, checksums: ValueError"),
    "garbled config": (on_files("config/metadata", garble),
                       "config, tokenizer, checksums: JSONDecodeError"),
    "garbled tokenizer": (on_files("tokenizer/metadata", garble),
                          "config, tokenizer, checksums: JSONDecodeError"),
    "garbled checksums": (on_files("checksums/metadata", garble),
                          "config, tokenizer, checksums: JSONDecodeError"),
    "no params": (delete_item("params"), "params"),
    "no config": (delete_item("config"), "Item \"config\" was not found"),
    "no tokenizer": (delete_item("tokenizer"),
                     "Item \"tokenizer\" was not found"),
    "config field of the wrong type": (
        num_layers_as_text,
        "its config field model.num_layers is 'four': expected int, found str"),
    "config value no model has": (
        unknown_objective,
        "its model config is not valid: model.objective='bert' is not one of"),
}
# Damage to what only training reads: load, eval and sampling use the step.
TRAINING_DAMAGE = {
    "no optimizer state": (delete_item("opt_state"), "no item opt_state"),
    "deleted optimizer arrays": (on_files("opt_state/ocdbt.process_0/d/*",
                                          os.remove),
                                 "opt_state, params, checksums: ValueError"),
    "garbled loop metadata": (on_files("loop/_METADATA", garble),
                              "params, checksums: JSONDecodeError"),
    "no data position": (delete_item("data"), "no data position"),
    "garbled data position": (on_files("data/process_0-of-1.json", garble),
                              "reading data: JSONDecodeError"),
}


def stacked(run, tmp_path, damage: dict):
  """A copy of the run with copies of step 6 as steps 7, 8, ..., each with
  one damage: (workdir, {step: (mode, reason)})."""
  workdir = copy_run(run, tmp_path)
  steps = {}
  for step, (mode, (apply, reason)) in enumerate(damage.items(), start=7):
    step_dir = os.path.join(workdir, "checkpoints", str(step))
    shutil.copytree(os.path.join(workdir, "checkpoints", "6"), step_dir)
    apply(step_dir)
    steps[step] = (mode, reason)
  return workdir, steps


def assert_passed_over(log: str, steps: dict, used: int = 6):
  """One line for each damaged step, naming it and why; then `used`."""
  for step, (mode, reason) in steps.items():
    lines = [l for l in log.splitlines() if "cannot be used" in l
             and f"The checkpoint at step {step} in" in l]
    assert len(lines) == 1, (mode, lines)
    assert reason in lines[0], (mode, lines[0])
  assert f"Using the checkpoint at step {used}, the newest intact one." in log


@pytest.mark.slow
def test_load_and_eval_pass_over_every_damage(run, tmp_path, caplog):
  # Catches: orbax's bare Exception (truncated, zeroed, deleted or flipped
  # arrays), a JSON error or a config field of the wrong type ending load or
  # eval in a traceback; a failure logged twice or without its step; eval
  # warning that data fields differ when they are the same (a ConfigDict
  # compared with a dict).
  workdir, steps = stacked(run, tmp_path, DAMAGE)
  caplog.set_level(logging.INFO)
  assert api.load(workdir).step == 6
  assert_passed_over(caplog.text, steps)
  caplog.clear()
  config = run[1].copy_and_resolve_references()
  config.lock()  # As the command line's --config is.
  result = api.evaluate_checkpoint(config, workdir)
  assert_passed_over(caplog.text, steps)
  with open(os.path.join(workdir, "eval_test.json")) as f:
    assert strict_json(f.read())["step"] == 6
  assert np.isfinite(result["bits_per_byte"])
  assert "evaluating with the checkpoint's" not in caplog.text
  assert len(os.listdir(os.path.join(workdir, "checkpoints"))) == 2 + len(steps)


@pytest.mark.slow
def test_resume_passes_over_every_damage_and_moves_it_aside(run, tmp_path,
                                                            caplog):
  # Catches: training stopping with a traceback at a damaged newest step, or
  # resuming from one whose optimizer state or data position is lost, or
  # leaving one where orbax would save that step again.
  workdir, steps = stacked(run, tmp_path, {**DAMAGE, **TRAINING_DAMAGE})
  caplog.set_level(logging.WARNING)
  assert train.train_and_evaluate(run[1], workdir)["step"] == 6
  assert_passed_over(caplog.text, steps)
  aside = os.path.join(workdir, checkpoint_integrity.UNREADABLE)
  assert sorted(map(int, os.listdir(aside))) == sorted(steps)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]


@pytest.mark.slow
def test_damage_only_training_reads_leaves_the_step_to_load(run, tmp_path):
  # Catches: load refusing a step for an item it does not read.
  workdir, _ = stacked(run, tmp_path, {"no optimizer state":
                                       TRAINING_DAMAGE["no optimizer state"]})
  assert api.load(workdir).step == 7


@pytest.mark.slow
def test_orbax_metadata_alone_is_not_needed(run, tmp_path, caplog):
  # Catches: an intact checkpoint whose arrays pass their checksums passed
  # over because orbax's bookkeeping file is damaged.
  workdir, _ = stacked(run, tmp_path, {"garbled checkpoint metadata": (
      on_files("_CHECKPOINT_METADATA", garble), "")})
  caplog.set_level(logging.WARNING)
  assert api.load(workdir).step == 7
  assert "cannot be used" not in caplog.text


def sums_lost_and_params_of_step_3(step_dir):
  """Step 6's checksums gone and its weights swapped: only they would tell."""
  shutil.rmtree(os.path.join(step_dir, checkpoint_integrity.CHECKSUMS))
  shutil.rmtree(os.path.join(step_dir, "params"))
  shutil.copytree(os.path.join(step_dir, "..", "3", "params"),
                  os.path.join(step_dir, "params"))


@pytest.mark.slow
def test_a_checkpoint_without_checksums_is_unverified(run, tmp_path, caplog):
  # Catches: a checkpoint whose checksums are lost loading silently; one
  # used although the caller requires verified checkpoints.
  workdir, _ = stacked(run, tmp_path, {"unverified": (
      sums_lost_and_params_of_step_3, "")})
  caplog.set_level(logging.WARNING)
  assert api.load(workdir).step == 7
  assert (f"The checkpoint at step 7 in {workdir}/checkpoints has no "
          "checksums: it is used unverified.") in caplog.text
  caplog.clear()
  assert api.load(workdir, require_checksums=True).step == 6
  assert_passed_over(caplog.text, {7: ("unverified", "it has no checksums")})
  shutil.rmtree(os.path.join(workdir, "checkpoints", "3"))
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6",
                             checkpoint_integrity.CHECKSUMS))
  with pytest.raises(errors.UserError, match="no checkpoint in .* can be "
                     "restored: step 7: it has no checksums.*; step 6: it has "
                     "no checksums"):
    api.load(workdir, require_checksums=True)


@pytest.mark.slow
def test_resume_can_require_checksums(run, tmp_path):
  # Catches: resume's require_checksums not reaching the check.
  workdir, _ = stacked(run, tmp_path, {"unverified": (
      sums_lost_and_params_of_step_3, "")})
  config, tokenizer = run[1], tokenizers.ByteTokenizer()
  mesh = parallel.make_mesh(config.mesh)
  training = train_step.build(config, tokenizer, mesh)
  step, _, _ = checkpoints.resume(
      checkpoints.manager(workdir), training.state_target,
      lambda offset: iter(pipeline.train_dataset(config, tokenizer,
                                                 seed_offset=offset)),
      tokenizer, config.model, require_checksums=True)
  assert step == 6
  aside = os.path.join(workdir, checkpoint_integrity.UNREADABLE)
  assert os.listdir(aside) == ["7"]


@pytest.mark.slow
def test_the_sample_command_passes_over_damage_and_unverified_steps(
    run, tmp_path):
  # Catches: a traceback from the sample command at a damaged step; its
  # --require_checksums flag not passed on.
  workdir, steps = stacked(run, tmp_path, {**DAMAGE, "unverified": (
      sums_lost_and_params_of_step_3, "it has no checksums")})
  result = run_module("diffusion_lm.sample", f"--workdir={workdir}",
                      "--num_samples=1", "--length=8", "--steps=2",
                      "--require_checksums")
  assert "--- sample 0 (step 6) ---" in result.stdout
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert_passed_over(result.stderr, steps)


@pytest.mark.slow
def test_sample_paths_are_checked_first(run, tmp_path):
  # Catches: --output naming a directory failing after sampling, with a
  # traceback; a --workdir that is a file said not to exist.
  result = run_module("diffusion_lm.sample", f"--workdir={run[0]}",
                      f"--output={tmp_path}", check=False)
  assert_one_clear_error(result, f"--output={tmp_path} is a directory")
  assert "--- sample" not in result.stdout and os.listdir(tmp_path) == []
  result = run_module("diffusion_lm.sample", "--workdir=README.md", check=False)
  assert_one_clear_error(result, "--workdir=README.md is not a directory")


# ----------------------------------------------- Resuming with another config


@pytest.mark.slow
def test_resuming_with_ema_switched_on_starts_it_from_the_parameters(
    run, tmp_path, caplog):
  # Catches: intact checkpoints without an EMA passed over as corrupt; an
  # EMA started from zeros, or sharing the parameters' donated buffers.
  workdir = copy_run(run, tmp_path)
  config = run[1].copy_and_resolve_references()
  config.train.update(ema_decay=0.5, steps=7)
  config.sample.num_samples = 0
  config.model.remat = "full"  # Another layout of the computation, not shapes.
  caplog.set_level(logging.WARNING)
  result = train.train_and_evaluate(config, workdir)
  assert result["step"] == 7 and np.isfinite(result["bits_per_byte"])
  assert ("The checkpoint at step 6 has no EMA of the parameters "
          "(train.ema_decay was 0): the EMA starts from its parameters."
          ) in caplog.text
  assert "cannot be used" not in caplog.text
  # One step later the EMA is halfway between step 6's and step 7's.
  six, seven = api.load(run[0]), api.load(workdir)
  mngr = checkpoints.manager(workdir, read_only=True)
  state = checkpoints.restore_train_state(
      mngr, 7, jax.tree.map(lambda p: jax.ShapeDtypeStruct(
          p.shape, p.dtype, sharding=p.sharding), {"params": six.params}))
  for ema, before, after in zip(*map(jax.tree.leaves, (
      seven.params, six.params, state["params"]))):
    np.testing.assert_allclose(np.asarray(ema), (np.asarray(before)
                                                 + np.asarray(after)) / 2,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_resuming_with_other_shapes_names_the_fields(run, tmp_path):
  # Catches: orbax's strict=False advice (and a fallback through every
  # intact checkpoint) instead of the fields that differ.
  workdir = copy_run(run, tmp_path)
  config = run[1].copy_and_resolve_references()
  config.model.update(embed_dim=64, mlp_dim=128)
  with pytest.raises(errors.UserError) as e:
    train.train_and_evaluate(config, workdir)
  message = str(e.value)
  assert message.startswith("the checkpoint at step 6 in ")
  assert ("was saved with model.embed_dim=32 (this run: 64), model.mlp_dim=64 "
          "(this run: 128)") in message
  assert ("resume with --config.model.embed_dim=32 --config.model.mlp_dim=64 "
          "(the checkpoint's values), or start a new --workdir") in message
  assert "strict" not in message
  assert not os.path.exists(
      os.path.join(workdir, checkpoint_integrity.UNREADABLE))


# ------------------------------------------------------------------ Pieces


def test_a_saved_config_is_merged_group_by_group_and_typed(caplog):
  # Catches: a wrong type in a nested group taken as it is (or a traceback);
  # a nested group replaced whole, losing the fields added since.
  caplog.set_level(logging.WARNING)
  config = checkpoints._merged_config(
      {"data": {"markov": {"order": 3, "retired": 1}}, "model": {"depth": 2}},
      step=5)
  assert config.data.markov.order == 3
  assert config.data.markov.alphabet_size == 8  # Today's default.
  assert "data.markov.retired, model.depth" in caplog.text
  for saved, message in [
      ({"data": {"markov": {"order": "two"}}},
       "its config field data.markov.order is 'two': expected int, found str"),
      ({"model": 5}, "its config field model is 5: expected a group of "
       "fields, found int"),
      ([1], "its config is a list"),
  ]:
    with pytest.raises(checkpoint_integrity.CorruptCheckpoint, match=message):
      checkpoints._merged_config(saved, step=5)


@pytest.mark.slow
def test_infill_gaps_are_checked(run):
  # Catches: a negative, bool or float gap raising a raw ValueError or
  # TypeError (or True taken as a gap of one).
  lm = api.load(run[0])
  for gap in (-1, True, 2.5, None):
    with pytest.raises(errors.UserError, match=re.escape(
        f"infill's parts[1]={gap!r} must be a string (kept) or an integer "
        ">= 0")):
      lm.infill(["ab", gap, "cd", 2])
  with pytest.raises(errors.UserError, match="infill takes a list of parts"):
    lm.infill("ab")
  (text,) = lm.infill(["ab", 0, "cd", np.int64(2)], steps=2)  # 0: no gap.
  assert text.startswith("abcd")


class FakeManager:
  """A manager over a real checkpoint whose restore raises `error`."""

  def __init__(self, workdir, error):
    self.directory = checkpoints.manager(workdir, read_only=True).directory
    self.error = error

  def restore(self, step, args):
    raise self.error


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), SystemExit(3)])
@pytest.mark.slow
def test_interrupts_inside_a_read_error_are_not_swallowed(run, interrupt):
  # Catches: Ctrl-C (or an exit) during a restore, wrapped by orbax in a bare
  # Exception, taken for a damaged checkpoint and passed over.
  wrapped = Exception("Encountered error while reading array index")
  wrapped.__cause__ = interrupt
  with pytest.raises(type(interrupt)):
    checkpoints._restore(FakeManager(run[0], wrapped), 6, {})
  wrapped.__cause__ = ValueError("DATA_LOSS: bad chunk")
  with pytest.raises(checkpoint_integrity.CorruptCheckpoint, match=(
      "^reading checksums: ValueError: DATA_LOSS: bad chunk$")):
    checkpoints._restore(FakeManager(run[0], wrapped), 6, {})


def test_orphaned_read_filters_come_off_unless_a_read_failed(monkeypatch):
  # Catches: the hooks left on after a clean restore; stacked again after
  # every failure; taken off after one (later orphaned reads then report).
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  asyncio_log = logging.getLogger("asyncio")
  closed = Exception("Encountered error while reading array index")
  closed.__cause__ = GeneratorExit()  # A read coroutine closed unfinished.
  orphaned = [types.SimpleNamespace(exc_value=e) for e in (
      RuntimeError("Event loop is closed"), closed)]
  other = types.SimpleNamespace(exc_value=RuntimeError("something else"))
  reads = checkpoint_integrity._OrphanedReads()
  with reads.quiet():
    for unraisable in orphaned:
      sys.unraisablehook(unraisable)
    assert checkpoint_integrity._orphaned_log in asyncio_log.filters
  assert sys.unraisablehook == seen.append and seen == []
  assert checkpoint_integrity._orphaned_log not in asyncio_log.filters
  try:
    for _ in range(2):
      with pytest.raises(ValueError), reads.quiet():
        raise ValueError("a read failed")
    with reads.quiet():
      pass
    hook = sys.unraisablehook
    assert hook == reads._hook and reads._previous_hook == seen.append
    for unraisable in (*orphaned, other):
      hook(unraisable)
    assert seen == [other]
    assert asyncio_log.filters.count(checkpoint_integrity._orphaned_log) == 1
  finally:
    asyncio_log.removeFilter(checkpoint_integrity._orphaned_log)

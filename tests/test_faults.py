"""Faults a careless or unlucky user meets, and what each must produce: the
message, the exit status and what is left on disk. Bad config values, a
diverging run, damaged checkpoints, two runs on one workdir, torn and
non-finite JSON, data locations, and the CLI and API edges.

One tiny run (6 steps, checkpoints at 3 and 6) trains in this process and
serves most tests; the command lines run only where the exit status and the
one-line error are the point.
"""

import glob
import importlib.util
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO, TINY_CONFIG, config_flags, load_tiny_config, run_module

from diffusion_lm import (api, checkpoint_integrity, checkpoints, config_base,
                          errors, metrics, parallel, train, train_step,
                          validation, workdir_lock)
from diffusion_lm.data import local_files, pipeline, tokenizers

TOKENIZER = tokenizers.ByteTokenizer()


def small_config(data_dir, corpus_glob, **train_fields):
  config = load_tiny_config(data_dir, corpus_glob)
  config.train.update({"steps": 6, "checkpoint_every": 3, "eval_every": 6,
                       "log_every": 3, **train_fields})
  return config


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir, corpus_glob):
  """A finished 6-step run in this process: (workdir, config)."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = small_config(data_dir, corpus_glob)
  train.train_and_evaluate(config, workdir)
  return workdir, config


def copy_run(run, tmp_path) -> str:
  workdir = str(tmp_path / "copy")
  shutil.copytree(run[0], workdir)
  return workdir


def strict_json(text: str):
  """json.loads that refuses NaN and Infinity, as a strict parser does."""
  def refuse(token):
    raise AssertionError(f"non-standard JSON token {token}")
  return json.loads(text, parse_constant=refuse)


def assert_one_clear_error(result, *fragments):
  assert result.returncode == 1, result.stderr[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  errors_printed = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors_printed) == 1, result.stderr[-2000:]
  for fragment in fragments:
    assert fragment in errors_printed[0], errors_printed[0]


# ------------------------------------------------------------- Config check

BAD_VALUES = {  # override -> what the message must say
    "train.batch_size": (0, "train.batch_size=0 must be an integer >= 1"),
    "model.num_heads": (0, "model.num_heads=0 must be an integer >= 1"),
    "mesh.fsdp": (0, "mesh.fsdp=0 must be -1"),
    "model.head_dim": (15, "model.head_dim=15 must be an even integer"),
    "model.dtype": ("float17", "model.dtype='float17' must be one of"),
    "train.checkpoint_every": (0, "train.checkpoint_every=0 must be an integer >= 1"),
    "train.log_every": (0, "train.log_every=0 must be"),
    "train.eval_every": (0, "train.eval_every=0 must be"),
    "train.max_checkpoints": (0, "train.max_checkpoints=0 must be an integer >= 1"),
    "train.steps": (-1, "train.steps=-1 must be an integer >= 0"),
    "train.ema_decay": (1.5, "train.ema_decay=1.5 must be a number in [0, 1)"),
    "train.learning_rate": (-1e-3, "train.learning_rate=-0.001 must be a finite"),
    "eval.num_t_samples": (0, "eval.num_t_samples=0 must be an integer >= 1"),
    "eval.split": ("nosuch", "eval.split='nosuch' must be one of the splits"),
    "data.seq_len": (0, "data.seq_len=0 must be an integer >= 1"),
    "sample.sampler": ("foo", "sample.sampler='foo' is not one of"),
    "model.objective": ("bert", "model.objective='bert' is not one of"),
    "diffusion.times": ("sobol", "diffusion.times='sobol' must be one of"),
}


def test_every_bad_value_is_named_at_once(tiny_config):
  # Catches: bad values accepted silently (a hang, NaN, no checkpoints) or named one at a time.
  for field, (value, _) in BAD_VALUES.items():
    group, name = field.split(".")
    tiny_config[group][name] = value
  with pytest.raises(errors.UserError) as e:
    validation.check(tiny_config)
  message = str(e.value)
  assert message.startswith(f"{len(BAD_VALUES)} problems in the config: ")
  for field, (_, fragment) in BAD_VALUES.items():
    assert fragment in message, field
  # The sampler's own rules, for the configured sampler; a length past the
  # trained rows (RoPE would extrapolate).
  tiny_config = load_tiny_config("", "")
  tiny_config.sample.update(steps=0, length=33)
  with pytest.raises(errors.UserError) as e:
    validation.check(tiny_config)
  assert "sample.steps must be >= 1, got 0" in str(e.value)
  assert ("sample.length=33 is 33 tokens but the model was trained on rows of "
          "data.seq_len=32") in str(e.value)


def test_batches_and_mesh_are_checked_against_the_devices(tiny_config):
  # Catches: a batch the devices do not divide crashing mid-run; a mesh that does not fit.
  three = jax.devices()[:3]
  with pytest.raises(errors.UserError) as e:
    validation.check(tiny_config, devices=three)
  assert "train.batch_size=8 must be divisible by the 3 devices" in str(e.value)
  assert "eval.batch_size=8 must be divisible by the 3 devices" in str(e.value)
  # Evaluation alone does not need train.batch_size to fit.
  with pytest.raises(errors.UserError, match="^eval.batch_size=8 must be"):
    validation.check(tiny_config, devices=three, training=False)
  tiny_config.mesh.fsdp = 2
  with pytest.raises(errors.UserError, match="mesh .* does not fit 3 devices"):
    validation.check(tiny_config, devices=three, training=False)
  tiny_config.train.batch_size = 6
  with pytest.raises(errors.UserError, match="divisible by the 4 processes"):
    validation.check(tiny_config, devices=jax.devices()[:2], process_count=4)
  validation.check(load_tiny_config("", ""), devices=jax.devices())


def test_the_shipped_recipes_pass_the_check():
  # Catches: a rule so strict that a shipped recipe (or its :tiny, :ar variant) no longer starts.
  for path in sorted((REPO / "configs").glob("*.py")):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for variant in ("", "tiny", "ar", "tiny,ar"):
      validation.check(module.get_config(variant))
  validation.check(config_base.base_config())


@pytest.mark.slow
def test_a_bad_config_on_the_command_line_writes_nothing(corpus_glob, data_dir,
                                                         tmp_path):
  # Catches: bad values found after the workdir was half-written, or after training.
  workdir = tmp_path / "w"
  result = run_module("diffusion_lm.main", *config_flags(
      corpus_glob, data_dir, **{"train.batch_size": 0, "model.dtype": "float17",
                                "train.max_checkpoints": 0,
                                "eval.split": "nosuch", "sample.steps": 0}),
                      f"--workdir={workdir}", check=False)
  assert_one_clear_error(result, "5 problems in the config",
                         "train.batch_size=0", "model.dtype='float17'",
                         "train.max_checkpoints=0", "eval.split='nosuch'",
                         "sample.steps must be >= 1")
  assert not workdir.exists()


# ------------------------------------------------------- Non-finite values


@pytest.mark.slow
def test_divergence_stops_at_the_step_and_keeps_the_last_finite_checkpoint(
    data_dir, corpus_glob, tmp_path):
  # Catches: a diverged run exiting 0 after rotating out its last finite checkpoint.
  config = small_config(data_dir, corpus_glob, steps=40, checkpoint_every=2,
                        log_every=1, eval_every=40, max_checkpoints=1,
                        learning_rate=1e6, grad_clip=0.0, warmup_steps=0)
  workdir = str(tmp_path)
  with pytest.raises(errors.UserError, match="not finite .* at step") as e:
    train.train_and_evaluate(config, workdir)
  bad_step = int(str(e.value).split(" at step ")[1].split()[0].rstrip(":"))
  (kept,) = checkpoints.manager(workdir, read_only=True).all_steps()
  assert kept < bad_step and f"the last checkpoint, step {kept}, is kept" in str(e.value)
  assert api.load(workdir).step == kept  # Finite: it loads.
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [strict_json(line) for line in f]
  nonfinite = [r for r in records if "nonfinite" in r]
  assert nonfinite and nonfinite[0]["step"] == bad_step
  assert all(r[k] is None for r in nonfinite for k in r["nonfinite"])
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_FILE))


def nan_batch(config):
  batch = next(iter(pipeline.train_dataset(config, TOKENIZER)))
  return {**batch, "weights": np.full_like(batch["weights"], np.nan)}


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.slow
def test_a_nonfinite_step_is_skipped_or_recorded(tiny_config, skip):
  # Catches: skip_nonfinite_steps applying or not counting a NaN update; a bad step unrecorded.
  tiny_config.train.update(skip_nonfinite_steps=skip, ema_decay=0.9)
  mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1}),
                            devices=jax.devices()[:1])
  training = train_step.build(tiny_config, TOKENIZER, mesh)
  state = training.init()
  before = jax.device_get(state)
  state, step_metrics = training.step(
      state, parallel.global_batch(nan_batch(tiny_config), mesh))
  after = jax.device_get(state)
  assert int(after["loop"]["step"]) == 1
  if skip:
    assert int(step_metrics["train/skipped_steps"]) == 1
    for name in ("params", "opt_state", "ema"):
      for a, b in zip(jax.tree.leaves(before[name]), jax.tree.leaves(after[name])):
        np.testing.assert_array_equal(a, b)
  else:
    assert "train/skipped_steps" not in step_metrics
    assert int(after["health"]["first_nonfinite_step"]) == 1


def save_raw(workdir, step, params, config):
  """A checkpoint written as an older version did: no checksums, no check."""
  mngr = checkpoints.manager(workdir)
  mngr.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params),
      config=ocp.args.JsonSave(config.to_dict()),
      tokenizer=ocp.args.JsonSave(TOKENIZER.to_json())))
  mngr.wait_until_finished()


@pytest.mark.slow
def test_nonfinite_parameters_are_neither_saved_nor_evaluated_nor_sampled(
    run, tmp_path):
  # Catches: NaN parameters saved, or evaluated into NaN JSON, or sampled into NUL bytes.
  lm = api.load(run[0])
  params = jax.tree.map(np.asarray, lm.params)
  params["embed"] = params["embed"].copy()
  params["embed"][3, 1] = np.nan
  mngr = checkpoints.manager(str(tmp_path / "new"))
  with pytest.raises(errors.UserError, match=r"not saving .*params\['embed'\] hold NaN"):
    checkpoints.save(mngr, 1, {"params": params}, None, lm.config, TOKENIZER)
  assert mngr.all_steps() == []
  workdir = str(tmp_path / "old")
  save_raw(workdir, 7, params, lm.config)
  with pytest.raises(errors.UserError, match="step 7 .* holds NaN or infinite "
                     r"values \(params\['embed'\]\)"):
    api.load(workdir)
  with pytest.raises(errors.UserError, match="holds NaN or infinite"):
    api.evaluate_checkpoint(run[1], workdir)
  assert not glob.glob(os.path.join(workdir, "eval_*.json"))


# ------------------------------------------------------ Checkpoint integrity


def flip_bytes(workdir, step):
  """Random bytes over the middle of the step's parameter data file."""
  (path,) = glob.glob(os.path.join(workdir, "checkpoints", str(step), "params",
                                   "d", "*"))
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2:len(data) // 2 + 32] = np.random.default_rng(0).bytes(32)
  with open(path, "wb") as f:
    f.write(data)


@pytest.mark.slow
def test_flipped_bytes_fall_back_to_the_previous_checkpoint_and_resume_exactly(
    run, tmp_path, caplog):
  # Catches: a damaged latest step stopping train/eval/sample; a fallback that resumes inexactly.
  workdir = copy_run(run, tmp_path)
  flip_bytes(workdir, 6)
  caplog.set_level(logging.WARNING)
  assert api.load(workdir).step == 3
  assert "The checkpoint at step 6 in" in caplog.text and "cannot be used" in caplog.text
  result = api.evaluate_checkpoint(run[1], workdir)
  with open(os.path.join(workdir, "eval_test.json")) as f:
    assert strict_json(f.read())["step"] == 3
  assert math.isfinite(result["bits_per_byte"])
  train.train_and_evaluate(run[1], workdir)
  aside = os.path.join(workdir, checkpoint_integrity.UNREADABLE)
  assert os.listdir(aside) == ["6"]
  ours, uninterrupted = api.load(workdir), api.load(run[0])
  assert ours.step == 6
  for a, b in zip(jax.tree.leaves(ours.params), jax.tree.leaves(uninterrupted.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def replace_params_with_step_3(workdir):
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6", "params"))
  shutil.copytree(os.path.join(workdir, "checkpoints", "3", "params"),
                  os.path.join(workdir, "checkpoints", "6", "params"))


def edit_saved_config(workdir):
  path = os.path.join(workdir, "checkpoints", "6", "config", "metadata")
  with open(path) as f:
    saved = json.load(f)
  saved["data"]["data_dir"] = "/somewhere/else"
  with open(path, "w") as f:
    json.dump(saved, f)


def truncate_params(workdir):
  (path,) = glob.glob(os.path.join(workdir, "checkpoints", "6", "params", "d", "*"))
  os.truncate(path, os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage, reason", [
    (replace_params_with_step_3, "differ from their checksums"),
    (edit_saved_config, "config differs from its checksum"),
    (truncate_params, "OUT_OF_RANGE"),
])
@pytest.mark.slow
def test_damage_that_loads_is_caught_by_the_checksums(run, tmp_path, caplog,
                                                      damage, reason):
  # Catches: arrays or JSON that read back fine but are not what was saved, used as they are.
  workdir = copy_run(run, tmp_path)
  damage(workdir)
  caplog.set_level(logging.WARNING)
  assert api.load(workdir).step == 3
  assert reason in caplog.text
  with pytest.raises(errors.UserError, match="no checkpoint in .* can be "
                     f"restored: step 6: .*{reason}"):
    api.load(workdir, step=6)


# ------------------------------------------------------ One run per workdir


@pytest.mark.slow
def test_a_second_run_on_the_workdir_is_refused_and_a_dead_ones_lock_taken(
    corpus_glob, data_dir, tmp_path, caplog):
  # Catches: two runs interleaving checkpoints in one workdir; a dead run's lock kept forever.
  workdir = tmp_path / "w"
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time\n"
       "from diffusion_lm import workdir_lock\n"
       "workdir_lock.WorkdirLock(sys.argv[1]).__enter__()\n"
       "print('held', flush=True)\ntime.sleep(120)\n", str(workdir)],
      cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(errors.UserError, match=f"in use by process {holder.pid} on host"):
      with workdir_lock.WorkdirLock(str(workdir)):
        pass
    result = run_module("diffusion_lm.main", f"--config={TINY_CONFIG}",
                        f"--config.data.files={corpus_glob}",
                        f"--config.data.data_dir={data_dir}",
                        f"--workdir={workdir}", check=False)
    assert_one_clear_error(result, f"in use by process {holder.pid}",
                           "one run per workdir")
    assert os.listdir(workdir) == [workdir_lock.LOCK_FILE]
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  caplog.set_level(logging.WARNING)
  with workdir_lock.WorkdirLock(str(workdir)):
    assert f"Taking over the lock of process {holder.pid}" in caplog.text
    with open(workdir / workdir_lock.LOCK_FILE) as f:
      assert json.load(f)["pid"] == os.getpid()
  assert os.listdir(workdir) == []  # The lock goes with its holder.


# ---------------------------------------------------------------- JSON files


def test_a_torn_last_metrics_line_is_dropped_and_reported(tmp_path, caplog):
  # Catches: a torn last line (a kill mid-write) failing every later resume with a traceback.
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "train/lo')
  caplog.set_level(logging.WARNING)
  assert metrics.read_jsonl(str(tmp_path)) == [{"step": 1, "train/loss": 2.0}]
  assert "cut short" in caplog.text
  writer = metrics.MetricWriter(str(tmp_path), resume_step=5)
  writer.write(3, {"train/loss": float("nan"), "train/grad_norm": float("inf")})
  writer.close()
  lines = [strict_json(line) for line in path.read_text().splitlines()]
  assert lines == [{"step": 1, "train/loss": 2.0},
                   {"step": 3, "train/loss": None, "train/grad_norm": None,
                    "nonfinite": {"train/loss": "nan", "train/grad_norm": "inf"}}]
  path.write_text('{"step": 1}\n{"step": \n{"step": 3}\n')
  with pytest.raises(errors.UserError, match="line 2 of .* is not JSON"):
    metrics.read_jsonl(str(tmp_path))


# -------------------------------------------------------------- Data access


@pytest.mark.slow
def test_eval_reads_and_prepares_data_where_the_user_says(run, tmp_path,
                                                          caplog):
  # Catches: --mode=eval reading and preparing data where the checkpoint, not the user, says.
  workdir = copy_run(run, tmp_path)
  files = tmp_path / "corpus"
  shutil.copytree(os.path.dirname(run[1].data.files), files)
  config = load_tiny_config(tmp_path / "tfds", str(files / "*.txt"))
  config.data.seq_len = 16
  caplog.set_level(logging.INFO)
  api.evaluate_checkpoint(config, workdir)
  assert "text_files" in os.listdir(tmp_path / "tfds")  # Prepared there.
  for field in ("data_dir", "files"):
    assert (f"data.{field}={config.data[field]!r} (the checkpoint's: "
            f"{run[1].data[field]!r})") in caplog.text
  assert "data.seq_len: evaluating with the checkpoint's 32" in caplog.text


def test_text_files_stay_in_the_glob_and_under_the_size_limit(tmp_path):
  # Catches: symlinks out of the glob's directory followed silently; huge files read whole.
  outside = tmp_path / "secret.txt"
  outside.write_text("not for the corpus")
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  for i in range(3):
    (corpus / f"{i}.txt").write_text("x" * (10 + i))
  (corpus / "link.txt").symlink_to(outside)
  pattern = str(corpus / "*.txt")
  with pytest.raises(errors.UserError, match="link.txt leads through a symlink to "
                     ".*secret.txt, outside .*data.follow_symlinks=True"):
    local_files.glob_files(pattern)
  assert len(local_files.glob_files(pattern, follow_symlinks=True)[1]) == 4
  (corpus / "link.txt").unlink()
  with pytest.raises(errors.UserError, match="2.txt is 12 bytes, more than "
                     "data.max_file_bytes=11"):
    local_files.glob_files(pattern, max_file_bytes=11)


# --------------------------------------------------------- CLI and API edges


@pytest.mark.slow
def test_api_edges_are_clear_errors(run):
  # Catches: num_samples <= 0, lengths past the trained rows, a missing step, score([]).
  lm = api.load(run[0])
  for n in (0, -1):
    with pytest.raises(errors.UserError, match=f"num_samples must be an integer >= 1, got {n}"):
      lm.sample(n, length=8)
  with pytest.raises(errors.UserError, match="length must be an integer >= 1"):
    lm.sample(1, length=0)
  with pytest.raises(errors.UserError, match="the sample is 33 tokens but the "
                     "model was trained on rows of data.seq_len=32"):
    lm.sample(1, length=33)
  with pytest.raises(errors.UserError, match="the sample is 40 tokens"):
    lm.infill(["a" * 20, 20])
  with pytest.raises(errors.UserError, match=r"no checkpoint at step 99 in .*steps are \[3, 6\]"):
    api.load(run[0], step=99)
  with pytest.raises(errors.UserError, match="sample.temperature must be >= 0, got nan"):
    lm.sample(1, length=8, temperature=float("nan"))
  assert lm.score([]) == []


@pytest.mark.slow
def test_sampling_a_damaged_checkpoint_falls_back_without_a_traceback(
    run, tmp_path):
  # Catches: a 100-line orbax traceback although the previous checkpoint is intact.
  workdir = copy_run(run, tmp_path)
  flip_bytes(workdir, 6)
  result = run_module("diffusion_lm.sample", f"--workdir={workdir}",
                      "--num_samples=1", "--length=8", "--steps=2")
  assert "--- sample 0 (step 3) ---" in result.stdout
  assert "The checkpoint at step 6" in result.stderr
  assert "Traceback" not in result.stderr, result.stderr[-3000:]


@pytest.mark.slow
def test_sample_output_in_a_missing_directory_is_refused_first(run, tmp_path):
  # Catches: a traceback after the samples were printed, with a .tmp file left behind.
  output = tmp_path / "missing" / "samples.jsonl"
  result = run_module("diffusion_lm.sample", f"--workdir={run[0]}",
                      f"--output={output}", check=False)
  assert_one_clear_error(result, f"--output={output}: the directory",
                         "does not exist")
  assert "--- sample" not in result.stdout
  assert not (tmp_path / "missing").exists()

"""User errors and signals that must end in one clear line (or a clean stop),
with nothing left behind: bad workdirs and config files, data that cannot
train, a full disk, a stale or torn lock, and SIGTERM during the last
checkpoint."""

import ctypes
import errno
import json
import logging
import os
import re
import resource
import signal
import subprocess
import sys

import pytest

from conftest import config_flags, load_tiny_config, run_module, write_corpus
from test_faults import assert_one_clear_error

from diffusion_lm import (checkpoints, cli, errors, metrics, train,
                          workdir_lock)
from diffusion_lm.data import corpora, local_files


def quick_config(data_dir, files):
  config = load_tiny_config(data_dir, files)
  config.train.update(steps=4, checkpoint_every=2, eval_every=4, log_every=2)
  config.sample.num_samples = 0
  return config


# --------------------------------------------------------------- SIGTERM


@pytest.mark.slow
def test_sigterm_during_the_last_checkpoint_stops_before_the_final_evaluation(
    data_dir, corpus_glob, tmp_path, monkeypatch):
  # Catches: a SIGTERM during the last save ignored: the final evaluation
  # runs and the run exits 0, where a preempted job must stop (status 143).
  config = quick_config(data_dir, corpus_glob)
  workdir = str(tmp_path)
  save = checkpoints.save

  def save_then_sigterm(mngr, step, *args, **kwargs):
    save(mngr, step, *args, **kwargs)
    if step == config.train.steps:
      os.kill(os.getpid(), signal.SIGTERM)  # While the save is in flight.

  monkeypatch.setattr(checkpoints, "save", save_then_sigterm)
  assert train.train_and_evaluate(config, workdir) == {"preempted": True,
                                                       "step": 4}
  assert checkpoints.manager(workdir, read_only=True).latest_step() == 4
  assert not any("eval/bits_per_byte" in r for r in metrics.read_jsonl(workdir))
  monkeypatch.undo()
  # The next run finds training done and only evaluates.
  result = train.train_and_evaluate(config, workdir)
  assert not result["preempted"] and result["step"] == 4
  assert [r["step"] for r in metrics.read_jsonl(workdir)
          if "eval/bits_per_byte" in r] == [4]


# ------------------------------------------------------------------ Lock


def test_a_reused_pid_or_a_torn_record_does_not_hold_the_lock(tmp_path,
                                                              caplog):
  # Catches: a dead run's lock refused ("stop it") because its pid now names
  # an unrelated process; a torn record named as "process ? on host '?'".
  caplog.set_level(logging.WARNING)
  lock = tmp_path / workdir_lock.LOCK_FILE
  with workdir_lock.WorkdirLock(str(tmp_path)):
    ours = json.loads(lock.read_text())
  assert ours["process_start"]  # Linux has /proc.
  unrelated = subprocess.Popen(["sleep", "60"])
  try:
    # The holder's record with the pid of another process, started later.
    lock.write_text(json.dumps({**ours, "pid": unrelated.pid}))
    with workdir_lock.WorkdirLock(str(tmp_path)):
      pass
    assert (f"pid {unrelated.pid} belongs to another process now"
            in caplog.text)
    # Without a start time (no /proc) a live pid still counts as the holder.
    del ours["process_start"]
    lock.write_text(json.dumps({**ours, "pid": unrelated.pid}))
    with pytest.raises(errors.UserError, match=f"in use by process "
                       f"{unrelated.pid} .* wait for it to finish or stop it"):
      with workdir_lock.WorkdirLock(str(tmp_path)):
        pass
  finally:
    unrelated.kill()
    unrelated.wait()
  lock.write_text('{"host": "vm", "pi')  # Its writer killed mid-write.
  caplog.clear()
  with workdir_lock.WorkdirLock(str(tmp_path)):
    assert "holds no readable record ('{\"host\": \"vm\", \"pi')" in caplog.text
  # A torn record whose flock is held: refused, and said so.
  lock.write_text('{"host": "vm", "pi')
  holder = subprocess.Popen(
      [sys.executable, "-c", "import fcntl, sys, time\n"
       "f = open(sys.argv[1], 'a')\nfcntl.flock(f, fcntl.LOCK_EX)\n"
       "print('held', flush=True)\ntime.sleep(60)\n", str(lock)],
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(errors.UserError, match="in use by a process whose "
                       "record is unreadable"):
      with workdir_lock.WorkdirLock(str(tmp_path)):
        pass
  finally:
    holder.kill()
    holder.wait()


# ----------------------------------------------- Workdir and config files


MISSING = "the --config file cannot be loaded: [Errno 2] No such file or "


@pytest.mark.parametrize("case", [
    "workdir is a file", "workdir under a file", "missing config",
    "missing config, with overrides", "unknown variant"])
def test_bad_workdirs_and_config_files_are_one_line(case, corpus_glob,
                                                    data_dir, tmp_path):
  # Catches: tracebacks (FileExistsError, NotADirectoryError, ml_collections'
  # IOError, its ValueError with a traceback inside) instead of one line.
  a_file = tmp_path / "a_file"
  a_file.write_text("mine")
  config = config_flags(corpus_glob, data_dir)
  flags, expected = {
      "workdir is a file": (
          [*config, f"--workdir={a_file}"],
          f"--workdir={a_file} is not a directory"),
      "workdir under a file": (
          [*config, f"--workdir={a_file}/run"],
          f"--workdir={a_file}/run lies under {a_file}, which is not a "
          "directory"),
      "missing config": (["--config=nope.py"], MISSING),
      "missing config, with overrides": (
          ["--config=nope.py", "--config.train.steps=3"], MISSING),
      "unknown variant": (
          ["--config=configs/quickstart.py:bogus"],
          "flag --config=configs/quickstart.py:bogus: unknown config variant "
          "'bogus'; one of"),
  }[case]
  if not any(f.startswith("--workdir") for f in flags):
    flags.append(f"--workdir={tmp_path / 'run'}")
  result = run_module("diffusion_lm.main", *flags, check=False)
  assert_one_clear_error(result, expected)
  assert os.listdir(tmp_path) == ["a_file"]
  assert a_file.read_text() == "mine"


# The commands below change their process between fork and exec
# (preexec_fn), with a system call each and nothing that takes a lock.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl  # Looked up before forking.
fork_while_jax_runs = pytest.mark.filterwarnings("ignore:os.fork")


def _obey_file_permissions():
  """Drops CAP_DAC_OVERRIDE from the bounding set, so that after exec even
  root is refused a directory without write permission."""
  if _PRCTL(24, 1, 0, 0, 0):  # PR_CAPBSET_DROP, CAP_DAC_OVERRIDE
    raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@fork_while_jax_runs
@pytest.mark.slow
def test_a_workdir_that_is_not_writable_is_one_line(corpus_glob, data_dir,
                                                    tmp_path):
  # Catches: a PermissionError traceback from creating the workdir.
  parent = tmp_path / "read_only"
  parent.mkdir(mode=0o555)
  try:  # Root writes anywhere unless it drops that capability.
    result = run_module(
        "diffusion_lm.main", *config_flags(corpus_glob, data_dir),
        f"--workdir={parent / 'run'}", check=False,
        preexec_fn=_obey_file_permissions if os.geteuid() == 0 else None)
  finally:
    parent.chmod(0o755)
  assert_one_clear_error(result, f"--workdir={parent}/run cannot be created: "
                         f"{parent} is not writable")
  assert not os.listdir(parent)


# ----------------------------------------------------------------- Data


def _latin1_corpus(directory):
  directory.mkdir()
  for i in range(3):
    (directory / f"{i}.txt").write_bytes(b"un caf\xe9 noir " * (i + 1))
  return str(directory / "*.txt")


def _empty_corpus(directory):
  directory.mkdir()
  for i in range(3):
    (directory / f"{i}.txt").write_bytes(b"")
  return str(directory / "*.txt")


@pytest.mark.parametrize("case", ["data_dir is a file", "char on latin-1",
                                  "empty files"])
def test_data_that_cannot_train_is_refused_leaving_the_workdir_as_it_was(
    case, corpus_glob, tmp_path):
  # Catches: a NotADirectoryError traceback; a char-tokenizer error naming
  # no file; an empty corpus training to inf bits/byte; and an empty
  # checkpoints/ left in the workdir by a refused run.
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "notes.txt").write_text("the user's")
  data_dir, files, tokenizer = tmp_path / "tfds", corpus_glob, "byte"
  if case == "data_dir is a file":
    data_dir = tmp_path / "a_file"
    data_dir.write_text("")
    expected = f"data.data_dir={data_dir} is not a directory"
  elif case == "char on latin-1":
    files, tokenizer = _latin1_corpus(tmp_path / "latin1"), "char"
    expected = (f"cannot encode '\ufffd' (byte 0xe9) at byte 6 of "
                f"{tmp_path}/latin1/")
  else:
    files = _empty_corpus(tmp_path / "empty")
    expected = (f"data.files={files!r}: the 3 files it matches are all empty "
                "(0 bytes)")
  config = quick_config(str(data_dir), files)
  config.data.tokenizer = tokenizer
  with pytest.raises(errors.UserError, match=re.escape(expected)):
    train.train_and_evaluate(config, str(workdir))
  assert os.listdir(workdir) == ["notes.txt"]


def test_a_split_of_empty_files_is_named(tmp_path):
  # Catches: a corpus whose validation files are all empty: inf bits/byte.
  pattern = write_corpus(tmp_path)
  (tmp_path / "doc_11.txt").write_text("")  # The validation split's only file.
  with pytest.raises(errors.UserError, match="every file of the validation "
                     r"split is empty \(doc_11.txt\)"):
    local_files.glob_files(pattern)


# ---------------------------------------------------------- Whole runs


def _limit_file_size():  # ulimit -f 64
  resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))


@fork_while_jax_runs
@pytest.mark.parametrize("writing", ["checkpoint", "corpus"])
@pytest.mark.slow
def test_a_full_disk_is_one_line_naming_the_file(writing, corpus_glob,
                                                 data_dir, tmp_path):
  # Catches: ~500 lines of orbax and tensorstore tracebacks (a checkpoint),
  # or TFDS's and array_record's (preparing the corpus), for `ulimit -f 64`.
  workdir = tmp_path / "run"
  if writing == "checkpoint":
    corpora.builder(load_tiny_config(data_dir, corpus_glob).data)  # Prepared.
    expected = f"while writing {workdir}/checkpoints/"
  else:
    data_dir = tmp_path / "tfds"
    expected = f"File too large; writing {data_dir}/text_files/"
  # A checkpoint: step 1's fails in the background, and step 2's save says so.
  result = run_module("diffusion_lm.main", *config_flags(
      corpus_glob, data_dir, **{"train.steps": 3, "train.checkpoint_every": 1,
                                "train.eval_every": 3}),
                      f"--workdir={workdir}", check=False,
                      preexec_fn=_limit_file_size)
  assert_one_clear_error(result, "error: the file size limit (ulimit -f) was "
                         "reached", expected, "run the command again")
  assert len(result.stderr.splitlines()) < 40, result.stderr[-3000:]
  if writing == "corpus":  # Before the run's first write.
    assert not workdir.exists()
  else:
    assert workdir_lock.LOCK_FILE not in os.listdir(workdir)


def test_a_full_disk_is_found_behind_the_errors_that_wrap_it():
  # Catches: ENOSPC missed when a library raises its own error from it.
  try:
    try:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/d/metrics.jsonl")
    except OSError as e:
      raise RuntimeError("the writer thread failed") from e
  except RuntimeError as e:
    wrapped = e
  assert cli._no_space(wrapped) == (  # pylint: disable=protected-access
      "the disk is full while writing /d/metrics.jsonl")
  assert cli._no_space(RuntimeError("other")) is None  # pylint: disable=protected-access


def test_late_tensorstore_callbacks_are_dropped_other_unraisables_kept(
    monkeypatch, capsys):
  # Catches: after a full disk failed one write of a checkpoint, a traceback
  # for each of its other writes that finished on the loop orbax had closed
  # (seen in 1 of ~20 runs of the test above).
  import asyncio  # pylint: disable=g-import-not-at-top
  import tensorstore  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
  monkeypatch.setattr(logging.getLogger("absl"), "filters", [])
  cli.quiet_library_logs()
  promise, future = tensorstore.Promise.new()

  async def wait():
    await future

  loop = asyncio.new_event_loop()
  task = loop.create_task(wait())
  loop.run_until_complete(asyncio.sleep(0.01))  # The task waits on `future`.
  loop.close()
  promise.set_result(None)  # Its callback finds the loop closed.
  task._log_destroy_pending = False  # pylint: disable=protected-access
  RaisesWhenCollected()  # Another unraisable error, still reported.
  err = capsys.readouterr().err
  assert "Event loop is closed" not in err and "ValueError: kept" in err, err


class RaisesWhenCollected:

  def __del__(self):
    raise ValueError("kept")


@pytest.mark.slow
def test_zero_steps_evaluate_without_asking_for_a_checkpoint(corpus_glob,
                                                             data_dir,
                                                             tmp_path):
  # Catches: "no checkpoint ... train one first" (exit 1) after train.steps=0
  # evaluated the untrained model as asked.
  result = run_module("diffusion_lm.main", *config_flags(
      corpus_glob, data_dir, **{"train.steps": 0}), f"--workdir={tmp_path}")
  assert "error:" not in result.stderr
  assert "No samples: train.steps=0 trained no checkpoint" in result.stderr
  assert [r["step"] for r in metrics.read_jsonl(str(tmp_path))
          if "eval/bits_per_byte" in r] == [0]

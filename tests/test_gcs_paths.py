"""Workdirs given as gs:// URLs, against a stand-in bucket: gs://NAME/... are
files under a temporary directory, reached through etils.epath's fsspec
backend as real buckets are, and like GCS objects they cannot be appended to.
(Orbax writes its arrays through TensorStore, which this stand-in does not
reach: checkpoint paths are tested as paths.)"""

import importlib
import json
import os
import socket

import pytest
from absl import logging
from etils.epath import backend
from fsspec.implementations import local
from tensorboardX import SummaryWriter

from diffusion_lm import checkpoints, errors, files, metrics, workdir_lock


@pytest.fixture()
def bucket(tmp_path, monkeypatch):
  """The local directory that stands for gs://."""
  root = tmp_path / "gs"

  class Bucket(local.LocalFileSystem):
    protocol = ("gs", "gcs")

    def __init__(self, **kwargs):
      del kwargs
      super().__init__(auto_mkdir=True)  # GCS has no directories to make.

    @classmethod
    def _strip_protocol(cls, path):
      return str(root / str(path).split("://", 1)[-1])

    def _open(self, path, mode="rb", **kwargs):
      if "a" in mode:
        raise NotImplementedError("GCS objects cannot be appended to")
      return super()._open(path, mode, **kwargs)

  monkeypatch.setenv("EPATH_USE_TF", "false")
  monkeypatch.setattr(backend.fsspec_backend, "_get_filesystem",
                      lambda name: Bucket())
  return root


@pytest.fixture()
def tensorboard_in_bucket(bucket, monkeypatch):
  """TensorBoard's gs:// writer (google-cloud-storage) into the stand-in."""
  monkeypatch.setattr(metrics, "_check_gcs_client", lambda logdir: None)
  monkeypatch.setattr(metrics, "SummaryWriter", lambda logdir: SummaryWriter(
      str(bucket / logdir.split("://", 1)[-1])))


def test_checkpoint_dir_keeps_a_url_and_makes_a_local_path_absolute():
  # Bug: os.path.abspath turned gs://b/run into <cwd>/gs:/b/run.
  assert checkpoints.checkpoint_dir("gs://b/run") == "gs://b/run/checkpoints"
  assert checkpoints.checkpoint_dir("runs/q") == os.path.join(
      os.getcwd(), "runs", "q", "checkpoints")


def test_metrics_on_a_bucket_are_rewritten_whole_and_truncated_on_resume(
    bucket, tensorboard_in_bucket):
  # Bug: metrics.jsonl was opened for appending, which GCS objects refuse.
  writer = metrics.MetricWriter("gs://b/run")
  for step in (1, 2, 3):
    writer.write(step, {"train/loss": float(step)})
  writer.close()
  assert [r["step"] for r in metrics.read_jsonl("gs://b/run")] == [1, 2, 3]
  assert (bucket / "b" / "run" / "metrics.jsonl").exists()
  metrics.MetricWriter("gs://b/run", resume_step=2).close()
  assert [r["step"] for r in metrics.read_jsonl("gs://b/run")] == [1, 2]


def test_write_atomically_writes_an_object_whole(bucket):
  # Bug: the temporary file and os.replace were local-only operations.
  files.write_atomically("gs://b/run/eval_test.json", '{"a": 1}')
  assert json.loads((bucket / "b" / "run" / "eval_test.json").read_text()) == {
      "a": 1}
  assert os.listdir(bucket / "b" / "run") == ["eval_test.json"]


def test_tensorboard_on_gs_without_its_client_is_one_clear_error(bucket):
  # Bug: tensorboardX's ImportError for gs:// surfaced as a traceback.
  try:
    importlib.import_module("google.cloud.storage")
    pytest.skip("google-cloud-storage is installed")
  except ImportError:
    pass
  with pytest.raises(errors.UserError, match="pip install google-cloud-storage"):
    metrics.MetricWriter("gs://b/run")


def test_the_lock_of_a_url_workdir_refuses_a_live_holder_and_warns(
    bucket, monkeypatch):
  # Bug: the lock used flock and os.open on a path that is not local.
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *a: warnings.append(msg % a))
  lock_file = bucket / "b" / "run" / "lock"
  with workdir_lock.WorkdirLock("gs://b/run"):
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert any("cannot be taken atomically" in w for w in warnings)
    with pytest.raises(errors.UserError, match="in use by process"):
      # Another process on this host (our parent) holds it.
      lock_file.write_text(json.dumps({"host": socket.gethostname(),
                                       "pid": os.getppid()}))
      with workdir_lock.WorkdirLock("gs://b/run"):
        pass
  assert lock_file.exists()  # Not ours any more: left to its holder.
  lock_file.write_text(json.dumps({"host": socket.gethostname(),
                                   "pid": 2**22 + 1}))  # No such process.
  with workdir_lock.WorkdirLock("gs://b/run"):
    assert any("Taking over" in w for w in warnings)
  assert not lock_file.exists()

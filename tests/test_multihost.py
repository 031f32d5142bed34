"""Two processes x 2 CPU devices, joined by launch/local.sh, train as one job:
the same losses as 1 process x 4 devices, one SIGTERM stops both with one
checkpoint, and 1 process on another mesh resumes it to the same losses.

The corpus's documents are distinct and packed with data.packing=wrap: the
global batch is the same rows in the same order whichever processes read them
(pipeline.train_dataset; tests/test_data.py checks the rows themselves), and
the step's random draws do not depend on how the batch is sharded.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, TINY_CONFIG

STEPS = 120


@pytest.fixture(scope="module")
def flags(corpus_glob, data_dir):
  return [f"--config={TINY_CONFIG}", f"--config.data.files={corpus_glob}",
          f"--config.data.data_dir={data_dir}", f"--config.train.steps={STEPS}",
          "--config.train.log_every=2", "--config.train.checkpoint_every=1000",
          "--config.train.eval_every=1000", "--config.sample.num_samples=0"]


def losses(workdir, name: str = "train/loss") -> dict[int, float]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f if line.strip()]
  return {r["step"]: r[name] for r in records if name in r}


def main(flags, workdir, devices: int, *extra):
  """One process of `devices` CPU devices."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices))
  return subprocess.run(
      [sys.executable, "-m", "diffusion_lm.main", *flags, *extra,
       f"--workdir={workdir}"], env=env, cwd=REPO, capture_output=True,
      text=True, timeout=300)


def pid_of_process(index: int, workdir) -> int:
  """The pid of the job's process `index` (JAX_PROCESS_ID in its environment)."""
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/environ", "rb") as f:
        environ = f.read().split(b"\0")
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    except OSError:
      continue
    if (f"JAX_PROCESS_ID={index}".encode() in environ
        and f"--workdir={workdir}".encode() in argv and b"-m" in argv):
      return int(pid)
  raise AssertionError(f"no process {index} of the job in {workdir}")


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds pids in /proc")
@pytest.mark.slow
def test_two_processes_train_stop_and_resume_as_one_job(flags, tmp_path):
  # Bugs: processes that read other rows than one process would, assemble
  # the global batch in another order or average gradients over their own
  # devices only (losses or gradient norms differ from the 4-device run); a
  # SIGTERM to one process that leaves the other running or saves two
  # different steps; a checkpoint that only restores onto the process count
  # and mesh that wrote it.
  reference = tmp_path / "one_process"
  result = main(flags, reference, 4)
  assert result.returncode == 0, result.stderr[-3000:]

  workdir = tmp_path / "two_processes"
  job = subprocess.Popen(
      ["launch/local.sh", "--num_processes=2", "--devices_per_process=2",
       f"--log_dir={tmp_path / 'logs'}", "--", sys.executable, "-m",
       "diffusion_lm.main", *flags, f"--workdir={workdir}"],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 240
  while not (workdir / "metrics.jsonl").exists() or 6 not in losses(workdir):
    assert job.poll() is None, job.stdout.read()[-3000:]
    assert time.time() < deadline
    time.sleep(0.05)
  os.kill(pid_of_process(1, workdir), signal.SIGTERM)  # Not the coordinator.
  output, _ = job.communicate(timeout=120)
  logs = [(tmp_path / "logs" / f"process_{i}.log").read_text() for i in (0, 1)]
  # Preempted: both stop (status 143) at one step, with one checkpoint there.
  assert job.returncode == 143, output[-3000:]
  saved = [int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()]
  assert len(saved) == 1 and 6 <= saved[0] < STEPS, saved
  for log in logs:
    assert f"Preempted: saving the checkpoint at step {saved[0]}." in log
  positions = os.listdir(workdir / "checkpoints" / str(saved[0]) / "data")
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(positions)
  two = losses(workdir)
  one = losses(reference)
  assert max(two) >= 6
  for name in ("train/loss", "train/grad_norm"):
    expected = losses(reference, name)
    for step, value in losses(workdir, name).items():
      assert value == pytest.approx(expected[step], rel=1e-5), (name, step)

  # 1 process, 2 devices, parameters sharded (fsdp) instead of replicated.
  result = main(flags, workdir, 2, "--config.mesh.fsdp=2")
  assert result.returncode == 0, result.stderr[-3000:]
  resumed = losses(workdir)
  assert sorted(resumed) == sorted(one)
  for step, loss in resumed.items():
    assert loss == pytest.approx(one[step], rel=1e-5), step


@pytest.mark.slow
def test_two_processes_prepare_the_corpus_and_train_the_tokenizer_once(
    corpus_glob, tmp_path):
  # Bug caught: only process 0 prepared the corpus and trained the
  # first-use tokenizer, so the processes met at different barriers and the
  # job hung; or every process wrote the same files at once.
  data_dir = tmp_path / "tfds"
  model = "spm_unigram_300.model"
  result = subprocess.run(
      ["launch/local.sh", "--num_processes=2", "--devices_per_process=1",
       "--", sys.executable, "-m", "diffusion_lm.main",
       f"--config={TINY_CONFIG}", f"--config.data.files={corpus_glob}",
       f"--config.data.data_dir={data_dir}",
       "--config.data.tokenizer=sentencepiece",
       f"--config.data.tokenizer_model={model}",
       "--config.data.tokenizer_train.vocab_size=300",
       "--config.train.steps=2", "--config.sample.num_samples=0",
       f"--workdir={tmp_path / 'run'}"],
      cwd=REPO, capture_output=True, text=True, timeout=240)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert len(list(data_dir.rglob(model))) == 1
  assert result.stdout.count("Training a unigram sentencepiece model") == 1

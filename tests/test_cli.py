"""End to end through the command lines: train, resume, preempt, evaluate,
sample; and bad input, which must fail with one clear line and write nothing.

The reference run (conftest) trains the tiny config once; the kill and SIGTERM
tests interrupt the same command and restart it, and must end with exactly
the reference run's parameters and final loss.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import (REPO, STEPS, TRAIN_OVERRIDES, config_flags, run_module,
                      train_flags)

from diffusion_lm import api, metrics


def final_loss(workdir):
  records = metrics.read_jsonl(workdir)
  return [r["train/loss"] for r in records if r["step"] == STEPS and "train/loss" in r]


def assert_same_run(workdir, reference_dir):
  assert final_loss(workdir) == final_loss(reference_dir)
  steps = [r["step"] for r in metrics.read_jsonl(workdir) if "train/loss" in r]
  assert steps == list(range(5, STEPS + 1, 5))  # No step logged twice.
  ours, theirs = api.load(workdir), api.load(reference_dir)
  assert ours.step == theirs.step == STEPS
  for a, b in zip(jax.tree.leaves(ours.params), jax.tree.leaves(theirs.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_training_writes_metrics_checkpoints_and_samples(reference):
  workdir, log = reference
  records = metrics.read_jsonl(workdir)
  losses = [r["train/loss"] for r in records if "train/loss" in r]
  assert np.mean(losses[-3:]) < losses[0] - 0.5  # Training lowers the loss.
  final = [r for r in records if "eval/bits_per_byte" in r]
  assert len(final) == 1 and final[0]["step"] == STEPS
  # Far below uniform over bytes (8.0); measured 4.7 +- 0.3.
  assert final[0]["eval/bits_per_byte"] < 6.0
  assert 0 < final[0]["eval/bits_per_byte_stderr"] < 1.0
  assert final[0]["eval/perplexity"] == pytest.approx(
      2 ** final[0]["eval/bits_per_token"])
  assert all(r["train/tokens_per_s"] > 0 for r in records if "train/loss" in r)
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert "sample 0:" in log and f"step {STEPS}/{STEPS}" in log
  assert "orbax" not in log  # Library INFO lines are filtered out.


def start(corpus_glob, data_dir, workdir):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.Popen(
      [sys.executable, "-m", "diffusion_lm.main",
       *train_flags(corpus_glob, data_dir, workdir)],
      cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(workdir, step, proc, timeout=300):
  path = os.path.join(workdir, "checkpoints", str(step))
  deadline = time.time() + timeout
  while not os.path.isdir(path):
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    assert time.time() < deadline
    time.sleep(0.01)


def completed_steps(workdir):
  ckpt = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())


@pytest.mark.slow
def test_resume_after_sigkill_equals_the_uninterrupted_run(
    reference, corpus_glob, data_dir, tmp_path):
  proc = start(corpus_glob, data_dir, tmp_path)
  wait_for_checkpoint(tmp_path, 5, proc)
  proc.kill()
  proc.wait()
  assert completed_steps(tmp_path)[-1] < STEPS  # Killed mid-run.
  run_module("diffusion_lm.main", *train_flags(corpus_glob, data_dir, tmp_path))
  assert_same_run(str(tmp_path), reference[0])


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resumes_exactly(
    reference, corpus_glob, data_dir, tmp_path):
  proc = start(corpus_glob, data_dir, tmp_path)
  wait_for_checkpoint(tmp_path, 5, proc)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 143, stderr[-3000:]
  stopped_at = completed_steps(tmp_path)[-1]
  assert 5 <= stopped_at < STEPS
  assert f"Preempted: saving the checkpoint at step {stopped_at}" in stderr
  run_module("diffusion_lm.main", *train_flags(corpus_glob, data_dir, tmp_path))
  assert_same_run(str(tmp_path), reference[0])


@pytest.mark.slow
def test_rerunning_a_finished_run_keeps_one_record_per_step(
    reference, corpus_glob, data_dir, tmp_path):
  # Bug caught: the final evaluation appended again to metrics.jsonl.
  workdir = tmp_path / "copy"
  shutil.copytree(reference[0], workdir)
  before = metrics.read_jsonl(str(workdir))
  run_module("diffusion_lm.main", *train_flags(corpus_glob, data_dir, workdir))
  assert metrics.read_jsonl(str(workdir)) == before


@pytest.mark.slow
def test_eval_mode_writes_the_bounds(reference, corpus_glob, data_dir):
  workdir, _ = reference
  run_module("diffusion_lm.main", *config_flags(
      corpus_glob, data_dir, **{"eval.num_t_samples": 2}), f"--workdir={workdir}",
             "--mode=eval")
  with open(os.path.join(workdir, "eval_test.json")) as f:
    result = json.load(f)
  assert (result["step"], result["split"], result["num_t_samples"]) == (
      STEPS, "test", 2)
  final = [r for r in metrics.read_jsonl(workdir) if "eval/bits_per_byte" in r]
  assert len(final) == 1  # --mode=eval writes only its JSON file.
  # Other estimates of the same bound: equal within their standard errors.
  error = np.hypot(result["bits_per_byte_stderr"],
                   final[0]["eval/bits_per_byte_stderr"])
  assert abs(result["bits_per_byte"] - final[0]["eval/bits_per_byte"]) < 4 * error


@pytest.mark.slow
def test_sample_cli_prints_and_writes_jsonl(reference, tmp_path):
  workdir, _ = reference
  output = tmp_path / "samples.jsonl"
  result = run_module("diffusion_lm.sample", f"--workdir={workdir}",
                      "--num_samples=3", "--length=24", "--steps=6",
                      "--prompt=def ", "--sampler=confidence", f"--output={output}")
  lines = [json.loads(line) for line in output.read_text().splitlines()]
  assert len(lines) == 3
  assert all(line["text"].startswith("def ") and line["step"] == STEPS for line in lines)
  assert all(1 <= line["network_calls"] <= 6 for line in lines)
  assert result.stdout.count("--- sample") == 3
  # 3 x 20 generated tokens, 6 steps of confidence: 18 calls at most.
  stats = result.stdout.splitlines()[-1]
  assert "3 samples, 60 generated tokens" in stats and "tokens/s" in stats
  calls = float(stats.split(" network calls per token")[0].rsplit(" ", 1)[1])
  assert calls == pytest.approx(sum(l["network_calls"] for l in lines) / 60, abs=1e-3)


@pytest.mark.slow
def test_show_steps_prints_the_sequence_filling_in(reference):
  # Bug caught: frames that do not grow by exactly the committed tokens.
  result = run_module("diffusion_lm.sample", f"--workdir={reference[0]}",
                      "--num_samples=1", "--length=12", "--sampler=threshold",
                      "--threshold=0.5", "--show_steps", "--seed=3")
  frames = result.stdout.split("--- iteration ")[1:]
  assert frames
  hidden = [frame.split("---\n", 1)[1].rstrip("\n").count("\u00b7")
            for frame in frames]
  committed = [int(frame.split(": ", 1)[1].split(" ", 1)[0]) for frame in frames]
  assert hidden[-1] == 0 and sum(committed) == 12
  assert all(a - b == c for a, b, c in zip([12] + hidden, hidden, committed))


@pytest.mark.slow
def test_sampler_options_are_checked_against_the_sampler(reference):
  result = run_module("diffusion_lm.sample", f"--workdir={reference[0]}",
                      "--sampler=ancestral", "--gamma=0.5", check=False)
  assert_one_clear_error(result, "sampler 'ancestral' does not read gamma")
  result = run_module("diffusion_lm.sample", f"--workdir={reference[0]}",
                      "--sampler=greedy", check=False)
  assert_one_clear_error(result, "sample.sampler='greedy' is not one of")


def assert_one_clear_error(result, *fragments):
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  for fragment in fragments:
    assert fragment in result.stderr, result.stderr[-2000:]


@pytest.mark.slow
def test_unknown_config_field_is_named(corpus_glob, data_dir, tmp_path):
  result = run_module("diffusion_lm.main", *config_flags(corpus_glob, data_dir),
                      "--config.train.stpes=3", f"--workdir={tmp_path / 'w'}",
                      check=False)
  assert_one_clear_error(result, "stpes")
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_empty_glob_is_named(data_dir, tmp_path):
  pattern = str(tmp_path / "nothing" / "*.txt")
  result = run_module("diffusion_lm.main", *config_flags(pattern, data_dir),
                      f"--workdir={tmp_path / 'w'}", check=False)
  assert_one_clear_error(result, f"data.files={pattern!r} matches no files")
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_sampling_needs_an_existing_workdir(tmp_path):
  result = run_module("diffusion_lm.sample", f"--workdir={tmp_path / 'nope'}",
                      check=False)
  assert_one_clear_error(result, "--workdir=", "does not exist")
  result = run_module("diffusion_lm.sample", f"--workdir={tmp_path}", check=False)
  assert_one_clear_error(result, "no checkpoint in")


@pytest.mark.slow
def test_prompt_longer_than_the_sample_is_refused(reference, tmp_path):
  output = tmp_path / "samples.jsonl"
  result = run_module("diffusion_lm.sample", f"--workdir={reference[0]}",
                      "--length=8", "--prompt=" + "x" * 8, f"--output={output}",
                      check=False)
  assert_one_clear_error(result, "the prompt is 8 tokens but the sample length is 8")
  assert not output.exists() and not (tmp_path / "samples.jsonl.tmp").exists()


@pytest.mark.slow
def test_resuming_with_another_tokenizer_is_refused(reference, corpus_glob,
                                                    data_dir, tmp_path):
  workdir = tmp_path / "copy"
  shutil.copytree(reference[0], workdir)
  before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  result = run_module("diffusion_lm.main", *config_flags(
      corpus_glob, data_dir, **{**TRAIN_OVERRIDES, "data.tokenizer": "char"}),
                      f"--workdir={workdir}", check=False)
  assert_one_clear_error(result, "'byte' (vocab_size 257)", "'char' (vocab_size 27)")
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before

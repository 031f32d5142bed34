"""Progress of long work: shown on a terminal, quiet in logs and tests."""

import io
import sys

import jax.numpy as jnp
import pytest

from conftest import config_flags, run_module, write_corpus

from diffusion_lm import evaluation


def run_batches(monkeypatch, *, tty: bool, log_every_s: float):
  """(log lines, stderr) of _Progress over 3 batches."""
  lines, stderr = [], io.StringIO()
  stderr.isatty = lambda: tty
  monkeypatch.setattr(sys, "stderr", stderr)
  monkeypatch.setattr(evaluation.logging, "info",
                      lambda msg, *args: lines.append(msg % args))
  progress = evaluation._Progress(3, "evaluation", log_every_s=log_every_s)
  for _ in range(3):
    progress.advance(jnp.zeros(2))
  progress.close()
  return lines, stderr.getvalue()


def test_evaluation_progress_is_a_bar_on_a_terminal_and_rare_lines_in_logs(
    monkeypatch):
  # Bug: progress bars written into log files, or no progress at all.
  lines, bar = run_batches(monkeypatch, tty=True, log_every_s=0)
  assert not lines and "evaluation:" in bar and "/3 [" in bar
  lines, bar = run_batches(monkeypatch, tty=False, log_every_s=0)
  assert not bar
  assert lines[0].startswith("evaluation: 1/3 batches | ETA")
  assert lines[-1].startswith("evaluation: 3/3 batches | ETA 0s")
  assert run_batches(monkeypatch, tty=False, log_every_s=60) == ([], "")


@pytest.mark.slow
def test_prepare_prints_no_progress_bars_off_a_terminal(tmp_path):
  # Bug: TFDS's bars ("Generating splits...") filled captured output.
  corpus = write_corpus(tmp_path / "corpus", num_files=4)
  result = run_module("diffusion_lm.prepare",
                      *config_flags(corpus, str(tmp_path / "tfds")))
  assert "test" in result.stdout
  assert "Generating" not in result.stderr and "\r" not in result.stderr

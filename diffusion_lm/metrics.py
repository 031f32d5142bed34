"""Metric writers (metrics.jsonl + TensorBoard), FLOPs and MFU.

`metrics.jsonl` in the workdir holds one JSON object per line, each with a
`step` and keys such as `train/loss` or `eval/bits_per_byte`. After a restart
from the checkpoint at step s, lines past s (from the run that died) and the
final evaluation at s (which runs again) are dropped first, so the file reads
as one uninterrupted run. A last line cut short (a kill mid-write) is dropped
with a warning.

Every JSON file written here and by the command lines is strict JSON: a
value that is NaN or infinite is written as null, and the record gets a key
`nonfinite` mapping each such key to "nan", "inf" or "-inf" (`strict`).

A workdir given as a URL (`gs://bucket/run`) is read and written through
etils.epath (gcsfs, or TensorFlow's gfile where TensorFlow is installed).
An object cannot be appended to, so there metrics.jsonl is rewritten whole
at each write (an object is replaced whole or not at all). TensorBoard events
on gs:// need google-cloud-storage (tensorboardX's GCS writer).
"""

import importlib
import json
import math
import os
import time

import jax
from absl import logging
from etils import epath
from tensorboardX import SummaryWriter

from diffusion_lm import errors, files

# Dense bf16 peak FLOP/s per chip, matched against jax.Device.device_kind.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
}


def peak_flops_per_device(device: jax.Device) -> float | None:
  for kind, flops in PEAK_FLOPS.items():
    if kind in device.device_kind:
      return flops
  return None


def compiled_bytes(compiled) -> int | None:
  """Bytes per device of a compiled program by XLA's accounting (arguments,
  outputs and temporaries; donated buffers once); None where not reported."""
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return (stats.argument_size_in_bytes + stats.output_size_in_bytes
          - stats.alias_size_in_bytes + stats.temp_size_in_bytes)


def train_flops_per_token(model_cfg, seq_len: int) -> float:
  """Forward + backward FLOPs per token: 6 per matmul weight + attention.

  Attention scores and the weighted sum cost 2 * 2 * seq_len * heads *
  head_dim FLOPs per token and layer forward, counted in full (bidirectional,
  not halved as for causal models), times 3 for forward + backward. Block
  diffusion reads each row twice (noisy and clean streams, 2 * seq_len
  positions attending to as many), the output head once.
  """
  d, h, k, f = (model_cfg.embed_dim, model_cfg.num_heads, model_cfg.head_dim,
                model_cfg.mlp_dim)
  streams = 2 if model_cfg.block_size else 1
  per_layer = d * 3 * h * k + h * k * d + d * 2 * f + f * d
  matmul_weights = (streams * model_cfg.num_layers * per_layer
                    + d * model_cfg.vocab_size)
  attention = model_cfg.num_layers * 4 * streams**2 * seq_len * h * k
  return 6.0 * matmul_weights + 3.0 * attention


def strict(record: dict) -> dict:
  """The record with non-finite numbers as None, named under `nonfinite`."""
  nonfinite = {k: str(float(v)) for k, v in record.items()
               if isinstance(v, float) and not math.isfinite(v)}
  if not nonfinite:
    return record
  return {**{k: None if k in nonfinite else v for k, v in record.items()},
          "nonfinite": nonfinite}


def _read_lines(path: str) -> list[tuple[str, dict]]:
  """(line, record) of a metrics.jsonl; a torn last line is dropped and
  reported, a bad line elsewhere is an error naming it."""
  with epath.Path(path).open(encoding="utf-8") as f:
    lines = [line for line in f if line.strip()]
  records = []
  for i, line in enumerate(lines):
    try:
      records.append((line.rstrip("\n") + "\n", json.loads(line)))
    except json.JSONDecodeError as e:
      if i < len(lines) - 1:
        raise errors.UserError(
            f"line {i + 1} of {path} is not JSON ({e}); remove or repair it"
        ) from None
      logging.warning("Ignoring the last line of %s, cut short (%d "
                      "characters): %r", path, len(line), line[:80])
  return records


def _check_gcs_client(tensorboard_dir: str) -> None:
  """tensorboardX writes gs:// through google-cloud-storage."""
  try:
    importlib.import_module("google.cloud.storage")
  except ImportError:
    raise errors.UserError(
        f"TensorBoard events in {tensorboard_dir} need google-cloud-storage: "
        "pip install google-cloud-storage (or diffusion_lm[gcs])") from None


class MetricWriter:
  """Writes scalars to metrics.jsonl and TensorBoard, and text to TensorBoard
  (on process 0 only)."""

  def __init__(self, workdir: str, resume_step: int | None = None,
               enabled: bool = True):
    """resume_step: drop existing records past this step (None: keep all)."""
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    if not enabled:
      return
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    if resume_step is not None:
      self._truncate_after(resume_step)
    if files.is_url(workdir):  # Rewritten whole (module docstring).
      self._jsonl, self._lines = None, (
          [line for line, _ in _read_lines(self.path)]
          if epath.Path(self.path).exists() else [])
    else:
      self._jsonl = open(self.path, "a", encoding="utf-8")
    tensorboard_dir = os.path.join(workdir, "tensorboard")
    if files.is_url(tensorboard_dir):
      _check_gcs_client(tensorboard_dir)
    self._tb = SummaryWriter(tensorboard_dir)

  def _truncate_after(self, step: int) -> None:
    if not epath.Path(self.path).exists():
      return
    text = epath.Path(self.path).read_text(encoding="utf-8")
    def before(record):  # Written before the checkpoint at `step` was.
      return record["step"] < step or (
          record["step"] == step and not any(k.startswith("eval/") for k in record))

    kept = "".join(line for line, r in _read_lines(self.path) if before(r))
    if kept != text:
      files.write_atomically(self.path, kept)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    line = json.dumps(strict({"step": int(step), **scalars}),
                      allow_nan=False) + "\n"
    if self._jsonl is None:
      self._lines.append(line)
      files.write_atomically(self.path, "".join(self._lines))
    else:
      self._jsonl.write(line)
      self._jsonl.flush()
    for name, value in scalars.items():
      if math.isfinite(value):
        self._tb.add_scalar(name, value, int(step))
    self._tb.flush()

  def write_texts(self, step: int, texts: dict[str, str]) -> None:
    """Text for TensorBoard's Text tab (markdown), not for metrics.jsonl."""
    if not self.enabled:
      return
    for name, text in texts.items():
      self._tb.add_text(name, text, int(step))
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      if self._jsonl is not None:
        self._jsonl.close()
      self._tb.close()


class TrainLog:
  """Train metrics written one step behind, with throughput, MFU and ETA.

  `queue` holds a step's metrics while they are still on the device; the
  next `flush` (after the following step has been dispatched) fetches and
  writes them, so logging never stalls the device. Throughput
  (`train/tokens_per_s`, `train/tokens_per_s_per_device`,
  `train/step_time_s`, `train/mfu`) counts the steps and seconds since the
  last flush or `restart_clock` (evaluation pauses are left out).
  """

  def __init__(self, writer: MetricWriter, *, start_step: int, total_steps: int,
               tokens_per_step: int, flops_per_step: float,
               peak_flops: float | None, learning_rate, devices: int = 1):
    self.writer = writer
    self.total_steps = total_steps
    self.devices = devices
    self.tokens_per_step = tokens_per_step
    self.flops_per_step = flops_per_step
    self.peak_flops = peak_flops  # Of all devices together; None if unknown.
    self.learning_rate = learning_rate  # step -> learning rate
    self._pending = None  # (step, metrics on device)
    self.restart_clock(start_step)

  def restart_clock(self, step: int) -> None:
    self._clock = (step, time.perf_counter())

  def queue(self, step: int, device_metrics: dict) -> None:
    self.flush()
    self._pending = (step, device_metrics)

  def flush(self) -> dict | None:
    """Writes the queued step's `train/` metrics; returns all it fetched."""
    if self._pending is None:
      return None
    step, fetched = self._pending
    self._pending = None
    fetched = jax.device_get(fetched)
    logged = {k: float(v) for k, v in fetched.items() if k.startswith("train/")}
    now = time.perf_counter()
    steps, seconds = step - self._clock[0], now - self._clock[1]
    logged["train/learning_rate"] = float(self.learning_rate(step - 1))
    logged["train/tokens_per_s"] = steps * self.tokens_per_step / seconds
    logged["train/tokens_per_s_per_device"] = (logged["train/tokens_per_s"]
                                               / self.devices)
    logged["train/step_time_s"] = seconds / steps
    if self.peak_flops:
      logged["train/mfu"] = steps * self.flops_per_step / seconds / self.peak_flops
    self.writer.write(step, logged)
    skipped = logged.get("train/skipped_steps")
    logging.info("step %d/%d | loss %.4f | %.0f tokens/s | ETA %.0fs%s", step,
                 self.total_steps, logged["train/loss"],
                 logged["train/tokens_per_s"],
                 (self.total_steps - step) * seconds / steps,
                 f" | {skipped:.0f} non-finite steps skipped" if skipped else "")
    self._clock = (step, now)
    return fetched


def read_jsonl(workdir: str) -> list[dict]:
  """All records of a workdir's metrics.jsonl (a torn last line dropped)."""
  return [r for _, r in _read_lines(os.path.join(workdir, "metrics.jsonl"))]

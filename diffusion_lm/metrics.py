"""Metric writers (metrics.jsonl + TensorBoard), FLOPs and MFU.

`metrics.jsonl` in the workdir holds one JSON object per line, each with a
`step` and keys such as `train/loss` or `eval/bits_per_byte`. After a restart
from the checkpoint at step s, lines past s (from the run that died) are
dropped first, so the file reads as one uninterrupted run.
"""

import json
import math
import os

import jax
from tensorboardX import SummaryWriter

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


def train_flops_per_token(model_cfg, seq_len: int) -> float:
  """Forward + backward FLOPs per token: 6 per matmul weight + attention.

  Attention scores and the weighted sum cost 2 * 2 * seq_len * heads *
  head_dim FLOPs per token and layer forward, counted in full (bidirectional,
  not halved as for causal models), times 3 for forward + backward.
  """
  d, h, k, f = (model_cfg.embed_dim, model_cfg.num_heads, model_cfg.head_dim,
                model_cfg.mlp_dim)
  per_layer = d * 3 * h * k + h * k * d + d * 2 * f + f * d
  matmul_weights = model_cfg.num_layers * per_layer + d * model_cfg.vocab_size
  attention = model_cfg.num_layers * 4 * seq_len * h * k
  return 6.0 * matmul_weights + 3.0 * attention


class MetricWriter:
  """Writes scalars to metrics.jsonl and TensorBoard (on process 0 only)."""

  def __init__(self, workdir: str, resume_step: int | None = None,
               enabled: bool = True):
    """resume_step: drop existing records past this step (None: keep all)."""
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if resume_step is not None:
      self._truncate_after(resume_step)
    self._jsonl = open(self.path, "a", encoding="utf-8")
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def _truncate_after(self, step: int) -> None:
    if not os.path.exists(self.path):
      return
    with open(self.path, encoding="utf-8") as f:
      lines = [line for line in f if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    if len(kept) < len(lines):
      tmp = self.path + ".tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
      os.replace(tmp, self.path)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
    self._jsonl.flush()
    for name, value in scalars.items():
      if math.isfinite(value):
        self._tb.add_scalar(name, value, int(step))
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def read_jsonl(workdir: str) -> list[dict]:
  """All records of a workdir's metrics.jsonl."""
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]

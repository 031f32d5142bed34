"""budget.py's memory per device against XLA's own accounting of the
compiled train step (memory_analysis() on CPU), and its command line."""

import json

import jax
import ml_collections
import numpy as np
import pytest

from conftest import load_tiny_config, run_module
from diffusion_lm import budget, errors, metrics, parallel, train


class _Vocab:
  vocab_size = mask_id = 256


# (mesh (data, fsdp, tensor), model and train fields): small configs in
# each remat policy, scanned and unrolled, sharded three ways, accumulated.
CONFIGS = [
    ((1, 1, 1), dict(remat="none", scan_layers=False)),
    ((1, 1, 1), dict(remat="none", scan_layers=True)),
    ((1, 1, 1), dict(remat="dots", scan_layers=True)),
    ((1, 1, 1), dict(remat="full", scan_layers=True)),
    ((2, 2, 2), dict(remat="dots", scan_layers=True, microbatches=2)),
]


def config_of(fields):
  config = load_tiny_config("")
  config.model.update(num_layers=2, num_heads=4, head_dim=16, embed_dim=64,
                      mlp_dim=128)
  config.data.seq_len = 64
  config.train.batch_size = 16
  for name, value in fields.items():
    config["train" if name == "microbatches" else "model"][name] = value
  return config


def compiled_bytes(config, layout) -> int:
  """Peak bytes per device of the compiled train step, by XLA."""
  mesh = parallel.make_mesh(
      ml_collections.ConfigDict(dict(zip(parallel.MESH_AXES, layout))),
      devices=jax.devices()[:int(np.prod(layout))])
  training = train.build(config, _Vocab(), mesh)
  rows = jax.ShapeDtypeStruct((config.train.batch_size, config.data.seq_len),
                              np.int32, sharding=parallel.batch_sharding(mesh))
  batch = {"tokens": rows, "weights": rows.update(dtype=np.float32)}
  return metrics.compiled_bytes(
      training.step.lower(training.state_target, batch).compile())


def test_memory_estimate_is_within_20_percent_of_the_compiled_step():
  # Catches: a term left out or counted per mesh instead of per device
  # (params, optimizer, activations of every row instead of this device's
  # rows, heads and MLP units), remat's policy ignored by the estimate or
  # by the model (full must keep less than dots, dots less than none).
  measured = {}
  for layout, fields in CONFIGS:
    config = config_of(fields)
    actual = compiled_bytes(config, layout)
    estimate = budget.memory_per_device(
        config, _Vocab.vocab_size, dict(zip(parallel.MESH_AXES, layout)))
    assert estimate["total"] == pytest.approx(actual, rel=0.2), (
        layout, fields, estimate, actual)
    measured[layout, tuple(fields.values())] = actual
  one = (1, 1, 1)
  full, dots, none = (measured[one, (remat, True)]
                      for remat in ("full", "dots", "none"))
  assert full < dots < none / 1.5


def test_budget_command_line_says_what_to_change():
  # Catches: --mesh ignored (memory of one device), advice missing when the
  # step does not fit, a bad --mesh as a traceback instead of one line.
  args = ["--config=configs/owt.py", "--vocab_size=50257"]
  result = run_module("diffusion_lm.budget", *args, "--mesh=data:8,fsdp:32",
                      "--device_memory_gb=1")
  memory = json.loads(result.stdout)["memory"]
  assert memory["mesh"] == {"data": 8, "fsdp": 32, "tensor": 1}
  per_device = memory["bytes_per_device"]
  # 163.3M float32 parameters over 32 fsdp shards (vectors may stay whole).
  assert per_device["params"] == pytest.approx(163.3e6 * 4 / 32, rel=0.01)
  assert per_device["optimizer"] == pytest.approx(2 * per_device["params"],
                                                  rel=0.01)
  assert not memory["fits"] and "remat=dots" in memory["advice"]
  bad = run_module("diffusion_lm.budget", *args, "--mesh=data:8,pods:2",
                   check=False)
  assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1] == (
      "error: --mesh='data:8,pods:2': each part is AXIS:SIZE with AXIS one "
      "of ['data', 'fsdp', 'tensor'] and SIZE >= 1, got 'pods:2'")
  with pytest.raises(errors.UserError, match="got 'data'"):
    budget.parse_mesh("data")

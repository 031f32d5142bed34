"""The memory per device (step_memory.per_device) against XLA's own
accounting of the compiled train step (memory_analysis() on CPU), and
budget.py's command line."""

import importlib.util
import json
import math
import re

import jax
import ml_collections
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from conftest import REPO, load_tiny_config, run_module
from diffusion_lm import (budget, errors, metrics, parallel, step_memory,
                          train_step)


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
  training = train_step.build(config, _Vocab(), mesh)
  rows = jax.ShapeDtypeStruct((config.train.batch_size, config.data.seq_len),
                              np.int32, sharding=parallel.batch_sharding(mesh))
  batch = {"tokens": rows, "weights": rows.update(dtype=np.float32)}
  return metrics.compiled_bytes(
      training.step.lower(training.state_target, batch).compile())


@pytest.mark.slow
def test_memory_estimate_is_within_20_percent_of_the_compiled_step():
  # Catches: a term left out or counted per mesh instead of per device
  # (params, optimizer, activations of every row instead of this device's
  # rows, heads and MLP units), remat's policy ignored by the estimate or
  # by the model (full must keep less than dots, dots less than none).
  measured = {}
  for layout, fields in CONFIGS:
    config = config_of(fields)
    actual = compiled_bytes(config, layout)
    estimate = step_memory.per_device(
        config, _Vocab.vocab_size, dict(zip(parallel.MESH_AXES, layout)))
    assert estimate["total"] == pytest.approx(
        actual, rel=step_memory.ESTIMATE_ERROR), (
        layout, fields, estimate, actual)
    measured[layout, tuple(fields.values())] = actual
  one = (1, 1, 1)
  full, dots, none = (measured[one, (remat, True)]
                      for remat in ("full", "dots", "none"))
  assert full < dots < none / 1.5


@pytest.mark.slow
def test_budget_command_line_says_what_to_change(tmp_path):
  # Catches: --mesh ignored (memory of one device), advice missing when the
  # step does not fit, a bad --mesh as a traceback instead of one line, the
  # vocabulary read from a tokenizer file that the recipe has not trained
  # yet though the config gives its size (a pod run planned before any data
  # is prepared), a repeated --mesh axis silently keeping the last size.
  args = ["--config=configs/owt.py", f"--config.data.data_dir={tmp_path}",
          "--config.data.tokenizer_train.vocab_size=50257"]
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
  assert not list(tmp_path.iterdir())
  bad = run_module("diffusion_lm.budget", *args, "--mesh=data:2,data:4",
                   check=False)
  assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1] == (
      "error: --mesh='data:2,data:4': axis 'data' is given twice")


def test_vocabulary_from_the_config_else_its_file(tmp_path):
  # Catches: a byte or char tokenizer, or a sentencepiece model the config
  # sizes, looked up on disk; a missing model file not naming the flag and
  # the field that would stand in for it.
  config = recipe("owt")
  config.data.data_dir = str(tmp_path)
  config.data.tokenizer_train.vocab_size = 50257
  assert budget.vocab_size(config) == 50257
  config.data.tokenizer = "char"
  assert budget.vocab_size(config) == 27
  config.data.update(tokenizer="sentencepiece", tokenizer_train=dict(
      vocab_size=0, model_type="bpe", max_documents=0))
  with pytest.raises(errors.UserError, match=(
      r"no file .*spm_bpe_50257.model.*\(or pass --vocab_size, or set "
      r"--config.data.tokenizer_train.vocab_size\)$")):
    budget.vocab_size(config)


def recipe(name: str):
  """configs/<name>.py's config."""
  spec = importlib.util.spec_from_file_location(
      name, REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("text, message", [
    ("data:8,pods:2", "got 'pods:2'"),
    ("data", "got 'data'"),
    ("data:0", "got 'data:0'"),
    ("data:100000000000000000000", "SIZE in 1..1048576, got 'data:1000"),
    ("tensor:2,data:4,tensor:2", "axis 'tensor' is given twice"),
    ("data:2048,fsdp:1024", "2097152 devices in all, more than the 1048576"),
])
def test_bad_mesh_is_one_line(text, message):
  # Catches: a size past what the mesh code takes (a C++ bad_cast
  # traceback), an axis named twice keeping only its last size.
  pattern = f"^{re.escape(f'--mesh={text!r}: ')}.*{re.escape(message)}"
  with pytest.raises(errors.UserError, match=pattern):
    budget.parse_mesh(text)
  assert budget.parse_mesh("tensor:4,data:2") == {"data": 2, "fsdp": 1,
                                                  "tensor": 4}


@pytest.mark.parametrize("name, value", [
    ("mfu", 0.0), ("mfu", -0.5), ("mfu", 1.5), ("mfu", math.nan),
    ("device_memory_gb", -1.0), ("device_memory_gb", math.inf),
    ("vocab_size", -5), ("vocab_size", 2**31),
])
def test_bad_numbers_are_refused(name, value):
  # Catches: --mfu=0 dividing by zero, a negative --mfu printing negative
  # chip-hours, a negative vocabulary as a traceback, a negative device
  # memory accepted.
  with pytest.raises(flags.IllegalFlagValueError):
    with flagsaver.flagsaver(**{name: value}):
      pass
  with flagsaver.flagsaver(mfu=1.0, device_memory_gb=0.0, vocab_size=0):
    pass

"""Shared fixtures: 8 CPU devices, a tiny text corpus, a tiny config and a
tiny model with random parameters."""

import os
import pathlib
import subprocess
import sys

import jax

# Before any JAX computation: 8 CPU devices for the sharding tests.
jax.config.update("jax_num_cpu_devices", 8)
# Broadcasting between arrays of different ranks is an error (write
# x[None] or x[:, None]): a silently broadcast shape is a common bug.
jax.config.update("jax_numpy_rank_promotion", "raise")

import pytest  # pylint: disable=g-import-not-at-top
from flax import nnx  # pylint: disable=g-import-not-at-top

from diffusion_lm import models  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_CONFIG = str(REPO / "tests" / "tiny_config.py")
WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu "
         "def return import class for while if else print self").split()


# A tiny denoiser; tests replace the fields they are about.
TINY_MODEL = models.TransformerConfig(
    vocab_size=11, objective="diffusion", block_size=0, num_layers=2, num_heads=2,
    head_dim=8, embed_dim=16, mlp_dim=32, time_conditioning=False,
    dtype="float32", rope_base=10_000.0, attention_impl="", local_width=0,
    batch_slices=1, remat="none", scan_layers=False)


def random_params(cfg, seed: int = 0, scale: float = 0.3) -> dict:
  """Parameters of `cfg`, every one random (N(0, scale^2)), so that the
  model's outputs depend on all of them (a fresh head starts at zero)."""
  params = models.init_params(cfg, jax.random.PRNGKey(seed))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  return tree.unflatten(
      [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def randomised(cfg, seed: int = 0, scale: float = 0.3):
  """The model of `cfg` with random_params."""
  graphdef, _ = models.abstract_model(cfg)
  return nnx.merge(graphdef, random_params(cfg, seed, scale))


def write_corpus(directory: pathlib.Path, num_files: int = 12) -> str:
  """Deterministic small text files; returns a glob matching them."""
  directory.mkdir(parents=True, exist_ok=True)
  for i in range(num_files):
    lines = []
    for j in range(40 + 7 * i):
      words = [WORDS[(i * 7 + j * 3 + k * k) % len(WORDS)] for k in range(1 + j % 6)]
      lines.append(" ".join(words))
    (directory / f"doc_{i:02d}.txt").write_text("\n".join(lines) + "\n")
  return str(directory / "*.txt")


@pytest.fixture(scope="session")
def corpus_glob(tmp_path_factory) -> str:
  return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("tfds"))


def load_tiny_config(data_dir, files: str = ""):
  """tests/tiny_config.py's config with these data.data_dir and data.files."""
  sys.path.insert(0, str(REPO / "tests"))
  import tiny_config  # pylint: disable=g-import-not-at-top
  sys.path.pop(0)
  config = tiny_config.get_config()
  config.data.update(data_dir=str(data_dir), files=files)
  return config


@pytest.fixture()
def tiny_config(corpus_glob, data_dir):
  return load_tiny_config(data_dir, corpus_glob)


def config_flags(corpus_glob: str, data_dir: str, **overrides) -> list[str]:
  """Command-line flags for the tiny config on the test corpus."""
  flags = [f"--config={TINY_CONFIG}", f"--config.data.files={corpus_glob}",
           f"--config.data.data_dir={data_dir}"]
  return flags + [f"--config.{k}={v}" for k, v in overrides.items()]


def run_module(module: str, *args, check: bool = True, **kwargs):
  """Runs `python -m module args` on one CPU device; returns the result."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             JAX_NUMPY_RANK_PROMOTION="raise")
  result = subprocess.run([sys.executable, "-m", module, *args], env=env,
                          capture_output=True, text=True, cwd=REPO, **kwargs)
  if check and result.returncode != 0:
    raise AssertionError(f"{module} {args} failed:\n{result.stderr[-4000:]}")
  return result


STEPS = 40  # Of the reference run, which the resume tests reproduce.
TRAIN_OVERRIDES = {"train.steps": STEPS, "train.checkpoint_every": 5,
                   "train.eval_every": 20, "train.log_every": 5,
                   "data.seq_len": 64, "train.batch_size": 16}


def train_flags(corpus_glob, data_dir, workdir) -> list[str]:
  return config_flags(corpus_glob, data_dir, **TRAIN_OVERRIDES) + [
      f"--workdir={workdir}"]


@pytest.fixture(scope="session")
def reference(tmp_path_factory, corpus_glob, data_dir):
  """An uninterrupted training run: (workdir, its stdout + stderr)."""
  workdir = tmp_path_factory.mktemp("reference")
  result = run_module("diffusion_lm.main", *train_flags(corpus_glob, data_dir, workdir))
  return str(workdir), result.stdout + result.stderr

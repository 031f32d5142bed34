"""Quickstart: a small byte-level model on the stdlib corpus, on a CPU.

  python -m diffusion_lm.main --config=configs/quickstart.py --workdir=runs/quickstart

Trains on the Python standard library's source (no download), evaluates the
test split, checkpoints and prints samples; then

  python -m diffusion_lm.sample --workdir=runs/quickstart --num_samples=4
"""

from diffusion_lm import config_base


def get_config():
  c = config_base.base_config()
  return c

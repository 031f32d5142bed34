"""Entry point: train (and evaluate) or evaluate a model from a config file.

  python -m diffusion_lm.main --config=configs/quickstart.py --workdir=runs/quickstart
  python -m diffusion_lm.main --config=configs/quickstart.py --workdir=runs/quickstart \\
      --mode=eval

Any config field can be overridden: --config.train.steps=100. Running the same
command again resumes from the workdir's latest checkpoint. Exit status 143
means SIGTERM stopped training after saving a checkpoint (run it again).
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from diffusion_lm import cli, errors, parallel

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (see configs/).", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints and metrics (local or gs://).")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "eval"],
    "train: train, evaluate and sample (resuming if possible); "
    "eval: evaluate the latest checkpoint on config.eval.split.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() (TPU pods, clusters).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  cli.no_positional_args(argv)
  if _MULTIHOST.value:
    parallel.initialize_multihost()
  parallel.quiet_library_logs()
  # Imported here so that --help stays fast.
  from diffusion_lm import evaluation, train  # pylint: disable=g-import-not-at-top
  try:
    if _MODE.value == "eval":
      evaluation.evaluate_checkpoint(_WORKDIR.value, _CONFIG.value)
      return
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except errors.UserError as e:
    sys.exit(f"error: {e}")
  if result["preempted"]:
    sys.exit(143)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)

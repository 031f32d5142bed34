"""Entry point: train (and evaluate) or evaluate a model from a config file.

  python -m diffusion_lm.main --config=configs/quickstart.py --workdir=runs/quickstart
  python -m diffusion_lm.main --config=configs/quickstart.py --workdir=runs/quickstart \\
      --mode=eval

Any config field can be overridden: --config.train.steps=100. Running the same
command again resumes from the workdir's latest checkpoint. Exit status 143
means SIGTERM stopped training after saving a checkpoint (run it again).
"""

import sys

from absl import flags, logging

from diffusion_lm import cli

_CONFIG = cli.define_config_flag()
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints and metrics (local or gs://).")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "eval"],
    "train: train, evaluate and sample (resuming if possible); "
    "eval: evaluate the latest checkpoint on config.eval.split.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False,
    "Join a multi-host job with jax.distributed.initialize(): auto-detected on "
    "TPU pods, SLURM and Open MPI, or from --coordinator, --num_processes and "
    "--process_id (else $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, "
    "$JAX_PROCESS_ID).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator", None, "--multihost: HOST:PORT of process 0's coordinator.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "--multihost: the number of processes in the job.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "--multihost: this process's index, 0 .. N-1.")
flags.mark_flags_as_required(["config", "workdir"])


def train_then_sample(config, workdir: str) -> None:
  """Trains (resuming if possible); then logs samples from the checkpoint,
  if there is one (train.steps=0 in a new workdir only evaluates the
  untrained model)."""
  from diffusion_lm import api, train  # pylint: disable=g-import-not-at-top
  result = train.train_and_evaluate(config, workdir)
  if result["preempted"]:
    sys.exit(143)
  if not config.sample.num_samples:
    return
  if not result["step"]:
    logging.info("No samples: train.steps=0 trained no checkpoint to sample.")
    return
  for i, text in enumerate(api.load(workdir).sample()):
    logging.info("sample %d:\n%s", i, text)


def main():
  if _MULTIHOST.value:
    from diffusion_lm import parallel  # pylint: disable=g-import-not-at-top
    parallel.initialize_multihost(_COORDINATOR.value, _NUM_PROCESSES.value,
                                  _PROCESS_ID.value)
  if _MODE.value == "eval":
    from diffusion_lm import api  # pylint: disable=g-import-not-at-top
    api.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value)
  else:
    train_then_sample(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)

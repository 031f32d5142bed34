"""Orbax checkpoints under <workdir>/checkpoints/<step>/.

Each checkpoint holds one item per entry of the train state (`params`,
`opt_state`, `ema` when on, `loop` = step and RNG), the data iterator's
position (`data`, per process), and the `config` and `tokenizer` as JSON, so a
checkpoint alone is enough to resume training or to sample. Orbax writes each
step into a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact. Restoring places every array
with the sharding of the abstract target, which may be a different mesh.
"""

import os

import grain
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from diffusion_lm import config_base, errors
from diffusion_lm.data import tokenizers


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def manager(workdir: str, max_to_keep: int = 2,
            read_only: bool = False) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      checkpoint_dir(workdir),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, create=not read_only, read_only=read_only))


def save(mngr: ocp.CheckpointManager, step: int, state: dict, data_iterator,
         config: ml_collections.ConfigDict, tokenizer) -> None:
  """Starts an asynchronous save of everything needed to resume or sample."""
  items = {name: ocp.args.StandardSave(value) for name, value in state.items()}
  mngr.save(step, force=True, args=ocp.args.Composite(
      data=grain.checkpoint.CheckpointSave(data_iterator),
      config=ocp.args.JsonSave(config.to_dict()),
      tokenizer=ocp.args.JsonSave(tokenizer.to_json()),
      **items))


def restore_train_state(mngr: ocp.CheckpointManager, step: int, target: dict,
                        data_iterator) -> dict:
  """The train state at `step`, placed as `target` (ShapeDtypeStructs with
  shardings) says; moves the data iterator to where it was."""
  items = {name: ocp.args.StandardRestore(value)
           for name, value in target.items()}
  restored = mngr.restore(step, args=ocp.args.Composite(
      data=grain.checkpoint.CheckpointRestore(data_iterator), **items))
  return {name: restored[name] for name in target}


def restore_metadata(mngr: ocp.CheckpointManager, step: int):
  """(config, tokenizer) saved with the checkpoint at `step`.

  The saved values go over today's defaults (config_base), so a field added
  since the checkpoint was written takes its default; a saved field that no
  longer exists is dropped with a warning.
  """
  restored = mngr.restore(step, args=ocp.args.Composite(
      config=ocp.args.JsonRestore(), tokenizer=ocp.args.JsonRestore()))
  config = config_base.base_config()
  dropped = []
  for group, fields in restored["config"].items():
    for name, value in fields.items():
      if group in config and name in config[group]:
        config[group][name] = value
      else:
        dropped.append(f"{group}.{name}")
  if dropped:
    logging.warning("The checkpoint at step %d has config fields this version "
                    "does not know (ignored): %s", step, ", ".join(dropped))
  return config, tokenizers.from_json(restored["tokenizer"])


def check_tokenizer(mngr: ocp.CheckpointManager, step: int, tokenizer) -> None:
  """Refuses to resume a checkpoint with a tokenizer other than its own."""
  _, saved = restore_metadata(mngr, step)
  if saved.to_json() == tokenizer.to_json():
    return
  # Same kind and size but different content (e.g. another sentencepiece model).
  same_shape = (saved.kind, saved.vocab_size) == (tokenizer.kind, tokenizer.vocab_size)
  other = "another " if same_shape else ""
  raise errors.UserError(
      f"the checkpoint at step {step} in {mngr.directory} was trained with "
      f"tokenizer {saved.kind!r} (vocab_size {saved.vocab_size}) but the "
      f"config's data.tokenizer gives {other}{tokenizer.kind!r} (vocab_size "
      f"{tokenizer.vocab_size}); keep the checkpoint's tokenizer or start a "
      "new --workdir")


def eval_params_name(train_config) -> str:
  """The train state's entry that evaluation and sampling use: the EMA of the
  parameters when training kept one, else the parameters."""
  return "ema" if train_config.ema_decay > 0 else "params"


def restore_params(mngr: ocp.CheckpointManager, step: int, target: dict,
                   train_config) -> dict:
  """The parameters to evaluate or sample with (eval_params_name)."""
  name = eval_params_name(train_config)
  restored = mngr.restore(step, args=ocp.args.Composite(
      **{name: ocp.args.StandardRestore(target)}))
  return restored[name]


def latest_step_or_raise(mngr: ocp.CheckpointManager, workdir: str) -> int:
  step = mngr.latest_step()
  if step is None:
    raise errors.UserError(
        f"no checkpoint in {checkpoint_dir(workdir)}: train one first with "
        f"python -m diffusion_lm.main --config=... --workdir={workdir}")
  return step

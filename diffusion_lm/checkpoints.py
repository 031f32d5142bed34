"""Orbax checkpoints under <workdir>/checkpoints/<step>/.

Each checkpoint holds one item per entry of the train state (`params`,
`opt_state`, `ema` when on, `loop` = step and RNG, `health` = skipped steps),
the data iterator's position (`data`, per process), the `config` and
`tokenizer` as JSON, so a checkpoint alone is enough to resume training or to
sample, and `checksums` (JSON): a checksum of every array of the state, the
same on any mesh, and a SHA-256 of the config and of the tokenizer. Orbax
writes each step into a temporary directory and renames it when complete, so
a run killed mid-save leaves the previous checkpoint intact. Restoring places
every array with the sharding of the abstract target, which may be a
different mesh.

Integrity (checkpoint_integrity): restoring verifies the checksums and
refuses arrays that are not finite. A checkpoint without checksums (written
before they existed, or whose `checksums` item is gone) is taken as it is,
with a warning that it is unverified, or passed over when the caller
requires checksums. A checkpoint that cannot be read or fails its checksums
is passed over for the newest one that passes; training moves the failed
ones out of orbax's way, to <workdir>/unreadable_checkpoints/ (nothing is
deleted). `save` refuses a train state with a non-finite value, so rotation
(train.max_checkpoints) never removes the last finite checkpoint.
"""

import json
import os
from collections.abc import Callable

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from diffusion_lm import checkpoint_integrity as integrity
from diffusion_lm.checkpoint_integrity import CorruptCheckpoint
from diffusion_lm import config_base, errors, files, models
from diffusion_lm.data import pipeline, tokenizers

# Train-state items newer than some checkpoints: restored as zeros from those.
_ADDED_ITEMS = ("health", "data_order")  # Restored as zeros when absent.


def checkpoint_dir(workdir: str) -> str:
  """<workdir>/checkpoints, absolute; a URL workdir (gs://...) as it is."""
  return os.path.join(files.absolute(workdir), "checkpoints")


def manager(workdir: str, max_to_keep: int = 2,
            read_only: bool = False) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      checkpoint_dir(workdir),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, create=not read_only, read_only=read_only))


# --------------------------------------------------------------------- Save


def save(mngr: ocp.CheckpointManager, step: int, state: dict, data_iterator,
         config: ml_collections.ConfigDict, tokenizer) -> None:
  """Starts an asynchronous save of everything needed to resume or sample,
  with its checksums; a state holding a non-finite value is refused."""
  checksums, nonfinite = integrity.fingerprint(state)
  if nonfinite:
    raise errors.UserError(
        f"not saving the train state of step {step}: "
        f"{integrity.listed(nonfinite)} "
        f"hold NaN or infinite values; the checkpoints in {mngr.directory} "
        "are kept")
  config_json, tokenizer_json = config.to_dict(), tokenizer.to_json()
  items = {name: ocp.args.StandardSave(value) for name, value in state.items()}
  mngr.save(step, force=True, args=ocp.args.Composite(
      data=grain.checkpoint.CheckpointSave(data_iterator),
      config=ocp.args.JsonSave(config_json),
      tokenizer=ocp.args.JsonSave(tokenizer_json),
      checksums=ocp.args.JsonSave({
          "arrays": checksums,
          "json": {"config": integrity.digest(config_json),
                   "tokenizer": integrity.digest(tokenizer_json)}}),
      **items))


# ------------------------------------------------------------------ Restore


def _saved_items(mngr: ocp.CheckpointManager, step: int) -> set[str]:
  try:
    return {p.name for p in (mngr.directory / str(step)).iterdir()}
  except OSError as e:
    raise integrity.unreadable(e, "listing its items") from e


def _restore(mngr: ocp.CheckpointManager, step: int,
             items: dict) -> ocp.args.Composite:
  """mngr.restore of these items, the JSON checksums with them when saved;
  a failure is a CorruptCheckpoint. With several processes, a failure on one
  is a failure on all (so that they fall back together)."""
  if integrity.CHECKSUMS in _saved_items(mngr, step):
    items = {**items, integrity.CHECKSUMS: ocp.args.JsonRestore()}
  restored, error = None, None
  try:
    with integrity.ORPHANED_READS.quiet():
      restored = mngr.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # pylint: disable=broad-exception-caught
    error = integrity.unreadable(e, f"reading {', '.join(items)}")
  if jax.process_count() > 1:
    failed = multihost_utils.process_allgather(np.int32(error is not None))
    if error is None and np.any(failed):
      error = CorruptCheckpoint("unreadable on another process")
  if error is not None:
    raise error
  return restored


def _merge(group: ml_collections.ConfigDict, saved: dict, path: str,
           dropped: list[str]) -> None:
  """Sets the fields of `group` (a config or one of its groups) from
  `saved`, its JSON, group by group; the fields it does not know go to
  `dropped`. A value of another type than the field's is a
  CorruptCheckpoint."""
  for name, value in saved.items():
    field = f"{path}{name}"
    if name not in group:
      dropped.append(field)
    elif isinstance(group[name], ml_collections.ConfigDict):
      if not isinstance(value, dict):
        raise CorruptCheckpoint(f"its config field {field} is {value!r}: "
                                "expected a group of fields, found "
                                f"{type(value).__name__}")
      _merge(group[name], value, field + ".", dropped)
    else:
      try:
        group[name] = value
      except TypeError as e:  # ConfigDict keeps each field's type.
        raise CorruptCheckpoint(
            f"its config field {field} is {value!r}: expected "
            f"{type(group[name]).__name__}, found {type(value).__name__}"
        ) from e


def _merged_config(saved: dict, step: int) -> ml_collections.ConfigDict:
  """The saved config over today's defaults (config_base): a field added
  since takes its default; a saved field that no longer exists is dropped
  with a warning; one of the wrong type is a CorruptCheckpoint."""
  if not isinstance(saved, dict):
    raise CorruptCheckpoint(f"its config is a {type(saved).__name__}, not a "
                            "dict of groups")
  config, dropped = config_base.base_config(), []
  _merge(config, saved, "", dropped)
  if dropped:
    logging.warning("The checkpoint at step %d has config fields this version "
                    "does not know (ignored): %s", step, ", ".join(dropped))
  return config


def restore_metadata(mngr: ocp.CheckpointManager, step: int,
                     require_checksums: bool = False):
  """(config, tokenizer) saved with the checkpoint at `step`, checked against
  their checksums; the config over today's defaults (_merged_config).

  A checkpoint without checksums is used unverified, with a warning naming
  it; with require_checksums it is a CorruptCheckpoint.
  """
  restored = _restore(mngr, step, {"config": ocp.args.JsonRestore(),
                                   "tokenizer": ocp.args.JsonRestore()})
  if integrity.CHECKSUMS not in restored:
    if require_checksums:
      raise CorruptCheckpoint("it has no checksums, and verified checkpoints "
                              "are required")
    logging.warning("The checkpoint at step %d in %s has no checksums: it is "
                    "used unverified.", step, mngr.directory)
  for name, digest in integrity.saved_checksums(restored, "json").items():
    if integrity.digest(restored[name]) != digest:
      raise CorruptCheckpoint(f"{name} differs from its checksum")
  config = _merged_config(restored["config"], step)
  try:
    tokenizer = tokenizers.from_json(restored["tokenizer"])
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise CorruptCheckpoint(f"its tokenizer cannot be rebuilt: {e}") from e
  try:  # Saved values this version cannot build a model from.
    models.TransformerConfig.from_config(config.model, tokenizer.vocab_size)
  except errors.UserError as e:
    raise CorruptCheckpoint(f"its model config is not valid: {e}") from e
  return config, tokenizer


def restore_train_state(mngr: ocp.CheckpointManager, step: int,
                        target: dict) -> dict:
  """The train state at `step`, placed as `target` (ShapeDtypeStructs with
  shardings) says and verified. Items newer than the checkpoint
  (_ADDED_ITEMS) start as zeros; an EMA it lacks (train.ema_decay switched
  on since) starts from its parameters."""
  saved = _saved_items(mngr, step)
  missing = [n for n in target
             if n not in saved and n not in (*_ADDED_ITEMS, "ema")]
  if missing:
    raise CorruptCheckpoint(f"no item {integrity.listed(missing)}")
  names = [n for n in target if n in saved]
  restored = _restore(mngr, step, {n: ocp.args.StandardRestore(target[n])
                                   for n in names})
  arrays = {n: restored[n] for n in names}
  integrity.verify(mngr, step, restored, arrays)

  def absent(name):
    if name == "ema":
      logging.warning("The checkpoint at step %d has no EMA of the parameters "
                      "(train.ema_decay was 0): the EMA starts from its "
                      "parameters.", step)
      return jax.tree.map(jnp.copy, arrays["params"])  # Donated apart.
    return jax.tree.map(
        lambda t: jnp.zeros(t.shape, t.dtype, device=t.sharding), target[name])

  return {n: arrays[n] if n in arrays else absent(n) for n in target}


def restore_data_position(mngr: ocp.CheckpointManager, step: int,
                          data_iterator) -> None:
  """Moves the data iterator to where it was at `step`: every process's
  saved position merged (pipeline.merge_positions), so that a job resumes on
  any number of processes. pipeline.PositionMismatch: the position is not
  one of this run's batches (another train.batch_size)."""
  try:
    files = sorted((mngr.directory / str(step) / "data").glob(
        "process_*-of-*.json"))
    states = [json.loads(f.read_text()) for f in files]
  except (OSError, ValueError) as e:
    raise integrity.unreadable(e, "reading data") from e
  if not files or len(files) != int(
      files[0].name.split("-of-")[1].removesuffix(".json")):
    raise CorruptCheckpoint("no data position, or not every process's "
                            "(item data)")
  try:
    data_iterator.set_state(pipeline.merge_positions(states))
  except pipeline.PositionMismatch:
    raise
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    raise integrity.unreadable(e, "reading data") from e


def check_tokenizer(saved, tokenizer, step: int, directory,
                    advice: str = "keep the checkpoint's tokenizer or start "
                    "a new --workdir") -> None:
  """Refuses to resume a checkpoint with a tokenizer other than its own."""
  if saved.to_json() == tokenizer.to_json():
    return
  # Same kind and size but different content (e.g. another sentencepiece model).
  same_shape = (saved.kind, saved.vocab_size) == (tokenizer.kind, tokenizer.vocab_size)
  other = "another " if same_shape else ""
  raise errors.UserError(
      f"the checkpoint at step {step} in {directory} was trained with "
      f"tokenizer {saved.kind!r} (vocab_size {saved.vocab_size}) but the "
      f"config's data.tokenizer gives {other}{tokenizer.kind!r} (vocab_size "
      f"{tokenizer.vocab_size}); {advice}")


def eval_params_name(train_config) -> str:
  """The train state's entry that evaluation and sampling use: the EMA of the
  parameters when training kept one, else the parameters."""
  return "ema" if train_config.ema_decay > 0 else "params"


def restore_params(mngr: ocp.CheckpointManager, step: int, target: dict,
                   train_config) -> dict:
  """The parameters to evaluate or sample with (eval_params_name), verified:
  not finite is an errors.UserError."""
  name = eval_params_name(train_config)
  restored = _restore(mngr, step, {name: ocp.args.StandardRestore(target)})
  integrity.verify(mngr, step, restored, {name: restored[name]})
  return restored[name]


def steps_to_try(mngr: ocp.CheckpointManager, workdir: str,
                 step: int | None = None) -> list[int]:
  """`[step]`, or every step newest first; an error when there is none."""
  steps = sorted(mngr.all_steps(), reverse=True)
  if not steps:
    raise errors.UserError(
        f"no checkpoint in {checkpoint_dir(workdir)}: train one first with "
        f"python -m diffusion_lm.main --config=... --workdir={workdir}")
  if step is None:
    return steps
  if step not in steps:
    raise errors.UserError(
        f"no checkpoint at step {step} in {checkpoint_dir(workdir)}; its "
        f"steps are {sorted(steps)}")
  return [step]


def _shapes(params):
  return jax.tree.map(lambda x: x.shape, params)


def _differing(saved_model, model_config, step: int, directory) -> tuple:
  """The model fields that differ from the checkpoint's, and the start of
  the error that names them."""
  differ = [k for k in model_config if saved_model[k] != model_config[k]]
  return differ, (
      f"the checkpoint at step {step} in {directory} was saved with "
      + ", ".join(f"model.{k}={saved_model[k]!r} (this run: "
                  f"{model_config[k]!r})" for k in differ)
      + ": its parameters have other shapes or layout than this run's; ")


def check_model(saved_model, model_config, target_params, vocab_size: int,
                step: int, directory) -> None:
  """Refuses to resume a checkpoint whose parameters have other shapes or
  another layout (model.scan_layers) than this run's (`target_params`),
  naming the model fields that differ from the checkpoint's."""
  _, abstract = models.abstract_model(
      models.TransformerConfig.from_config(saved_model, vocab_size))
  if _shapes(nnx.to_pure_dict(abstract)) == _shapes(target_params):
    return
  differ, error = _differing(saved_model, model_config, step, directory)
  raise errors.UserError(
      error + "resume with "
      + " ".join(f"--config.model.{k}={saved_model[k]}" for k in differ)
      + " (the checkpoint's values), or start a new --workdir")


def params_from(workdir: str, target: dict, tokenizer, model_config,
                require_checksums: bool = False) -> tuple[int, dict]:
  """(step, parameters) of the newest intact checkpoint in another run's
  workdir (train.init_from), placed as `target` says: the ones it evaluated
  with (its EMA when it kept one), in this model's layout
  (models.in_layout). Its tokenizer and transformer must be this run's; the
  objective may differ, but for a causal run from a bidirectional one whose
  input layer reads the tokens after each position."""
  mngr = manager(workdir, read_only=True)
  advice = f"train.init_from={workdir} needs a run with this run's "
  cfg = models.TransformerConfig.from_config(model_config, tokenizer.vocab_size)

  def restore(step):
    saved_config, saved_tokenizer = restore_metadata(mngr, step,
                                                     require_checksums)
    check_tokenizer(saved_tokenizer, tokenizer, step, mngr.directory,
                    advice + "data.tokenizer and corpus")
    source = models.TransformerConfig.from_config(saved_config.model,
                                                  tokenizer.vocab_size)
    if cfg.causal and not source.causal and source.local_width:
      raise errors.UserError(
          f"train.init_from={workdir} is a {source.objective} run, whose input "
          "layer reads the tokens after each position (model.local_width="
          f"{source.local_width}): an autoregressive run cannot start from it")
    saved = nnx.to_pure_dict(models.abstract_model(source)[1])
    if _shapes(jax.eval_shape(lambda p: models.in_layout(p, source, cfg),
                              saved)) != _shapes(target):
      differ, error = _differing(saved_config.model, model_config, step,
                                 mngr.directory)
      values = [f"--config.model.{k}={saved_config.model[k]}" for k in differ
                if k not in ("objective", "block_size")]
      raise errors.UserError(error + advice + "transformer"
                             + (f" ({' '.join(values)} here)" if values else ""))
    params = restore_params(mngr, step, jax.tree.map(
        lambda s, t: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=t.sharding),
        saved, target), saved_config.train)
    return jax.tree.map(jax.device_put, models.in_layout(params, source, cfg),
                        jax.tree.map(lambda t: t.sharding, target))

  step, params, _ = integrity.newest_intact(mngr, restore,
                                            steps_to_try(mngr, workdir))
  return step, params


def resume(mngr: ocp.CheckpointManager, target: dict,
           data_iterator: Callable[[int], object], tokenizer, model_config,
           require_checksums: bool = False
           ) -> tuple[int, dict, object] | None:
  """(step, train state, data iterator) of the newest intact checkpoint, or
  None when there is none.

  data_iterator(seed_offset) makes the training data's iterator in the
  order the state's data_order names, moved to its saved position (whatever
  the number of processes that saved it). A position of other batches
  (another train.batch_size) does not apply: the order restarts, seeded by
  the step, and data_order records that. A checkpoint of another model
  (check_model) or tokenizer is an error; with require_checksums, one
  without checksums is passed over.
  Newer checkpoints that failed are moved aside (integrity.move_aside).
  """
  if mngr.latest_step() is None:
    return None

  def restore(step):
    saved_config, saved_tokenizer = restore_metadata(mngr, step,
                                                     require_checksums)
    # Before any text is encoded with a tokenizer it may refuse.
    check_tokenizer(saved_tokenizer, tokenizer, step, mngr.directory)
    check_model(saved_config.model, model_config, target["params"],
                tokenizer.vocab_size, step, mngr.directory)
    state = restore_train_state(mngr, step, target)
    iterator = data_iterator(int(state["data_order"]["seed_offset"]))
    try:
      restore_data_position(mngr, step, iterator)
      return state, iterator
    except pipeline.PositionMismatch as e:
      logging.warning(
          "The data position saved at step %d does not apply to this run (%s): "
          "the data stream starts afresh in a new order (seeded by the step).",
          step, e)
    state["data_order"] = {"seed_offset": jax.make_array_from_callback(
        (), target["data_order"]["seed_offset"].sharding,
        lambda _: np.int32(step))}  # Each process places its own shards.
    return state, data_iterator(step)

  step, restored, failed = integrity.newest_intact(
      mngr, restore, sorted(mngr.all_steps(), reverse=True))
  if failed:
    integrity.move_aside(mngr, failed)
  return step, *restored

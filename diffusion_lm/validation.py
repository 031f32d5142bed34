"""The whole config, checked before a command line does any work.

`check` looks at every field of config_base.base_config(): its type and range,
and the rules that tie fields together (the mesh and the batch sizes against
the devices, the batch against model.batch_slices, the evaluation split
against the corpus, the sampler and its options). It reports every problem at
once, in one errors.UserError, each naming the field, its value and what is
allowed. Rules that live elsewhere (the model's objective, the schedule, the
Markov chain, the sampler options, the mesh) are called, not restated.
"""

import math
import numbers
from collections.abc import Callable, Sequence
from typing import NamedTuple

from diffusion_lm import config_base, errors, models, parallel
from diffusion_lm.data import (corpora, markov, pipeline, tokenizer_training,
                               tokenizers)
from diffusion_lm.diffusion import objective, sampler_options, schedules

DTYPES = ("float32", "bfloat16", "float16")  # model.dtype: compute dtypes.
ATTENTION_IMPLS = ("", "xla", "cudnn")

# A field's rule: (whether a value is allowed, what is allowed).
Rule = tuple[Callable[[object], bool], str]


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
  return (isinstance(v, numbers.Real) and not isinstance(v, bool)
          and math.isfinite(v))


def _int(low: int, allowed: str = "") -> Rule:
  return (lambda v: _is_int(v) and v >= low), allowed or f"an integer >= {low}"


def _real(low: float, high: float = math.inf, *, open_low: bool = False,
          open_high: bool = False) -> Rule:
  def ok(v):
    return (_is_real(v) and (v > low if open_low else v >= low)
            and (v < high if open_high else v <= high))
  if high == math.inf:
    return ok, f"a finite number {'>' if open_low else '>='} {low}"
  return ok, (f"a number in {'(' if open_low else '['}{low}, "
              f"{high}{')' if open_high else ']'}")


def _one_of(options) -> Rule:
  return (lambda v: v in options), f"one of {sorted(options)}"


def _is_rule(r) -> bool:
  """A mesh.rules entry: (logical axis name, None or mesh axes)."""
  axes = r[1] if isinstance(r, (tuple, list)) and len(r) == 2 else ()
  axes = (axes,) if isinstance(axes, str) else axes
  return (isinstance(r, (tuple, list)) and len(r) == 2
          and isinstance(r[0], str) and (axes is None or (
              isinstance(axes, (tuple, list))
              and all(a in parallel.MESH_AXES for a in axes))))


_BOOL: Rule = (lambda v: isinstance(v, bool), "True or False")
_STR: Rule = (lambda v: isinstance(v, str), "a string")
_REAL: Rule = (_is_real, "a finite number")
_AXES: Rule = (lambda v: _is_int(v) and (v == -1 or v >= 1),
               "-1 (the devices left) or an integer >= 1")

# Every field but those whose rules live elsewhere: model.objective
# (TransformerConfig.from_config), diffusion.schedule (schedules.from_config),
# data.markov (markov.checked_params) and the sampler's options in `sample`
# (sampler_options.make_options).
FIELDS: dict[str, Rule] = {
    "model.num_layers": _int(1),
    "model.num_heads": _int(1),
    "model.head_dim": (lambda v: _is_int(v) and v >= 2 and v % 2 == 0,
                       "an even integer >= 2 (RoPE rotates pairs of features)"),
    "model.embed_dim": _int(1),
    "model.mlp_dim": _int(1),
    "model.time_conditioning": _BOOL,
    "model.dtype": _one_of(DTYPES),
    "model.rope_base": _real(0, open_low=True),
    "model.attention_impl": _one_of(ATTENTION_IMPLS),
    "model.batch_slices": _int(1),
    "model.local_width": _int(0, "an integer >= 0 (0 = off)"),
    "model.remat": _one_of(models.transformer.REMAT_POLICIES),
    "model.scan_layers": _BOOL,
    "model.block_size": _int(0, "an integer >= 0 (0 = no blocks)"),
    "data.corpus": _one_of(corpora.CORPORA),
    "data.files": _STR,
    "data.data_dir": _STR,
    "data.tokenizer": _one_of(tokenizers.TOKENIZERS),
    "data.tokenizer_model": _STR,
    "data.seq_len": _int(1),
    "data.packing": _one_of(pipeline.PACKINGS),
    "data.condition_on_length": _BOOL,
    "data.validation_documents": _int(1),
    "data.follow_symlinks": _BOOL,
    "data.max_file_bytes": _int(1),
    "diffusion.power": _REAL,
    "diffusion.eps": _REAL,
    "diffusion.times": _one_of(objective.TIMES),
    "diffusion.complementary_masks": _BOOL,
    "train.steps": _int(0),
    "train.batch_size": _int(1),
    "train.learning_rate": _real(0),
    "train.warmup_steps": _int(0),
    "train.final_lr_fraction": _real(0, 1),
    "train.weight_decay": _real(0),
    "train.b1": _real(0, 1, open_high=True),
    "train.b2": _real(0, 1, open_high=True),
    "train.grad_clip": _real(0),
    "train.ema_decay": _real(0, 1, open_high=True),
    "train.seed": _int(0),
    "train.log_every": _int(1),
    "train.eval_every": _int(1),
    "train.checkpoint_every": _int(1),
    "train.max_checkpoints": _int(1),
    "train.require_checksums": _BOOL,
    "train.skip_nonfinite_steps": _BOOL,
    "train.microbatches": _int(1),
    "train.init_from": _STR,
    "train.profile_steps": (
        lambda v: v == () or (isinstance(v, (tuple, list)) and len(v) == 2
                              and all(map(_is_int, v)) and 1 <= v[0] <= v[1]),
        "() (off) or (first, last) with 1 <= first <= last"),
    "eval.batch_size": _int(1),
    "eval.num_t_samples": _int(1),
    "eval.batches_during_training": _int(0, "an integer >= 0 (0 = all)"),
    "eval.split": _STR,  # Which split: a rule across fields.
    "eval.seed": _int(0),
    "sample.num_samples": _int(0, "an integer >= 0 (0 = none)"),
    "sample.length": _int(0, "an integer >= 0 (0 = data.seq_len)"),
    "sample.seed": _int(0),
    "mesh.data": _AXES,
    "mesh.fsdp": _AXES,
    "mesh.tensor": _AXES,
    "mesh.rules": ((lambda v: isinstance(v, (tuple, list))
                    and all(map(_is_rule, v))),
                   "pairs (logical axis name, None or mesh axes of "
                   f"{list(parallel.MESH_AXES)})"),
}


def check_sample_length(length: int, seq_len: int, what: str) -> None:
  """Refuses a sample longer than the rows the model was trained on (RoPE
  would extrapolate to positions it never saw)."""
  if length > seq_len:
    raise errors.UserError(
        f"{what} is {length} tokens but the model was trained on rows of "
        f"data.seq_len={seq_len}; sample at most {seq_len}")


def _structure(config) -> list[str]:
  """Groups and fields missing from or unknown to config_base.base_config()."""
  base = config_base.base_config()
  problems = []
  for group in sorted(set(base) | set(config)):
    if group not in config or group not in base:
      problems.append(f"config group {group!r} is "
                      f"{'missing' if group not in config else 'unknown'}")
      continue
    fields, known = set(config[group]), set(base[group])
    problems += [f"config field {group}.{f} is missing" for f in sorted(known - fields)]
    problems += [f"config field {group}.{f} is unknown" for f in sorted(fields - known)]
  return problems


def _called(check: Callable[[], object]) -> list[str]:
  """The problem an existing check raises, if any."""
  try:
    check()
  except errors.UserError as e:
    return [str(e)]
  except (KeyError, TypeError, ValueError) as e:  # A value of the wrong type.
    return [f"{type(e).__name__}: {e}"]
  return []


def _fields(config) -> dict[str, str]:
  """Field name -> its problem, for the fields that break their own rule."""
  problems = {}
  for name, (ok, allowed) in FIELDS.items():
    group, field = name.split(".")
    value = config[group][field]
    if not ok(value):
      problems[name] = f"{name}={value!r} must be {allowed}"
  return problems


class _Setting(NamedTuple):
  """What a rule across fields may read besides the config."""
  devices: Sequence | None
  process_count: int
  training: bool
  microbatches: int  # train.microbatches, 1 when it broke its own rule.


# Rules across fields: (the fields it reads, whether it needs the devices,
# rule(config, setting) -> problems). A rule runs only when the fields it
# reads passed their own rules (FIELDS).
_RULES: list[tuple[tuple[str, ...], bool, Callable]] = []


def _rule(*fields: str, devices: bool = False):
  def register(rule):
    _RULES.append((fields, devices, rule))
    return rule
  return register


@_rule("model.time_conditioning", "model.block_size")
def _model(config, _):
  return _called(lambda: models.TransformerConfig.from_config(
      config.model, vocab_size=1))


@_rule("model.block_size", "data.seq_len", "sample.length")
def _blocks_fill_rows(config, _):
  size = config.model.block_size
  lengths = {"data.seq_len": config.data.seq_len,
             "sample.length": config.sample.length}
  return [f"model.block_size={size} must divide {name}={length} (the rows "
          "are written and scored in whole blocks)"
          for name, length in lengths.items() if size and length % size]


@_rule("model.block_size")
def _sampling_blocks(config, _):
  return _called(lambda: models.check_block_length(
      config.model.block_size, config.sample.block_length))


@_rule("diffusion.power", "diffusion.eps")
def _schedule(config, _):
  return _called(lambda: schedules.from_config(config.diffusion))


@_rule("data.corpus")
def _markov_chain(config, _):
  if config.data.corpus != "markov":
    return []
  return _called(lambda: markov.checked_params(config.data.markov))


@_rule()
def _tokenizer_training(config, _):
  return _called(lambda: tokenizer_training.check_settings(
      config.data.tokenizer_train))


@_rule()
def _sampler(config, _):
  return _called(lambda: sampler_options.make_options(config.sample, {}))


@_rule("data.corpus", "eval.split")
def _eval_split(config, _):
  splits = corpora.splits(config.data.corpus)
  if config.eval.split in splits:
    return []
  return [f"eval.split={config.eval.split!r} must be one of the splits of "
          f"data.corpus={config.data.corpus!r}: {list(splits)}"]


@_rule("sample.length", "data.seq_len")
def _sample_length(config, _):
  return _called(lambda: check_sample_length(
      config.sample.length, config.data.seq_len,
      f"sample.length={config.sample.length}"))


@_rule("train.batch_size", "diffusion.complementary_masks")
def _complementary_pairs(config, setting):
  micro = setting.microbatches
  if not (setting.training and config.diffusion.complementary_masks
          and config.train.batch_size // micro % 2):
    return []
  return ["diffusion.complementary_masks=True pairs the rows of each step's "
          f"batch: train.batch_size={config.train.batch_size} / "
          f"train.microbatches={micro} must be even"]


@_rule("train.batch_size")
def _microbatches(config, setting):
  micro, size = setting.microbatches, config.train.batch_size
  if not setting.training or size % micro == 0:
    return []
  return [f"train.microbatches={micro} must divide train.batch_size={size}"]


@_rule("train.batch_size", "model.batch_slices")
def _batch_slices(config, setting):
  micro, size = setting.microbatches, config.train.batch_size
  if not setting.training or size % micro or (
      size // micro % config.model.batch_slices == 0):
    return []
  per_step = "" if micro == 1 else f" / train.microbatches={micro}"
  return [f"model.batch_slices={config.model.batch_slices} must divide "
          f"train.batch_size={size}{per_step}"]


@_rule("model.attention_impl", "model.dtype")
def _cudnn(config, setting):
  """model.attention_impl='cudnn': cuDNN's flash attention runs on NVIDIA
  GPUs, in 16-bit floats."""
  if config.model.attention_impl != "cudnn":
    return []
  problems = []
  if config.model.dtype not in ("bfloat16", "float16"):
    problems.append(f"model.attention_impl='cudnn' needs model.dtype "
                    f"'bfloat16' or 'float16', not {config.model.dtype!r}")
  platforms = sorted({d.platform for d in setting.devices or ()})
  if setting.devices is not None and platforms != ["gpu"]:
    problems.append(f"model.attention_impl='cudnn' needs NVIDIA GPUs, not "
                    f"{'/'.join(platforms)} devices; use '' or 'xla'")
  return problems


def _mesh_shape(config, setting) -> dict[str, int] | None:
  try:
    return parallel.mesh_shape(config.mesh, len(setting.devices))
  except errors.UserError:
    return None


@_rule("mesh.data", "mesh.fsdp", "mesh.tensor", devices=True)
def _mesh(config, setting):
  try:
    shape = parallel.mesh_shape(config.mesh, len(setting.devices))
  except errors.UserError as e:
    return [str(e)]
  local_devices = len(setting.devices) // setting.process_count
  if local_devices % shape["tensor"]:
    return [f"mesh.tensor={shape['tensor']} must divide the {local_devices} "
            "devices of each process (a tensor-parallel group stays within a "
            "process, on its fast interconnect)"]
  return []


@_rule("mesh.data", "mesh.fsdp", "mesh.tensor", "model.num_heads",
       "model.mlp_dim", devices=True)
def _tensor_split(config, setting):
  tensor = (_mesh_shape(config, setting) or {"tensor": 1})["tensor"]
  return [f"mesh.tensor={tensor} must divide model.{field}="
          f"{config.model[field]} (else they are not split: every tensor "
          "device repeats the whole work)"
          for field in ("num_heads", "mlp_dim") if config.model[field] % tensor]


def _shares(config, setting, name: str, parts: int) -> list[str]:
  """`name` (a batch size) split into `parts` microbatches must give each
  data-parallel shard (mesh.data x mesh.fsdp; rows are replicated over
  tensor) and each process an equal share of its rows."""
  shape = _mesh_shape(config, setting)
  if shape is None or shape["tensor"] == 1:
    shards, what = len(setting.devices), "devices"
  else:
    shards = shape["data"] * shape["fsdp"]
    what = "data-parallel shards (mesh.data * mesh.fsdp)"
  size = config[name.split(".")[0]].batch_size
  sharers = [f"the {shards} {what}", f"the {setting.process_count} processes"]
  if parts > 1:
    sharers[0] = (f"{shards * parts} (the {shards} {what} times "
                  f"train.microbatches={parts})")
  return [f"{name}={size} must be divisible by {whose}: each takes an equal "
          "share of the rows"
          for count, whose in zip((shards * parts, setting.process_count),
                                  sharers) if size % count]


@_rule("train.batch_size", devices=True)
def _train_batch_shares(config, setting):
  if not setting.training:
    return []
  return _shares(config, setting, "train.batch_size", setting.microbatches)


@_rule("eval.batch_size", devices=True)
def _eval_batch_shares(config, setting):
  return _shares(config, setting, "eval.batch_size", 1)


def _across(config, bad: set[str], devices, process_count: int,
            training: bool) -> list[str]:
  """The rules across fields (and the devices) whose fields are valid."""
  micro = 1 if "train.microbatches" in bad else config.train.microbatches
  setting = _Setting(devices, process_count, training, micro)
  problems = []
  for fields, needs_devices, rule in _RULES:
    if bad.isdisjoint(fields) and (devices is not None or not needs_devices):
      problems += rule(config, setting)
  return problems


def known_vocab_size(data_config) -> int | None:
  """The ids data.tokenizer predicts, when the config says so without a
  file: the byte and char tokenizers, or a sentencepiece model of
  data.tokenizer_train.vocab_size pieces (trained on first use); else None."""
  if data_config.tokenizer == "sentencepiece":
    return data_config.tokenizer_train.vocab_size or None
  return tokenizers.TOKENIZERS[data_config.tokenizer].vocab_size



def check(config, *, devices: Sequence | None = None, process_count: int = 1,
          training: bool = True) -> None:
  """Raises one errors.UserError listing every problem of `config`.

  Args:
    config: a full config (config_base.base_config() with a recipe's values).
    devices: the devices the mesh will span (jax.devices()); None skips the
      rules about devices (the mesh, batch sizes divisible by them).
    process_count: the processes the batches are split across.
    training: whether the command trains (then train.batch_size matters).
  """
  problems = _structure(config)
  if not problems:
    bad = _fields(config)
    problems = list(bad.values()) + _across(config, set(bad), devices,
                                            process_count, training)
  if len(problems) == 1:
    raise errors.UserError(problems[0])
  if problems:
    raise errors.UserError(f"{len(problems)} problems in the config: "
                           + "; ".join(problems))

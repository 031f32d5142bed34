"""Python API: load a trained model from its workdir, then sample, infill, score.

  lm = diffusion_lm.load("runs/quickstart")
  lm.sample(4, prompt="def ")           # 4 texts that start with "def "
  lm.infill(["def ", 8, "(x):\\n"])      # 8 tokens generated between the parts
  lm.score(["import os\\n"])             # NELBO bound in bits per text

A checkpoint of the autoregressive twin loads as an AutoregressiveLM with the
same `sample` and `score` (exact); its `infill` is an error. A block-diffusion
checkpoint loads as a DiffusionLM. Defaults for
every sampling option come from the config's `sample` group.

`evaluate_checkpoint` is --mode=eval: a workdir's newest intact checkpoint on
a split, written to <workdir>/eval_<split>.json.
"""

import json
import math
import numbers
import os

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from diffusion_lm import (autoregressive, checkpoint_integrity, checkpoints,
                          errors, evaluation, files, metrics, models, parallel,
                          validation)
from diffusion_lm.data import pipeline
from diffusion_lm.diffusion import sampler_options, samplers, schedules


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class LanguageModel:
  """A trained model: parameters, config and tokenizer; sample, score.

  `load` returns a DiffusionLM or an AutoregressiveLM, by the checkpoint's
  model.objective; both sample and score through this one API.
  """

  def __init__(self, graphdef, params, config, tokenizer, mesh,
               step: int | None = None):
    self.graphdef = graphdef
    self.params = params
    self.config = config
    self.tokenizer = tokenizer
    self.mesh = mesh
    self.step = step
    self._eval_steps = {}  # num_t_samples -> the compiled eval step

  def generate(self, init_BxL, *, seed: int | None = None,
               **options) -> samplers.SampleResult:
    """Fills the [MASK] ids of init_BxL (options: sampler_options.SamplerOptions
    fields; unset ones from config.sample)."""
    raise NotImplementedError

  def _key(self, seed: int | None):
    return jax.random.PRNGKey(self.config.sample.seed if seed is None else seed)

  def _template(self, parts, num_samples: int) -> np.ndarray:
    """[num_samples, L] ids: text parts fixed, integer parts masked; L at most
    data.seq_len."""
    if not (isinstance(num_samples, numbers.Integral) and num_samples >= 1):
      raise errors.UserError(f"num_samples must be an integer >= 1, got "
                             f"{num_samples!r}")
    ids = [np.full(p, self.tokenizer.mask_id, np.int32) if _is_int(p)
           else self.tokenizer.encode(p) for p in parts]
    template = np.concatenate(ids)
    validation.check_sample_length(len(template), self.config.data.seq_len,
                                   "the sample")
    return np.tile(template, (num_samples, 1))

  def prompt_template(self, prompt: str = "", num_samples: int | None = None,
                      length: int | None = None) -> np.ndarray:
    """[num_samples, length] ids: the prompt, then [MASK] (None: the defaults
    of config.sample; its length 0 means data.seq_len)."""
    sample_config = self.config.sample
    if num_samples is None:
      num_samples = sample_config.num_samples
    if length is None:
      length = sample_config.length or self.config.data.seq_len
    if not (isinstance(length, numbers.Integral) and length >= 1):
      raise errors.UserError(f"length must be an integer >= 1, got {length!r}")
    prompt_len = len(self.tokenizer.encode(prompt))
    if prompt_len >= length:
      raise errors.UserError(
          f"the prompt is {prompt_len} tokens but the sample length is {length}: "
          "it must leave at least one token to generate")
    return self._template([prompt, length - prompt_len], num_samples)

  def texts(self, result: samplers.SampleResult) -> list[str]:
    """The generated rows as text, each cut at its length (stop_at_eos)."""
    tokens = np.asarray(result.tokens_BxL)
    return [self.tokenizer.decode(row[:n])
            for row, n in zip(tokens, np.asarray(result.length_B))]

  def sample(self, num_samples: int | None = None, *, length: int | None = None,
             prompt: str = "", seed: int | None = None, **options) -> list[str]:
    """Texts of `length` tokens (default config) that begin with `prompt`."""
    init = self.prompt_template(prompt, num_samples, length)
    return self.texts(self.generate(init, seed=seed, **options))

  def _eval_step(self, num_t_samples: int):
    if num_t_samples not in self._eval_steps:
      self._eval_steps[num_t_samples] = evaluation.make_eval_step(
          self.graphdef, jax.tree.map(lambda x: x.sharding, self.params),
          self.mesh, self.tokenizer.mask_id, num_t_samples)
    return self._eval_steps[num_t_samples]

  def score(self, texts: list[str], num_t_samples: int = 64,
            seed: int = 0) -> list[float]:
    """-log2 p(text) in bits, one per text, scored as a training row: NELBO
    upper bounds (num_t_samples estimates each), exact for the
    autoregressive twin.

    Each text becomes a document (its tokens, then EOS) alone in a row of
    data.seq_len tokens. A model trained with data.packing='pad' (and not
    data.condition_on_length) reads the rest of the row as EOS filler, as in
    training: the bound is on -log2 p(text), its length included. Otherwise
    the document sees only itself: the bound is on -log2 p(text | its length
    in tokens) (for the causal twin, which never sees what follows, it is
    -log2 p(text)).
    """
    if isinstance(texts, (str, bytes)):
      raise errors.UserError("score takes a list of texts, not one text")
    if not texts:
      return []
    data = self.config.data.copy_and_resolve_references()
    data.condition_on_length = data.condition_on_length or data.packing == "wrap"
    eos = [] if self.tokenizer.eos_id is None else [self.tokenizer.eos_id]
    docs = [np.concatenate([self.tokenizer.encode(t), eos]).astype(np.int32)
            for t in texts]
    for text, doc in zip(texts, docs):
      if len(doc) > data.seq_len:
        raise errors.UserError(
            f"text {text[:20]!r}... is {len(doc)} tokens with EOS; the model's "
            f"rows hold data.seq_len={data.seq_len}")
    rows = pipeline.pad_rows(docs, data, self.tokenizer.eos_id)
    batches = pipeline.eval_batches(rows, self.config.eval.batch_size)
    nelbo_KxN = evaluation.nelbos(self._eval_step(num_t_samples), self.params,
                                  batches, self.mesh, jax.random.PRNGKey(seed))
    return list(nelbo_KxN.mean(axis=0)[:len(texts)] / math.log(2))


class DiffusionLM(LanguageModel):
  """A masked diffusion LM: samples with any sampler, fills gaps. A
  block-diffusion model samples block by block with a cache of the clean
  blocks' keys and values; after its first gap, fixed text may stand only in
  blocks that also hold [MASK] (models.BlockDenoiser.for_template)."""

  def generate(self, init_BxL, *, seed: int | None = None,
               **options) -> samplers.SampleResult:
    block_length = sampler_options.make_options(self.config.sample,
                                                options).block_length
    network = models.sampling_network(
        self.graphdef, self.config.model.block_size, init_BxL,
        self.tokenizer.mask_id, block_length)
    return self.generate_with(
        network, self.params, init_BxL, seed=seed,
        reads_mask_rate=self.config.model.time_conditioning, **options)

  def generate_with(self, denoise_fn, params, init_BxL, *, reads_mask_rate: bool,
                    seed: int | None = None, **options) -> samplers.SampleResult:
    """generate, with denoise_fn(params, z, mask_rate) in place of the model
    (as samplers.sample takes it; e.g. chain_oracle's exact denoiser)."""
    return samplers.sample(
        denoise_fn, params, self._key(seed), init_BxL,
        mask_id=self.tokenizer.mask_id, eos_id=self.tokenizer.eos_id,
        reads_mask_rate=reads_mask_rate,
        options=sampler_options.make_options(self.config.sample, options),
        schedule=schedules.from_config(self.config.diffusion))

  def infill(self, parts, num_samples: int = 1, *, seed: int | None = None,
             **options) -> list[str]:
    """Fills the gaps of a template: strings are kept, an int n is n new
    tokens (0: none)."""
    if not isinstance(parts, (list, tuple)):
      raise errors.UserError(f"infill takes a list of parts (strings and "
                             f"integer gaps), got {parts!r}")
    for i, part in enumerate(parts):
      if not (isinstance(part, str) or (_is_int(part) and part >= 0)):
        raise errors.UserError(
            f"infill's parts[{i}]={part!r} must be a string (kept) or an "
            "integer >= 0 (that many tokens to generate)")
    if not any(_is_int(p) and p > 0 for p in parts):
      raise errors.UserError("infill needs at least one positive integer gap in parts")
    return self.texts(self.generate(self._template(parts, num_samples),
                                    seed=seed, **options))


class AutoregressiveLM(LanguageModel):
  """The autoregressive twin: continues prompts left to right with a KV cache."""

  def generate(self, init_BxL, *, seed: int | None = None,
               **options) -> samplers.SampleResult:
    autoregressive.check_options(options)
    return autoregressive.generate(
        self.graphdef, self.params, self._key(seed), init_BxL,
        bos_id=self.tokenizer.mask_id, eos_id=self.tokenizer.eos_id,
        options=sampler_options.make_options(self.config.sample, options))

  def infill(self, parts, num_samples: int = 1, **options) -> list[str]:
    raise errors.UserError(
        "infill needs a diffusion model: an autoregressive model writes left "
        "to right and cannot see the text after a gap")


# Fields of config.data that say where data is read and prepared: they come
# from the caller, never from a checkpoint.
DATA_LOCATIONS = ("data_dir", "files")


def load(workdir: str, step: int | None = None, mesh=None, *,
         data_dir: str = "", files: str = "",
         require_checksums: bool = False) -> LanguageModel:
  """The model of the newest intact (or the given) checkpoint in `workdir`.

  Config and tokenizer come from the checkpoint, except `data.data_dir` and
  `data.files`, which are these arguments (a difference from the checkpoint's
  is logged). A newest checkpoint that cannot be read or fails its checksums
  is passed over for the one before, with a warning; non-finite parameters
  are an error. A checkpoint without checksums (an old one, or one whose
  checksums are lost) loads unverified, with a warning; with
  require_checksums it is passed over too. Parameters (EMA when trained
  with it) are placed on `mesh` with the config's sharding rules; the
  default mesh puts every device on the fsdp axis, so each holds a slice of
  them.
  """
  mngr = checkpoints.manager(workdir, read_only=True)
  if mesh is None:
    mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": -1}))

  def restore(s):
    config, tokenizer = checkpoints.restore_metadata(mngr, s,
                                                     require_checksums)
    graphdef, abstract_state = models.abstract_model(
        models.TransformerConfig.from_config(config.model, tokenizer.vocab_size))
    shardings = parallel.state_shardings(abstract_state, config.mesh.rules, mesh)
    target = parallel.with_shardings(nnx.to_pure_dict(abstract_state), shardings)
    return (config, tokenizer, graphdef,
            checkpoints.restore_params(mngr, s, target, config.train))

  steps = checkpoints.steps_to_try(mngr, workdir, step)
  step, (config, tokenizer, graphdef, params), _ = (
      checkpoint_integrity.newest_intact(mngr, restore, steps))
  given = {"data_dir": data_dir, "files": files}
  changed = [f"data.{k}={v!r} (the checkpoint's: {config.data[k]!r})"
             for k, v in given.items() if config.data[k] != v]
  if changed:
    logging.info("Data locations come from the caller: %s", ", ".join(changed))
  config.data.update(given)
  kind = (AutoregressiveLM if config.model.objective == "autoregressive"
          else DiffusionLM)
  return kind(graphdef, params, config, tokenizer, mesh, step=step)


def evaluate_checkpoint(config, workdir: str) -> dict:
  """Bounds of the newest intact checkpoint in `workdir` on config.eval.split.

  Model, data and tokenizer come from the checkpoint, but where the data is
  read and prepared (data.files, data.data_dir) comes from `config`, as do
  the eval group and the mesh; another data field that differs from the
  checkpoint's is logged. Results go to <workdir>/eval_<split>.json (strict
  JSON, metrics.strict; written whole, via a temporary file).
  """
  devices = {"devices": jax.devices(), "process_count": jax.process_count(),
             "training": False}
  validation.check(config, **devices)
  mesh = parallel.make_mesh(config.mesh)
  lm = load(workdir, mesh=mesh, data_dir=config.data.data_dir,
            files=config.data.files,
            require_checksums=config.train.require_checksums)
  # As plain values: a group (a ConfigDict) never equals a dict, nor a
  # locked or frozen copy of itself.
  given, saved = config.data.to_dict(), lm.config.data.to_dict()
  for field, value in given.items():
    if field not in DATA_LOCATIONS and value != saved[field]:
      logging.warning("data.%s: evaluating with the checkpoint's %r (the "
                      "model's data), not %r", field, saved[field], value)
  run_config = lm.config.copy_and_resolve_references()
  run_config.update({"eval": config.eval, "mesh": config.mesh})
  validation.check(run_config, **devices)  # The split of the model's corpus.
  eval_step = evaluation.make_eval_step(
      lm.graphdef, jax.tree.map(lambda x: x.sharding, lm.params), mesh,
      lm.tokenizer.mask_id, config.eval.num_t_samples)
  split = config.eval.split
  result = evaluation.EvalSplit(run_config, lm.tokenizer, split).evaluate(
      eval_step, lm.params, mesh)
  if jax.process_index() == 0:
    record = {"step": lm.step, "split": split,
              "num_t_samples": config.eval.num_t_samples, **result}
    files.write_atomically(
        os.path.join(workdir, f"eval_{split}.json"),
        json.dumps(metrics.strict(record), indent=2, allow_nan=False))
  logging.info("%s split at step %d: %s", split, lm.step, result)
  return result

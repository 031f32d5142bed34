"""Python API: load a trained model from its workdir, then sample, infill, score.

  lm = diffusion_lm.load("runs/quickstart")
  lm.sample(4, prompt="def ")           # 4 texts that start with "def "
  lm.infill(["def ", 8, "(x):\\n"])      # 8 tokens generated between the parts
  lm.score(["import os\\n"])             # NELBO bound in bits per text

Defaults for every sampling option come from the config's `sample` group.
"""

import dataclasses
import math

import jax
import ml_collections
import numpy as np
from flax import nnx

from diffusion_lm import checkpoints, errors, models, parallel
from diffusion_lm.diffusion import objective, samplers, schedules


@dataclasses.dataclass(frozen=True)
class Denoiser:
  """(params, z, mask_rate) -> logits; hashable, as samplers require."""

  graphdef: nnx.GraphDef

  def __call__(self, params, z_BxL, mask_rate_B):
    return nnx.merge(self.graphdef, params)(z_BxL, mask_rate_B)


class DiffusionLM:
  """A trained masked diffusion LM: parameters, config and tokenizer."""

  def __init__(self, graphdef, params, config, tokenizer, step: int | None = None):
    self.denoiser = Denoiser(graphdef)
    self.params = params
    self.config = config
    self.tokenizer = tokenizer
    self.step = step

  def generate(self, init_BxL, *, seed=None, **options):
    """Fills the [MASK] ids of init_BxL; returns (tokens, network calls).

    options: steps, sampler, temperature, top_p, float64 (default: config.sample).
    """
    cfg = self.config.sample
    unknown = set(options) - {"steps", "sampler", "temperature", "top_p", "float64"}
    if unknown:
      raise TypeError(f"unknown sampling options {sorted(unknown)}")
    options = {k: cfg[k] if options.get(k) is None else options[k]
               for k in ("steps", "sampler", "temperature", "top_p", "float64")}
    seed = cfg.seed if seed is None else seed
    return samplers.sample(
        self.denoiser, self.params, jax.random.PRNGKey(seed), init_BxL,
        mask_id=self.tokenizer.mask_id,
        schedule=schedules.from_config(self.config.diffusion),
        reads_mask_rate=self.config.model.time_conditioning, **options)

  def _template(self, parts, num_samples: int, length: int | None = None):
    """[num_samples, L] ids: text parts fixed, integer parts masked."""
    ids = []
    for part in parts:
      if isinstance(part, int):
        ids.append(np.full(part, self.tokenizer.mask_id, np.int32))
      else:
        ids.append(self.tokenizer.encode(part))
    row = np.concatenate(ids) if ids else np.zeros(0, np.int32)
    if length is not None:
      row = np.concatenate([row, np.full(length - len(row), self.tokenizer.mask_id,
                                         np.int32)])
    return np.tile(row, (num_samples, 1))

  def sample(self, num_samples: int | None = None, *, length: int | None = None,
             prompt: str = "", seed: int | None = None, **options) -> list[str]:
    """Texts of `length` tokens (default config) that begin with `prompt`."""
    cfg = self.config.sample
    num_samples = num_samples or cfg.num_samples
    length = length or cfg.length or self.config.data.seq_len
    prompt_len = len(self.tokenizer.encode(prompt))
    if prompt_len >= length:
      raise errors.UserError(
          f"the prompt is {prompt_len} tokens but the sample length is {length}: "
          "it must leave at least one token to generate")
    init = self._template([prompt], num_samples, length)
    tokens, _ = self.generate(init, seed=seed, **options)
    return [self.tokenizer.decode(row) for row in np.asarray(tokens)]

  def infill(self, parts, num_samples: int = 1, *, seed: int | None = None,
             **options) -> list[str]:
    """Fills the gaps of a template: strings are kept, an int n is n new tokens."""
    if not any(isinstance(p, int) and p > 0 for p in parts):
      raise errors.UserError("infill needs at least one positive integer gap in parts")
    tokens, _ = self.generate(self._template(parts, num_samples), seed=seed,
                              **options)
    return [self.tokenizer.decode(row) for row in np.asarray(tokens)]

  def score(self, texts, num_t_samples: int = 64, seed: int = 0) -> list[float]:
    """Upper bounds on -log2 p(text) (bits), each text scored at its own length."""
    mask_id = self.tokenizer.mask_id
    nelbo = jax.jit(lambda params, batch, key: objective.eval_nelbo_sum(
        nnx.merge(self.denoiser.graphdef, params), batch, key, mask_id,
        num_t_samples))
    bits = []
    for i, text in enumerate(texts):
      tokens = self.tokenizer.encode(text)[None]
      batch = {"tokens": tokens, "weights": np.ones(tokens.shape, np.float32)}
      nats = nelbo(self.params, batch, jax.random.fold_in(jax.random.PRNGKey(seed), i))
      bits.append(float(nats) / math.log(2))
    return bits


def load(workdir: str, step: int | None = None, mesh=None) -> DiffusionLM:
  """The model of the latest (or given) checkpoint in `workdir`.

  Config and tokenizer come from the checkpoint. Parameters (EMA when trained
  with it) are placed on `mesh` with the config's sharding rules; the default
  mesh puts every device on the fsdp axis, so each holds a slice of them.
  """
  mngr = checkpoints.manager(workdir, read_only=True)
  step = checkpoints.latest_step_or_raise(mngr, workdir) if step is None else step
  config, tokenizer = checkpoints.restore_metadata(mngr, step)
  graphdef, abstract_state = models.abstract_model(
      models.model_config(config, tokenizer))
  if mesh is None:
    mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": -1}))
  shardings = parallel.state_shardings(abstract_state, config.mesh.rules, mesh)
  target = parallel.with_shardings(nnx.to_pure_dict(abstract_state), shardings)
  params = checkpoints.restore_params(mngr, step, target,
                                      use_ema=config.train.ema_decay > 0)
  return DiffusionLM(graphdef, params, config, tokenizer, step=step)

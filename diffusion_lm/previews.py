"""Samples while training: a few texts from the current parameters, shown in
TensorBoard's Text tab at each evaluation (not written to metrics.jsonl).

The training loop does not import the inference API (diffusion_lm.api), so
this calls the samplers as the API does: `samplers.sample` for diffusion,
`autoregressive.generate` for the twin, with the config's `sample` options.
At most PREVIEWS rows of `sample.length` tokens (0: data.seq_len) from the
seed `sample.seed` at every evaluation, so that they can be compared as
training goes on; none when `sample.num_samples` is 0. Every process samples
(the parameters are sharded over all of them); process 0's writer writes.
"""

import functools

import jax
import numpy as np
from jax.experimental import multihost_utils

from diffusion_lm import autoregressive, models
from diffusion_lm.diffusion import sampler_options, samplers, schedules

PREVIEWS = 4  # Rows sampled at each evaluation, at most.


class Previews:
  """Samples of one run's model from given parameters (`markdown`)."""

  def __init__(self, config, tokenizer, graphdef):
    sample = config.sample
    rows = min(sample.num_samples, PREVIEWS)
    length = sample.length or config.data.seq_len
    self.tokenizer = tokenizer
    self._init_BxL = np.full((rows, length), tokenizer.mask_id, np.int32)
    self._key = jax.random.PRNGKey(sample.seed)
    options = sampler_options.make_options(sample, {})
    if config.model.objective == "autoregressive":
      self._generate = functools.partial(
          autoregressive.generate, graphdef, bos_id=tokenizer.mask_id,
          eos_id=tokenizer.eos_id, options=options)
    else:  # One denoiser for the whole run: the sampler compiles once.
      network = models.sampling_network(
          graphdef, config.model.block_size, self._init_BxL, tokenizer.mask_id,
          options.block_length)
      self._generate = functools.partial(
          samplers.sample, network,
          mask_id=tokenizer.mask_id, eos_id=tokenizer.eos_id,
          reads_mask_rate=config.model.time_conditioning, options=options,
          schedule=schedules.from_config(config.diffusion))

  def texts(self, params) -> list[str]:
    """The samples as text, each cut at its length (stop_at_eos)."""
    result = self._generate(params, self._key, self._init_BxL)
    tokens_BxL, length_B = multihost_utils.process_allgather(
        (result.tokens_BxL, result.length_B), tiled=True)
    return [self.tokenizer.decode(row[:n])
            for row, n in zip(tokens_BxL, length_B)]

  def markdown(self, params) -> str:
    """The samples as markdown: each an indented block, shown as it is."""
    return "\n\n".join(
        f"**sample {i}**\n\n" + "\n".join("    " + line
                                         for line in text.split("\n"))
        for i, text in enumerate(self.texts(params)))

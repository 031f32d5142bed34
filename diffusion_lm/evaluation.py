"""Evaluation: the NELBO bound over a split, as bits per token / byte and perplexity.

  bits_per_token = sum of per-sequence NELBOs / ln 2 / real tokens (EOS included)
  bits_per_byte  = the same bits / UTF-8 bytes of text the evaluated tokens
                   stand for (tokenizer.token_bytes; EOS counts 0): bits per
                   character for text8, bytes the tokens cover for subwords
  perplexity     = 2 ** bits_per_token

All are upper bounds (the NELBO bounds -log p). Per-batch sums come off the
device in float32 and are accumulated on the host in float64.
"""

import json
import math
import os

import jax
import numpy as np
from absl import logging
from flax import nnx

from diffusion_lm import api, metrics, parallel
from diffusion_lm.data import pipeline
from diffusion_lm.diffusion import objective


def make_eval_step(graphdef, param_shardings, mesh, mask_id: int,
                   num_t_samples: int):
  """jit(params, batch, key) -> (NELBO nats summed over the batch, real tokens)."""
  def eval_step(params, batch, key):
    model = nnx.merge(graphdef, params)
    nats = objective.eval_nelbo_sum(model, batch, key, mask_id, num_t_samples)
    return nats, batch["weights"].sum()

  batch_sharding = parallel.batch_sharding(mesh)
  return jax.jit(
      eval_step,
      in_shardings=(param_shardings, batch_sharding, parallel.replicated(mesh)),
      out_shardings=parallel.replicated(mesh))


class EvalSplit:
  """A split packed once, with its byte count, evaluated as often as needed."""

  def __init__(self, config, tokenizer, split: str):
    self.name = split
    self.batch_size = config.eval.batch_size
    self.seed = config.eval.seed
    self.packed = pipeline.pack_split(config, tokenizer, split)
    tokens, weights = self.packed["tokens"], self.packed["weights"]
    self.row_bytes = np.array([np.dot(tokenizer.token_bytes[t], w)
                               for t, w in zip(tokens, weights)], np.float64)

  def evaluate(self, eval_step, params, mesh, max_batches: int = 0) -> dict:
    """Bounds over the split (or its first max_batches global batches)."""
    key = jax.random.PRNGKey(self.seed)
    batches = pipeline.eval_batches(
        self.packed, self.batch_size, process_index=jax.process_index(),
        process_count=jax.process_count())
    sums = []
    for i, local in enumerate(batches):
      if max_batches and i == max_batches:
        break
      batch = parallel.global_batch(local, mesh)
      sums.append(eval_step(params, batch, jax.random.fold_in(key, i)))
    nats, tokens = np.asarray(jax.device_get(sums), np.float64).sum(axis=0)
    bits = nats / math.log(2)
    num_bytes = self.row_bytes[:len(sums) * self.batch_size].sum()
    return {
        "bits_per_token": bits / tokens,
        "bits_per_byte": bits / num_bytes,
        "perplexity": 2.0 ** (bits / tokens),
    }


def evaluate_checkpoint(workdir: str, config) -> dict:
  """--mode=eval: bounds of the latest checkpoint on config.eval.split.

  Model, data and tokenizer come from the checkpoint; the eval group and the
  mesh come from `config`. Results go to <workdir>/eval_<split>.json (written
  whole, via a temporary file) and to metrics.jsonl.
  """
  mesh = parallel.make_mesh(config.mesh)
  lm = api.load(workdir, mesh=mesh)
  run_config = lm.config
  with run_config.unlocked():
    run_config.eval = config.eval
  eval_step = make_eval_step(
      lm.denoiser.graphdef, jax.tree.map(lambda x: x.sharding, lm.params), mesh,
      lm.tokenizer.mask_id, config.eval.num_t_samples)
  split = config.eval.split
  result = EvalSplit(run_config, lm.tokenizer, split).evaluate(
      eval_step, lm.params, mesh)
  result = {"step": lm.step, "split": split, **result}
  if jax.process_index() == 0:
    path = os.path.join(workdir, f"eval_{split}.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2)
    os.replace(path + ".tmp", path)
  writer = metrics.MetricWriter(workdir, enabled=jax.process_index() == 0)
  writer.write(lm.step, {f"eval/{k}": v for k, v in result.items()
                         if k not in ("step", "split")})
  writer.close()
  logging.info("%s split at step %d: %s", split, lm.step, result)
  return result

"""google-deepmind/md4's own sampler, timed beside ours (md4 is not a dependency).

Give the benchmarks `--md4_path=DIR`, a checkout of github.com/google-deepmind/md4
(measured at b9fbf29), in an environment where md4's model imports:

  pip install tfp-nightly chex distrax clu matplotlib seaborn   # --no-deps if
                                                                # they would move jax

This builds md4's text8 model with the shape changed (md4's feature_dim is
the width per head) and random weights, and times md4.sampling.simple_generate,
one jitted fori_loop of `steps` network calls plus md4's final decode call.
"""

import statistics
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp


class _TrainState(NamedTuple):
  params: dict  # What simple_generate reads.
  state: dict


def sample_step_seconds(md4_path: str, *, layers: int, width: int, heads: int,
                        seq: int, vocab: int, batch: int, steps: int = 32,
                        repeats: int = 3) -> float:
  """Median seconds per network call of md4's sampler at this shape."""
  sys.path.insert(0, md4_path)
  from md4 import sampling  # pylint: disable=g-import-not-at-top
  from md4.configs.md4 import text8  # pylint: disable=g-import-not-at-top
  from md4.models import utils  # pylint: disable=g-import-not-at-top
  config = text8.get_config()
  config.update(n_layers=layers, num_heads=heads, feature_dim=width // heads,
                data_shape=(seq,), vocab_size=vocab, timesteps=steps)
  model = utils.get_model(config)
  variables = jax.jit(lambda key: model.init(
      {"sample": key, "params": key}, jnp.ones((batch, seq), jnp.int32),
      cond=None, train=False))(jax.random.PRNGKey(0))
  params = variables.pop("params")
  state = _TrainState(params, dict(variables))
  generate = jax.jit(lambda key, state: sampling.simple_generate(
      key, state, batch_size=batch, model=model, conditioning=None))
  jax.block_until_ready(generate(jax.random.PRNGKey(1), state))  # Compiles.
  seconds = []
  for i in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(generate(jax.random.PRNGKey(2 + i), state))
    seconds.append(time.perf_counter() - start)
  return statistics.median(seconds) / (steps + 1)

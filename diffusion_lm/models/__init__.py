"""Model construction: config -> NNX graph definition and parameters."""

import jax
from flax import nnx

from diffusion_lm.models.transformer import Transformer, TransformerConfig


def abstract_model(cfg: TransformerConfig):
  """(graphdef, nnx.State of ShapeDtypeStructs with logical-axis metadata)."""
  return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))


def init_params(cfg: TransformerConfig, key) -> dict:
  """Freshly initialised parameters as a pure dict (jit it to place them)."""
  _, state = nnx.split(Transformer(cfg, nnx.Rngs(params=key)))
  return nnx.to_pure_dict(state)


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))

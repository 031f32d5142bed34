"""Model construction: config -> NNX graph definition and parameters."""

import dataclasses

import jax
from flax import nnx

from diffusion_lm import batching
from diffusion_lm.models.transformer import Transformer, TransformerConfig


@dataclasses.dataclass(frozen=True)
class Denoiser:
  """(params, z, mask_rate) -> logits for the samplers; hashable, as they
  require. Rows run in model.batch_slices slices (batching.in_slices)."""

  graphdef: nnx.GraphDef

  def __call__(self, params, z_BxL, mask_rate_B):
    model = nnx.merge(self.graphdef, params)
    return batching.in_slices(lambda r: model(r["z"], r["rate"]),
                               {"z": z_BxL, "rate": mask_rate_B},
                               model.cfg.batch_slices)


def abstract_model(cfg: TransformerConfig):
  """(graphdef, nnx.State of ShapeDtypeStructs with logical-axis metadata)."""
  return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))


def init_params(cfg: TransformerConfig, key) -> dict:
  """Freshly initialised parameters as a pure dict (jit it to place them)."""
  _, state = nnx.split(Transformer(cfg, nnx.Rngs(params=key)))
  return nnx.to_pure_dict(state)


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))

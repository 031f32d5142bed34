"""Model construction: config -> NNX graph definition and parameters."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffusion_lm import batching, errors
from diffusion_lm.diffusion import samplers
from diffusion_lm.models.transformer import Transformer, TransformerConfig


@dataclasses.dataclass(frozen=True)
class Denoiser:
  """(params, z, mask_rate) -> logits for the samplers; hashable, as they
  require. Rows run in model.batch_slices slices (batching.in_slices)."""

  graphdef: nnx.GraphDef

  def __call__(self, params, z_BxL, mask_rate_B):
    model = nnx.merge(self.graphdef, params)
    # A block-diffusion model reads the row as its own clean prefix: the
    # blocks before the current one are committed.
    two_streams = model.cfg.block_size > 0
    return batching.in_slices(
        lambda r: model(r["z"], r["rate"],
                        clean_BxL=r["z"] if two_streams else None),
        {"z": z_BxL, "rate": mask_rate_B}, model.cfg.batch_slices)


@dataclasses.dataclass(frozen=True)
class BlockDenoiser(samplers.Network):
  """A block-diffusion model's cached decoder, for the samplers' loop.

  A call reads each row's current block (block_size positions) and the
  cached keys and values of the clean positions before it. The state is
  (cache, written_B): the cache holds the clean stream of each row's first
  written_B positions. When a row has moved on to a new block, the call
  first reads the block it finished as clean text and caches it (no extra
  call); the first call reads the `prefix` positions of whole blocks of
  prompt (the batch's longest) the same way.
  """

  graphdef: nnx.GraphDef
  block_size: int  # The model's (model.block_size).
  prefix: int = 0

  def window(self, length: int, block_length: int) -> int:
    del length, block_length  # See for_template.
    return self.block_size

  def init(self, params, init_BxL, width: int):
    del width
    model = nnx.merge(self.graphdef, params)
    b, l = init_BxL.shape
    return model.init_block_cache(b, l), jnp.zeros((b,), jnp.int32)

  def __call__(self, params, state, z_BxL, rate_B, start_B, need_B,
               width: int):
    del rate_B  # Block diffusion reads no masking rate.
    model = nnx.merge(self.graphdef, params)
    cache, written_B = state
    behind = jnp.max(jnp.where(need_B, start_B - written_B, 0))

    def step(clean_length, clean_start_B):
      return lambda: model.block_step(z_BxL, cache, start_B, clean_start_B,
                                      clean_length)

    branches = [step(0, start_B),
                step(width, jnp.maximum(start_B - width, 0))]
    if self.prefix > width:
      branches.append(step(self.prefix, jnp.zeros_like(start_B)))
    index = jnp.minimum((behind > 0).astype(jnp.int32) + (behind > width),
                        len(branches) - 1)
    logits, cache = jax.lax.switch(index, branches)
    return logits, (cache, jnp.where(need_B, start_B, written_B))

  @classmethod
  def for_template(cls, graphdef, size: int, init_BxL,
                   mask_id: int) -> "BlockDenoiser":
    """The decoder of a model with blocks of `size` for this template, which
    it checks: its length a multiple of the block size, and no block without
    [MASK] after one with some (the blocks are written left to right, and a
    later block's clean keys read the blocks before it)."""
    init = np.asarray(init_BxL)
    b, l = init.shape
    if l % size:
      raise errors.UserError(
          f"a block-diffusion model writes whole blocks of {size} tokens: the "
          f"sample length {l} must be a multiple of {size}")
    masked_BxN = (init == mask_id).reshape(b, l // size, size).any(axis=-1)
    text_after_gap = (np.cumsum(masked_BxN, axis=1) > 0) & ~masked_BxN
    if text_after_gap.any():
      row, block = np.argwhere(text_after_gap)[0]
      raise errors.UserError(
          "a block-diffusion model writes blocks left to right: after a gap, "
          f"every block of {size} tokens must still hold a [MASK] (text "
          f"inside such blocks is fine); block {block} of row {row} is all text")
    first_B = np.where(masked_BxN.any(axis=1), masked_BxN.argmax(axis=1), 0)
    return cls(graphdef, size, int(first_B.max()) * size)


def abstract_model(cfg: TransformerConfig):
  """(graphdef, nnx.State of ShapeDtypeStructs with logical-axis metadata)."""
  return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))


def init_params(cfg: TransformerConfig, key) -> dict:
  """Freshly initialised parameters as a pure dict (jit it to place them)."""
  _, state = nnx.split(Transformer(cfg, nnx.Rngs(params=key)))
  return nnx.to_pure_dict(state)


def in_layout(params: dict, source: TransformerConfig,
              cfg: TransformerConfig) -> dict:
  """A `source` model's parameters (a pure dict) in `cfg`'s layout. They are
  the same but for the input layer of a causal source read by a
  bidirectional model: LocalMixing's kernel has offsets -k..0 there and
  -k..k here, and the new offsets 1..k start at zero, so the layer computes
  what it did from the tokens before each position."""
  k = cfg.local_width
  if not (source.causal and not cfg.causal and k and source.local_width == k):
    return params
  kernel = params["local"]["kernel"]
  return dict(params, local={"kernel": jnp.concatenate(
      [kernel, jnp.zeros((k, *kernel.shape[1:]), kernel.dtype)])})


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def sampling_network(graphdef, block_size: int, init_BxL, mask_id: int,
                     block_length: int):
  """What the samplers run for a diffusion model of this template: its
  Denoiser, or for block diffusion (block_size > 0) its cached decoder."""
  check_block_length(block_size, block_length)
  if not block_size:
    return Denoiser(graphdef)
  return BlockDenoiser.for_template(graphdef, block_size, init_BxL, mask_id)


def check_block_length(block_size: int, block_length: int) -> None:
  """A block-diffusion model samples in its own blocks."""
  if block_size and block_length not in (0, block_size):
    raise errors.UserError(
        f"sample.block_length={block_length}: a block-diffusion model samples "
        f"in its own blocks (0, or model.block_size={block_size})")

"""The network: a pre-norm transformer in Flax NNX (RoPE, RMSNorm, gated MLP).

Bidirectional for diffusion (the denoiser); causal, with a KV-cache decoder,
for the autoregressive twin (`model.objective='autoregressive'`); for block
diffusion (`'block_diffusion'`, BD3-LM), two streams side by side with a
cached block-by-block decoder (see `block_attention`). Every
parameter carries `logical_axes` metadata (names such as 'embed', 'mlp'), which
`parallel.py` maps to mesh axes with the rules in `config.mesh.rules`.
Parameters are kept in float32; matmuls run in `dtype`; logits are float32.

For large models: `remat` recomputes each block's activations in the
backward pass instead of keeping them (REMAT_POLICIES: 'none', 'full', or
'dots', which keeps the outputs of the weight matmuls and recomputes the
rest), and `scan_layers` stores the blocks' parameters stacked along a
leading 'layers' axis and runs them with one lax.scan, so the compiled
program (and its compile time) does not grow with depth. The two layouts
have different parameter trees (blocks/0/attn/qkv [D, 3, H, K] or
blocks/attn/qkv [layers, D, 3, H, K]) but, for a seed, the same values.

The input vocabulary has one more id than the output: the [MASK] id
(= vocab_size) can be read but is never predicted (SUBS parameterisation);
the autoregressive twin reads it as its beginning-of-sequence token.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffusion_lm import errors, parallel


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """The model's shape and numerics: `config.model` plus the vocabulary."""

  vocab_size: int  # predicted ids; the input also takes [MASK] = vocab_size
  # 'diffusion' (bidirectional) | 'block_diffusion' | 'autoregressive' (causal)
  objective: str
  block_size: int  # block_diffusion: positions per block; 0 otherwise.
  num_layers: int
  num_heads: int
  head_dim: int
  embed_dim: int
  mlp_dim: int
  time_conditioning: bool
  dtype: str
  rope_base: float
  attention_impl: str  # '' lets JAX choose; or 'xla', 'cudnn'
  local_width: int  # The input layer mixes each token with k neighbours.
  batch_slices: int  # Callers run rows in this many slices (batching.in_slices).
  remat: str  # A name in REMAT_POLICIES.
  scan_layers: bool  # Stacked blocks run by one lax.scan.

  @classmethod
  def from_config(cls, model_config, vocab_size: int) -> "TransformerConfig":
    """Exactly the fields of `config.model`: a missing or unknown one is an
    error (config_base.py holds the only defaults)."""
    fields = {f.name for f in dataclasses.fields(cls)} - {"vocab_size"}
    given = set(model_config.keys())
    if given != fields:
      raise errors.UserError(
          f"config.model must have exactly the fields {sorted(fields)}; "
          f"missing {sorted(fields - given)}, unknown {sorted(given - fields)}")
    if model_config.objective not in OBJECTIVES:
      raise errors.UserError(f"model.objective={model_config.objective!r} is "
                             f"not one of {list(OBJECTIVES)}")
    if model_config.remat not in REMAT_POLICIES:
      raise errors.UserError(f"model.remat={model_config.remat!r} is not one "
                             f"of {list(REMAT_POLICIES)}")
    if model_config.objective != "diffusion" and model_config.time_conditioning:
      raise errors.UserError(
          "model.time_conditioning=True needs model.objective='diffusion' (no "
          "masking rate in next-token prediction; a block-diffusion row has "
          "one per block)")
    blocks = model_config.objective == "block_diffusion"
    if blocks != (model_config.block_size > 0):
      raise errors.UserError(
          f"model.block_size={model_config.block_size!r}: block_diffusion needs "
          "a block size >= 1, and the other objectives read none (0)")
    return cls(vocab_size=vocab_size, **{k: model_config[k] for k in fields})

  @property
  def causal(self) -> bool:
    return self.objective == "autoregressive"


OBJECTIVES = ("diffusion", "block_diffusion", "autoregressive")

# model.remat -> what a block keeps for the backward pass (None: everything;
# jax.checkpoint policies otherwise). 'dots' keeps the outputs of the weight
# matmuls (`dense`: 2-D, no batch dimensions) and recomputes the norms,
# activations and attention (whose matmuls have batch dimensions).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


# Logical names of activations' dimensions (parallel.constrain): the batch
# split over the data axes, heads and MLP units over `tensor` (by the rules);
# the residual stream's features whole on every device.
RESIDUAL = ("batch", None, None)
HEADS = ("batch", None, "heads", None)


def _param(rngs, shape, axes, stddev):
  """A float32 parameter: normal(stddev) (zeros if stddev == 0), named axes."""
  if stddev == 0:
    value = jnp.zeros(shape, jnp.float32)
  else:
    value = stddev * jax.random.normal(rngs.params(), shape, jnp.float32)
  return nnx.Param(value, logical_axes=axes)


class RMSNorm(nnx.Module):

  def __init__(self, dim: int):
    self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), logical_axes=("embed",))

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + 1e-6)
    return (y * self.scale[...][(None,) * (y.ndim - 1)]).astype(x.dtype)


def rope_tables(seq_len: int, head_dim: int, base: float):
  """cos and sin of position * frequency, each [seq_len, head_dim // 2].

  Computed in numpy, so they enter the graph as constants: traced, XLA's CPU
  backend recomputes sin and cos inside every fusion that reads them.
  """
  freqs = base ** (-np.arange(0, head_dim // 2, dtype=np.float64) * 2.0 / head_dim)
  angles = np.arange(seq_len, dtype=np.float64)[:, None] * freqs[None, :]
  return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(x_BxLxHxK, cos_LxK2, sin_LxK2):
  """Rotates the two halves of every head's features by position (tables
  [L, K/2], or [B, L, K/2] for positions that differ by row)."""
  x1, x2 = jnp.split(x_BxLxHxK.astype(jnp.float32), 2, axis=-1)
  if cos_LxK2.ndim == 2:
    cos_LxK2, sin_LxK2 = cos_LxK2[None], sin_LxK2[None]
  cos, sin = cos_LxK2[:, :, None, :], sin_LxK2[:, :, None, :]
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_BxLxHxK.dtype)


def dense(x, kernel, dtype):
  """x [..., d_in] times kernel [d_in, *out] as one 2-D matmul -> [..., *out].

  XLA's CPU backend runs plain 2-D matmuls about 1.5x faster than the same
  contraction written with batch dimensions, so both sides are flattened.
  Flattening keeps a kernel split over `tensor` split only when the split
  dimension leads `out` (heads in [H, K], not in [3, H, K]: XLA would gather
  that whole kernel on every device).
  """
  lead, out = x.shape[:-1], kernel.shape[1:]
  y = x.reshape(-1, x.shape[-1]) @ kernel.astype(dtype).reshape(kernel.shape[0], -1)
  return y.reshape(*lead, *out)


class Attention(nnx.Module):

  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    d, h, k = cfg.embed_dim, cfg.num_heads, cfg.head_dim
    self.cfg = cfg
    self.qkv = _param(rngs, (d, 3, h, k), ("embed", None, "heads", "head_dim"),
                      d**-0.5)
    self.out = _param(rngs, (h, k, d), ("heads", "head_dim", "embed"),
                      (h * k)**-0.5 / math.sqrt(2 * cfg.num_layers))

  def __call__(self, x_BxTxD, cos, sin, mask_Bx1xTxS=None, cache=None,
               start=0):
    """Attention of T positions; returns (output, their keys and values).

    With a `cache` (keys and values [B, S, H, K] of S slots), the T new ones
    are written at slots start .. start + T - 1 (or, for `start` [B, T], at
    each row's own slots) and attend to the whole cache under mask_Bx1xTxS;
    the updated cache is returned.
    """
    b, t, _ = x_BxTxD.shape
    # Three matmuls (dense): heads lead each [D, H, K] kernel, so the heads
    # split over `tensor` stay split. split, not indexing: its gradient is
    # one concatenation, not three pads.
    q, k, v = (parallel.constrain(dense(x_BxTxD, w[:, 0], x_BxTxD.dtype),
                                  HEADS)
               for w in jnp.split(self.qkv[...], 3, axis=1))
    # The 1/sqrt(head_dim) logit scale rides on the query's rotation tables:
    # a scale inside the attention costs XLA a full pass over [B, H, L, L].
    scale = self.cfg.head_dim**-0.5
    q, k = apply_rope(q, cos * scale, sin * scale), apply_rope(k, cos, sin)
    if cache is not None and jnp.ndim(start) == 0:
      k, v = (jax.lax.dynamic_update_slice_in_dim(c, new.astype(c.dtype), start,
                                                  axis=1)
              for c, new in zip(cache, (k, v)))
    elif cache is not None:
      rows_Bx1 = jnp.arange(b)[:, None]
      k, v = (c.at[rows_Bx1, start].set(new.astype(c.dtype))
              for c, new in zip(cache, (k, v)))
    y_BxTxHxK = jax.nn.dot_product_attention(
        q, k, v, mask=mask_Bx1xTxS, scale=1.0,
        is_causal=self.cfg.causal and cache is None,
        implementation=self.cfg.attention_impl or None)
    y_BxTxHxK = parallel.constrain(y_BxTxHxK, HEADS)
    out = self.out[...]
    return dense(y_BxTxHxK.reshape(b, t, -1), out.reshape(-1, out.shape[-1]),
                 x_BxTxD.dtype), (k, v)


class GatedMLP(nnx.Module):
  """SwiGLU: (silu(x W_gate) * x W_up) W_down."""

  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    d, f = cfg.embed_dim, cfg.mlp_dim
    self.gate = _param(rngs, (d, f), ("embed", "mlp"), d**-0.5)
    self.up = _param(rngs, (d, f), ("embed", "mlp"), d**-0.5)
    self.down = _param(rngs, (f, d), ("mlp", "embed"),
                       f**-0.5 / math.sqrt(2 * cfg.num_layers))

  def __call__(self, x_BxLxD):
    dtype = x_BxLxD.dtype
    hidden = (jax.nn.silu(dense(x_BxLxD, self.gate[...], dtype))
              * dense(x_BxLxD, self.up[...], dtype))
    return dense(parallel.constrain(hidden, ("batch", None, "mlp")),
                 self.down[...], dtype)


class Block(nnx.Module):

  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg.embed_dim)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = RMSNorm(cfg.embed_dim)
    self.mlp = GatedMLP(cfg, rngs)

  def __call__(self, x, cos, sin, mask, cache=None, start=0):
    y, kv = self.attn(self.attn_norm(x), cos, sin, mask, cache, start)
    x = parallel.constrain(x + y, RESIDUAL)
    return parallel.constrain(x + self.mlp(self.mlp_norm(x)), RESIDUAL), kv


def timestep_features(mask_rate_B, dim: int):
  """Sinusoidal features of the masking rate (scaled to [0, 1000])."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10_000.0) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = 1000.0 * mask_rate_B.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class TimeEmbedding(nnx.Module):
  """MLP of the masking-rate features, added to every position's embedding."""

  def __init__(self, dim: int, rngs: nnx.Rngs):
    self.dim = dim
    self.hidden = _param(rngs, (dim, dim), ("embed_in", "embed"), dim**-0.5)
    self.out = _param(rngs, (dim, dim), ("embed_in", "embed"), 0.0)

  def __call__(self, mask_rate_B, dtype):
    h = jax.nn.silu(timestep_features(mask_rate_B, self.dim) @ self.hidden[...])
    return (h @ self.out[...]).astype(dtype)


EMBED_STDDEV = 0.02


class LocalMixing(nnx.Module):
  """The input layer: each position's embedding mixed with those of the k
  tokens on either side (model.local_width; before it only, for a causal
  model): x_i = sum_o E[x_{i+o}] W_o / EMBED_STDDEV, a convolution over the
  sequence. Positions outside the row or in another segment add nothing.

  A masked position holds only [MASK]: without this, all its context must
  come through attention, which starts with no preference for nearby
  positions; the autoregressive twin has its previous token in place. On an
  order-2 Markov source (quickstart size) the bidirectional model sat at the
  unigram entropy for 600 steps without it and fell below the order-1
  entropy within 300 steps with it.
  """

  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    d, k = cfg.embed_dim, cfg.local_width
    self.offsets = tuple(range(-k, 1 if cfg.causal else k + 1))
    self.kernel = _param(rngs, (len(self.offsets), d, d), (None, None, "embed"),
                         d**-0.5)

  def __call__(self, e_BxLxD, segment_ids_BxL=None, blocks=None):
    """blocks, for block diffusion: (earlier_BxLxD, positions_BxL, size). A
    neighbour in the position's own block is read from e, one in an earlier
    block from `earlier` (the clean row), one in a later block not at all."""
    shifted = [shift(e_BxLxD, o, segment_ids_BxL) for o in self.offsets]
    if blocks is not None:
      earlier_BxLxD, positions_BxL, size = blocks
      own_BxL = positions_BxL // size
      shifted = [
          jnp.where((own_BxL == (positions_BxL + o) // size)[..., None], s,
                    jnp.where((own_BxL > (positions_BxL + o) // size)[..., None],
                              shift(earlier_BxLxD, o, segment_ids_BxL), 0.0))
          for o, s in zip(self.offsets, shifted)]
    kernel = self.kernel[...]
    x = jnp.concatenate(shifted, axis=-1) / EMBED_STDDEV
    return dense(x, kernel.reshape(-1, kernel.shape[-1]), e_BxLxD.dtype)


def shift(x_BxLxD, offset: int, segment_ids_BxL=None):
  """x at position i + offset for every i (zero outside the row or the
  position's segment)."""
  l = x_BxLxD.shape[1]
  padded = jnp.pad(x_BxLxD, ((0, 0), (max(-offset, 0), max(offset, 0)), (0, 0)))
  out = padded[:, max(offset, 0):max(offset, 0) + l]
  if segment_ids_BxL is not None and offset:
    seg = jnp.pad(segment_ids_BxL, ((0, 0), (max(-offset, 0), max(offset, 0))),
                  constant_values=-1)[:, max(offset, 0):max(offset, 0) + l]
    out = jnp.where((seg == segment_ids_BxL)[..., None], out, 0)
  return out


def stack_blocks(blocks: list[Block]) -> Block:
  """One Block whose parameters are those of `blocks` stacked on a leading
  'layers' axis (replicated: no mesh rule names it)."""
  graphdef, _ = nnx.split(blocks[0])
  states = [nnx.split(b)[1] for b in blocks]
  return nnx.merge(graphdef, jax.tree.map(
      lambda *vs: vs[0].replace(jnp.stack([v[...] for v in vs]),
                                logical_axes=("layers", *vs[0].logical_axes)),
      *states, is_leaf=lambda x: isinstance(x, nnx.Variable)))


def segment_mask(segment_ids_BxL):
  """[B, 1, L, L]: True where query and key lie in the same segment."""
  return (segment_ids_BxL[:, None, :, None] == segment_ids_BxL[:, None, None, :])


def block_attention(length: int, block_size: int) -> jax.Array:
  """[2L, 2L]: who attends to whom in block diffusion's two streams.

  The row is read twice, noisy positions first (z_t, each block masked at its
  own time), then clean ones (x). A noisy position attends to its own block's
  noisy positions and to the clean positions of the blocks before it; a
  clean position attends to the clean positions of its block and the blocks
  before it. Block b's logits then depend on x only through x_{<b}: one pass
  gives every block's term of sum_b NELBO(x_b | x_{<b}) (BD3-LM, Arriola et
  al. 2025, arXiv 2503.09573), and at sampling time the clean stream's keys
  and values of committed blocks are a cache.
  """
  block = jnp.arange(2 * length) % length // block_size
  noisy = jnp.arange(2 * length) < length
  query, key = block[:, None], block[None, :]
  # Computed, not a constant: at long rows a [2L, 2L] constant would bloat
  # the program.
  return jnp.where(noisy[:, None],
                   jnp.where(noisy[None, :], query == key, key < query),
                   ~noisy[None, :] & (key <= query))


class Transformer(nnx.Module):
  """tokens [B, L] int -> logits [B, L, vocab_size] float32.

  Optional: the masking rate [B] (read with time conditioning) and segment ids
  [B, L] (positions attend only to keys of their own segment). A causal
  model also decodes with a cache of keys and values (`init_cache`, `decode`).
  """

  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = _param(rngs, (cfg.vocab_size + 1, cfg.embed_dim),
                        ("vocab_in", "embed"), EMBED_STDDEV)
    self.local = (LocalMixing(cfg, rngs) if cfg.local_width else None)
    self.time_embed = (TimeEmbedding(cfg.embed_dim, rngs)
                       if cfg.time_conditioning else None)
    blocks = [Block(cfg, rngs) for _ in range(cfg.num_layers)]
    self.blocks = stack_blocks(blocks) if cfg.scan_layers else nnx.List(blocks)
    self.final_norm = RMSNorm(cfg.embed_dim)
    self.head = _param(rngs, (cfg.embed_dim, cfg.vocab_size), ("embed", "vocab"), 0.0)

  def __call__(self, tokens_BxL, mask_rate_B=None, segment_ids_BxL=None,
               clean_BxL=None):
    """Logits of every position; a block-diffusion model also reads the
    clean row beside the noisy one (`clean_BxL`; when sampling, the row
    itself: its blocks before the current one are committed)."""
    cfg = self.cfg
    if cfg.block_size:
      if clean_BxL is None:
        raise ValueError("a block-diffusion model reads the clean row too")
      return self._two_streams(tokens_BxL, clean_BxL, segment_ids_BxL)
    x = self._embed(tokens_BxL)
    if self.local is not None:
      x = self.local(x, segment_ids_BxL)
    if self.time_embed is not None:
      if mask_rate_B is None:
        raise ValueError("model.time_conditioning=True needs the masking rate")
      x = x + self.time_embed(mask_rate_B, x.dtype)[:, None, :]
    cos, sin = rope_tables(tokens_BxL.shape[1], cfg.head_dim, cfg.rope_base)
    mask = None if segment_ids_BxL is None else segment_mask(segment_ids_BxL)
    x, _ = self._layers(x, cos, sin, mask)
    return self._logits(x)

  def _two_streams(self, z_BxL, x_BxL, segment_ids_BxL):
    """Block diffusion's pass over the noisy and the clean row together
    (block_attention); the logits of the noisy one."""
    cfg = self.cfg
    l = z_BxL.shape[1]
    noisy, clean = self._embed(z_BxL), self._embed(x_BxL)
    if self.local is not None:
      blocks = (clean, np.arange(l)[None], cfg.block_size)
      noisy, clean = (self.local(noisy, segment_ids_BxL, blocks),
                      self.local(clean, segment_ids_BxL, blocks))
    cos, sin = (np.concatenate([t, t]) for t in
                rope_tables(l, cfg.head_dim, cfg.rope_base))
    mask = block_attention(l, cfg.block_size)[None, None]
    if segment_ids_BxL is not None:
      mask = mask & segment_mask(jnp.concatenate([segment_ids_BxL] * 2, axis=1))
    h, _ = self._layers(jnp.concatenate([noisy, clean], axis=1), cos, sin, mask)
    return self._logits(h[:, :l])

  def _layers(self, x, cos, sin, mask, caches=None, start=0):
    """x through every block (with model.remat and model.scan_layers);
    returns (x, the blocks' keys and values) when given their `caches`, else
    (x, None)."""
    cfg = self.cfg
    decoding = caches is not None

    def layer(graphdef, block_state, x, cache):
      y, kv = nnx.merge(graphdef, block_state)(x, cos, sin, mask, cache, start)
      return y, (kv if decoding else None)

    if cfg.remat != "none":
      layer = jax.checkpoint(layer, policy=REMAT_POLICIES[cfg.remat],
                             prevent_cse=not cfg.scan_layers, static_argnums=0)
    if cfg.scan_layers:
      graphdef, stacked = nnx.split(self.blocks)
      return jax.lax.scan(
          lambda x, xs: layer(graphdef, xs[0], x, xs[1]), x, (stacked, caches))
    new_caches = []
    for i, block in enumerate(self.blocks):
      x, kv = layer(*nnx.split(block), x, caches[i] if decoding else None)
      new_caches.append(kv)
    return x, (new_caches if decoding else None)

  def _embed(self, tokens):
    # The table whole on every device (fsdp gathers it, as any weight), so
    # that each device looks up its own rows.
    table = parallel.constrain(self.embed[...], (None, None))
    return parallel.constrain(
        jnp.take(table, tokens, axis=0).astype(self.cfg.dtype), RESIDUAL)

  def _logits(self, x):
    logits = dense(self.final_norm(x), self.head[...], jnp.dtype(self.cfg.dtype))
    return parallel.constrain(logits, ("batch", None, "vocab")).astype(jnp.float32)

  def init_cache(self, batch: int, length: int) -> dict:
    """Room for `length` positions: their input tokens, and per layer their
    keys and values."""
    return {"tokens": jnp.zeros((batch, length), jnp.int32),
            "layers": self._empty_layers(batch, length)}

  def _empty_layers(self, batch: int, slots: int):
    """Zero keys and values of `slots` positions, per layer."""
    cfg = self.cfg
    shape = (batch, slots, cfg.num_heads, cfg.head_dim)
    if cfg.scan_layers:  # Stacked like the blocks: [layers, B, S, H, K].
      shape = (cfg.num_layers, *shape)
      return (jnp.zeros(shape, cfg.dtype), jnp.zeros(shape, cfg.dtype))
    return [(jnp.zeros(shape, cfg.dtype), jnp.zeros(shape, cfg.dtype))
            for _ in self.blocks]

  def init_block_cache(self, batch: int, length: int):
    """Block diffusion's cache: per layer the keys and values of the clean
    row's `length` positions, then block_size slots for the noisy block."""
    return self._empty_layers(batch, length + self.cfg.block_size)

  def block_step(self, z_BxL, layers, start_B, clean_start_B, clean_length: int):
    """Logits [B, block_size, V] of each row's block at start_B, reading the
    cached clean keys and values of the positions before it.

    The call first reads `clean_length` positions from clean_start_B as the
    clean stream (their tokens in z are committed) and writes their keys and
    values into the cache: the block finished last, or a prompt. Equal to
    the two-stream pass over (z, z) at the block (block_attention). Returns
    (logits, cache).
    """
    cfg = self.cfg
    b, l = z_BxL.shape
    w = cfg.block_size
    positions_BxT = jnp.concatenate(
        [clean_start_B[:, None] + jnp.arange(clean_length)[None],
         start_B[:, None] + jnp.arange(w)[None]], axis=1)
    x = jnp.concatenate([self._window(z_BxL, clean_start_B, clean_length),
                         self._window(z_BxL, start_B, w)], axis=1)
    cos, sin = (jnp.asarray(t)[positions_BxT]
                for t in rope_tables(l, cfg.head_dim, cfg.rope_base))
    # Slots: a clean position's own; the noisy block's after the row's.
    noisy_T = np.arange(clean_length + w) >= clean_length
    slots_BxT = jnp.where(noisy_T[None], l + np.arange(-clean_length, w)[None],
                          positions_BxT)
    query_BxTx1 = (positions_BxT // w)[..., None]
    key_1x1xL = (np.arange(l) // w)[None, None]
    to_clean = jnp.where(noisy_T[None, :, None], key_1x1xL < query_BxTx1,
                         key_1x1xL <= query_BxTx1)
    to_noisy = jnp.broadcast_to(noisy_T[None, :, None], (b, len(noisy_T), w))
    mask = jnp.concatenate([to_clean, to_noisy], axis=-1)[:, None]
    h, layers = self._layers(x, cos, sin, mask, layers, slots_BxT)
    return self._logits(h[:, clean_length:]), layers

  def _window(self, z_BxL, start_B, length: int):
    """Input vectors of each row's positions start .. start + length - 1 of
    z (local mixing as in the two-stream pass: no later block is read)."""
    k = self.cfg.local_width if self.local is not None else 0
    positions_BxS = start_B[:, None] + jnp.arange(-k, length + k)[None]
    inside_BxS = (positions_BxS >= 0) & (positions_BxS < z_BxL.shape[1])
    tokens_BxS = jnp.take_along_axis(
        z_BxL, jnp.clip(positions_BxS, 0, z_BxL.shape[1] - 1), axis=1)
    e = jnp.where(inside_BxS[..., None], self._embed(tokens_BxS), 0.0)
    if self.local is None:
      return e
    return self.local(e, None, (e, positions_BxS, self.cfg.block_size))[:, k:k + length]

  def decode(self, tokens_BxT, cache: dict, start):
    """Causal logits of T tokens at positions start .. start + T - 1 (the
    cache holds every position before them); returns (logits, cache)."""
    cfg = self.cfg
    t, length = tokens_BxT.shape[1], cache["tokens"].shape[1]
    all_tokens = jax.lax.dynamic_update_slice_in_dim(cache["tokens"], tokens_BxT,
                                                     start, axis=1)
    x = self._embed(tokens_BxT)
    if self.local is not None:  # The new tokens and the k before them.
      k = cfg.local_width
      window = jax.lax.dynamic_slice_in_dim(
          jnp.pad(all_tokens, ((0, 0), (k, 0))), start, t + k, axis=1)
      before_row = start - k + jnp.arange(t + k) < 0
      x = self.local(jnp.where(before_row[None, :, None], 0.0,
                               self._embed(window)))[:, k:]
    cos, sin = (jax.lax.dynamic_slice_in_dim(table, start, t)
                for table in rope_tables(length, cfg.head_dim, cfg.rope_base))
    query_T = start + jnp.arange(t)
    mask_1x1xTxS = (jnp.arange(length)[None, :] <= query_T[:, None])[None, None]
    x, layers = self._layers(x, cos, sin, mask_1x1xTxS, cache["layers"], start)
    return self._logits(x), {"tokens": all_tokens, "layers": layers}


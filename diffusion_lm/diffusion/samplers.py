"""Samplers: turn an all-[MASK] (or partly fixed) sequence into tokens.

One jitted loop (`lax.while_loop`, static shapes, one dispatch per `sample`)
over a `denoise_fn(params, z_BxL, mask_rate_B) -> logits_BxLxV`. A sampler is a
small rule in the `sampling_rules.SAMPLERS` table: given the logits and the
current sequence, which masked positions to commit and, for remasking
samplers, which committed ones to reopen. The loop owns everything else,
so every sampler gets it:

* Tokens: drawn after the rule has chosen, at the committed positions only,
  each from softmax(logits / temperature), top-p filtered (argmax at
  temperature 0), independently.
* Prompts and infill templates: positions that are not [MASK] at the start
  never change (SUBS: unmasked tokens are copied), remasking included.
* Blocks (`block_length` > 0, semi-autoregressive as in LLaDA and BD3-LM): the
  rule only sees the leftmost unfinished block (the loop keeps its window's
  logits); positions right of it stay [MASK]. A denoise_fn still reads the
  whole sequence; a block-diffusion model's cached decoder (a `Network`,
  models.BlockDenoiser) reads only the block and the cache, in its own
  blocks. `steps` is spread over a
  row's blocks that hold a [MASK] at the start, as evenly as integers allow
  (block j of n gets floor(steps (j+1) / n) - floor(steps j / n) steps), each
  getting at least one.
* Per-row state: a row is done when its last block is, or (`stop_at_eos`) once
  it has a generated EOS with no [MASK] before it; every generated position
  after that EOS becomes EOS. A done row's tokens and call count freeze, and
  the loop exits when every row is done.
* Network calls, counted per row: a row needs one when its block has a [MASK]
  and its logits are stale. Logits are stale after its sequence changed, or at
  every step when the model reads the masking rate (`reads_mask_rate`);
  otherwise a step that changed nothing reuses them (MDLM's caching). The
  network runs for the batch when any row needs it; other rows keep theirs.

The rules and their clocks are in sampling_rules.py, the options each
sampler reads in sampler_options.py.
"""

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from diffusion_lm import errors
from diffusion_lm.diffusion import sampler_options, sampling_rules, schedules
from diffusion_lm.diffusion.sampler_options import SamplerOptions


class SampleResult(NamedTuple):
  tokens_BxL: jax.Array  # int32, no [MASK] left.
  calls_B: jax.Array  # int32 network calls per row.
  commit_step_BxL: jax.Array  # int32 loop iteration at which each position
  # received its final token; -1 for positions fixed from the start.
  length_B: jax.Array  # int32 tokens before the generated EOS that stopped the
  # row (stop_at_eos), else L.


def filter_top_p(logits, top_p: float):
  """Keeps the smallest set of tokens whose probability reaches top_p."""
  if top_p >= 1.0:
    return logits
  probs = jax.nn.softmax(logits, axis=-1)
  sorted_probs = jnp.flip(jnp.sort(probs, axis=-1), axis=-1)
  before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
  kept = jnp.where(before < top_p, sorted_probs, jnp.inf)
  threshold = jnp.min(kept, axis=-1, keepdims=True)
  return jnp.where(probs >= threshold, logits, -jnp.inf)


def draw_tokens(key, logits, temperature: float, top_p: float, float64: bool):
  """Tokens from softmax(logits / temperature), top-p filtered; argmax at 0."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = filter_top_p(logits / temperature, top_p)
  if float64:  # Float32 Gumbel noise truncates the tail of the distribution.
    logits = logits.astype(jnp.float64)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


# Positions drawn together, per row of the batch (see _draw_committed).
_DRAWS_PER_ROW = 2


def _draw_committed(key, logits_BxLxV, commit_BxL, options: SamplerOptions):
  """draw_tokens at the committed positions (0 elsewhere), each drawn apart.

  A call commits a few of its B x L positions, and the draw over V tokens
  costs about what the network does (at the quickstart shape, drawing every
  position took two thirds of an iteration). So the committed positions are
  gathered, _DRAWS_PER_ROW x B at a time (a static buffer), and only they are
  drawn, in as many buffers as they fill: buffer j with key fold_in(key, j).
  """
  b, l, v = logits_BxLxV.shape
  size = min(b * l, _DRAWS_PER_ROW * b)
  logits_NxV = logits_BxLxV.reshape(b * l, v)
  order_N = jnp.argsort(~commit_BxL.reshape(-1), stable=True)  # Committed first.

  def draw_buffer(j, tokens_N):
    # dynamic_slice moves a last buffer that would run past the end back:
    # positions it draws again keep the second of two independent draws.
    n_K = jax.lax.dynamic_slice_in_dim(order_N, j * size, size)
    tokens_K = draw_tokens(jax.random.fold_in(key, j), logits_NxV[n_K],
                           options.temperature, options.top_p, options.float64)
    return tokens_N.at[n_K].set(tokens_K)

  buffers = -(-jnp.sum(commit_BxL) // size)
  tokens_N = jax.lax.fori_loop(0, buffers, draw_buffer,
                               jnp.zeros(b * l, jnp.int32))
  return tokens_N.reshape(b, l)


class Network:
  """What the loop calls: `window(length, block_length)`, the W positions a
  call returns logits for; `init`, its state before the first call (a cache,
  or nothing); and (params, state, z_BxL, rate_B, start_B, need_B, W) ->
  (logits [B, W, V] of each row's positions start_B .. start_B + W - 1, new
  state), where only the rows of need_B use the logits.
  Hashable: a static argument of the jitted loop."""


@dataclasses.dataclass(frozen=True)
class RowDenoiser(Network):
  """A network that reads the whole row at every call: a denoise_fn(params,
  z_BxL, mask_rate_B) -> logits_BxLxV, of which the loop keeps the window
  of each row's current block. It keeps no state between calls."""

  denoise_fn: Callable

  def window(self, length: int, block_length: int) -> int:
    return block_length if 0 < block_length < length else length

  def init(self, params, init_BxL, width: int):
    del params, init_BxL, width
    return ()

  def __call__(self, params, state, z_BxL, rate_B, start_B, need_B,
               width: int):
    del need_B
    logits_BxLxV = self.denoise_fn(params, z_BxL, rate_B)
    if width == z_BxL.shape[1]:
      return logits_BxLxV, state
    return _window(logits_BxLxV, start_B, width), state


def _window(x_BxL, start_B, width: int):
  """Each row's `width` entries from start_B (positions past the end: the
  last one's)."""
  positions_BxW = jnp.minimum(start_B[:, None] + jnp.arange(width)[None],
                              x_BxL.shape[1] - 1)
  return jnp.take_along_axis(
      x_BxL, positions_BxW.reshape(positions_BxW.shape + (1,) * (x_BxL.ndim - 2)),
      axis=1)


class _Carry(NamedTuple):
  it: jax.Array  # Loop iteration.
  z_BxL: jax.Array
  logits_BxWxV: jax.Array  # Of the current block's window.
  state: tuple  # The network's (a cache of keys and values, or nothing).
  fresh_B: jax.Array  # logits_BxWxV were computed from z_BxL.
  calls_B: jax.Array
  block_B: jax.Array  # The current block; num_blocks once the row is done.
  step_B: jax.Array  # Steps taken in the current block.
  rate_B: jax.Array  # Masking rate of z_BxL, the network's input.
  commit_step_BxL: jax.Array
  length_B: jax.Array


@functools.partial(
    jax.jit, static_argnames=("network", "mask_id", "eos_id", "reads_mask_rate",
                              "options", "schedule"))
def _sample(network, params, key, init_BxL, *, mask_id, eos_id,
            reads_mask_rate, options, schedule):
  sampler = sampling_rules.SAMPLERS[options.sampler]
  b, l = init_BxL.shape
  width = network.window(l, options.block_length)
  num_blocks = -(-l // width)
  pos_L = jnp.arange(l, dtype=jnp.int32)
  block_L = pos_L // width
  rows_Bx1 = jnp.arange(b)[:, None]
  fixed_BxL = init_BxL != mask_id
  max_rate = sampling_rules.max_rate(schedule)

  # Step budgets: `steps` spread over the blocks that have something to fill.
  todo_BxN = jnp.zeros((b, num_blocks), bool).at[:, block_L].max(~fixed_BxL)
  ordinal_BxN = jnp.cumsum(todo_BxN, axis=-1) - 1
  count_Bx1 = jnp.maximum(jnp.sum(todo_BxN, axis=-1, keepdims=True), 1)
  budget_BxN = jnp.maximum(
      (options.steps * (ordinal_BxN + 1)) // count_Bx1
      - (options.steps * ordinal_BxN) // count_Bx1, 1)

  def first_masked_block(z_BxL):
    masked_BxL = z_BxL == mask_id
    first_B = block_L[jnp.argmax(masked_BxL, axis=-1)]
    return jnp.where(jnp.any(masked_BxL, axis=-1), first_B, num_blocks)

  def call(state, z_BxL, rate_B, start_B, need_B):
    logits, state = network(params, state, z_BxL, rate_B.astype(jnp.float32),
                            start_B, need_B, width)
    return logits.astype(jnp.float32), state

  def stop_at_eos(c: _Carry, z_BxL, block_B, commit_step_BxL):
    """Done rows whose first generated EOS has no [MASK] before it."""
    eos_BxL = (z_BxL == eos_id) & ~fixed_BxL
    first_B = jnp.argmax(eos_BxL, axis=-1)
    before_BxL = pos_L[None] < first_B[:, None]
    stop_B = (jnp.any(eos_BxL, axis=-1)
              & ~jnp.any((z_BxL == mask_id) & before_BxL, axis=-1))
    fill_BxL = stop_B[:, None] & ~fixed_BxL & (pos_L[None] > first_B[:, None])
    commit_step_BxL = jnp.where(fill_BxL & (z_BxL != eos_id), c.it, commit_step_BxL)
    return (jnp.where(fill_BxL, eos_id, z_BxL),
            jnp.where(stop_B, num_blocks, block_B),
            jnp.where(stop_B, first_B, c.length_B), commit_step_BxL)

  def body(c: _Carry):
    draw_key, rule_key, clock_key = jax.random.split(jax.random.fold_in(key, c.it), 3)
    active_B = c.block_B < num_blocks
    # The current block's window; positions past the row's end, and all of a
    # done row's, are left alone.
    start_B = jnp.minimum(c.block_B, num_blocks - 1) * width
    window_BxW = start_B[:, None] + jnp.arange(width)[None]
    inside_BxW = (window_BxW < l) & active_B[:, None]
    scatter_BxW = jnp.where(inside_BxW, window_BxW, l)
    z_BxW = _window(c.z_BxL, start_B, width)
    candidates_BxW = (z_BxW == mask_id) & inside_BxW
    rate_B = c.rate_B
    if sampler.clock is not None:
      rate_B = jnp.where(active_B, sampler.clock(
          clock_key, rate_B, jnp.sum(candidates_BxW, axis=-1)), rate_B)

    need_B = jnp.any(candidates_BxW, axis=-1) & (~c.fresh_B | reads_mask_rate)

    def called():
      logits, state = call(c.state, c.z_BxL, rate_B, start_B, need_B)
      return jnp.where(need_B[:, None, None], logits, c.logits_BxWxV), state

    logits_BxWxV, state = jax.lax.cond(jnp.any(need_B), called,
                                       lambda: (c.logits_BxWxV, c.state))
    steps_B = jnp.take_along_axis(
        budget_BxN, jnp.minimum(c.block_B, num_blocks - 1)[:, None], axis=-1)[:, 0]
    move = sampler.rule(sampling_rules.Step(
        rule_key, logits_BxWxV, candidates_BxW,
        ~_window(fixed_BxL, start_B, width) & inside_BxW, c.step_B, steps_B,
        rate_B, options, schedule))
    tokens_BxW = _draw_committed(draw_key, logits_BxWxV, move.commit_BxW, options)

    new_BxW = jnp.where(move.commit_BxW, tokens_BxW, z_BxW)
    if move.reopen_BxW is not None:
      new_BxW = jnp.where(move.reopen_BxW, mask_id, new_BxW)
    z_BxL = c.z_BxL.at[rows_Bx1, scatter_BxW].set(new_BxW, mode="drop")
    commit_step_BxL = c.commit_step_BxL.at[rows_Bx1, scatter_BxW].set(
        jnp.where(move.commit_BxW, c.it,
                  _window(c.commit_step_BxL, start_B, width)), mode="drop")
    step_B = c.step_B + active_B
    rate_B = jnp.where(active_B, move.rate_B, rate_B)
    finished_B = active_B & ~jnp.any((new_BxW == mask_id) & inside_BxW, axis=-1)
    if sampler.remasks:
      finished_B &= step_B >= steps_B
    block_B = jnp.where(finished_B, first_masked_block(z_BxL), c.block_B)
    step_B = jnp.where(finished_B, 0, step_B)
    rate_B = jnp.where(finished_B, max_rate, rate_B)
    length_B = c.length_B
    if options.stop_at_eos:
      z_BxL, block_B, length_B, commit_step_BxL = stop_at_eos(
          c, z_BxL, block_B, commit_step_BxL)

    fresh_B = (c.fresh_B | need_B) & jnp.all(z_BxL == c.z_BxL, axis=-1)
    new = _Carry(c.it + 1, z_BxL, logits_BxWxV, state, fresh_B,
                 c.calls_B + need_B, block_B, step_B, rate_B, commit_step_BxL,
                 length_B)
    return jax.tree.map(lambda x, old: x.astype(old.dtype), new, c)

  rate_B = jnp.full((b,), max_rate, jnp.float32)
  block_B = first_masked_block(init_BxL).astype(jnp.int32)
  state = network.init(params, init_BxL, width)
  logits = jax.eval_shape(call, state, init_BxL, rate_B, block_B,
                          block_B < num_blocks)[0]
  init = _Carry(
      it=jnp.int32(0), z_BxL=init_BxL,
      logits_BxWxV=jnp.zeros(logits.shape, jnp.float32), state=state,
      fresh_B=jnp.zeros((b,), bool), calls_B=jnp.zeros((b,), jnp.int32),
      block_B=block_B, step_B=jnp.zeros((b,), jnp.int32), rate_B=rate_B,
      commit_step_BxL=jnp.full((b, l), -1, jnp.int32),
      length_B=jnp.full((b,), l, jnp.int32))
  # Rows need at most max(steps, blocks) iterations, or L with one commit or
  # more each; the bound turns a rule that commits nothing into masks left
  # over rather than a loop that never ends.
  max_iterations = l + options.steps + num_blocks
  c = jax.lax.while_loop(
      lambda c: jnp.any(c.block_B < num_blocks) & (c.it < max_iterations), body, init)
  return SampleResult(c.z_BxL, c.calls_B, c.commit_step_BxL, c.length_B)


def sample(denoise_fn, params, key, init_BxL, *, mask_id: int, eos_id: int | None,
           reads_mask_rate: bool, options: SamplerOptions,
           schedule: schedules.Schedule = schedules.Linear()) -> SampleResult:
  """Fills every [MASK] of init_BxL with the sampler of `options`.

  Args:
    denoise_fn: hashable (a static argument of the jitted loop)
      (params, z_BxL, mask_rate_B) -> float logits_BxLxV over the V = mask_id
      tokens (never [MASK]); or a samplers.Network subclass (a
      block-diffusion model's cached decoder, models.BlockDenoiser).
    params: any pytree of arrays, passed to denoise_fn unchanged.
    key: PRNG key.
    init_BxL: token ids; [MASK] (mask_id) where to generate.
    mask_id: the [MASK] id.
    eos_id: the EOS id (needed with options.stop_at_eos).
    reads_mask_rate: whether denoise_fn reads mask_rate_B (time conditioning);
      if not, steps that change nothing reuse the previous logits.
    options: see sampler_options.SamplerOptions and make_options.
    schedule: alpha(t) of the reverse process (ancestral, remdm) and the units
      of the masking rate the network sees.

  Returns:
    SampleResult.
  """
  sampler_options.check(options)
  if options.stop_at_eos and eos_id is None:
    raise errors.UserError("sample.stop_at_eos needs a tokenizer with an EOS token")
  network = (denoise_fn if isinstance(denoise_fn, Network)
             else RowDenoiser(denoise_fn))
  with jax.enable_x64(options.float64):
    return _sample(network, params, key, jnp.asarray(init_BxL, jnp.int32),
                   mask_id=mask_id,
                   eos_id=eos_id if options.stop_at_eos else None,
                   reads_mask_rate=reads_mask_rate, options=options,
                   schedule=schedule)

"""The autoregressive twin: next-token loss, exact likelihood, KV-cache decoding.

The same transformer, causal (`model.objective='autoregressive'`), reads a
row shifted right by one behind a beginning-of-sequence token (the input-only
id that diffusion uses as [MASK]) and predicts every token of the row:

  -log p(x) = sum_i -log p(x_i | BOS, x_1 .. x_{i-1})

over the row's scored positions: exactly, where diffusion has a bound. The
training loop, batches, checkpoints, sharding and evaluation are shared with
diffusion; only the loss and the sampler differ.

Sampling (`generate`) is one jitted `lax.while_loop` on device with a static
cache of keys and values: the prompt is read in one call (prefill), then each
iteration draws one token for every unfinished row and feeds it back. It
returns the sampler's SampleResult, so both models sample through one API.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffusion_lm import batching, errors
from diffusion_lm.diffusion import objective, sampler_options, samplers

# Options of sampler_options.SamplerOptions that left-to-right sampling reads.
OPTIONS = ("temperature", "top_p", "float64", "stop_at_eos")


def shifted_inputs(tokens_BxL, bos_id: int):
  """[BOS, x_1, ..., x_{L-1}]: what the model reads to predict x_1 .. x_L."""
  bos = jnp.full((tokens_BxL.shape[0], 1), bos_id, tokens_BxL.dtype)
  return jnp.concatenate([bos, tokens_BxL[:, :-1]], axis=1)


def sequence_nll(model, batch, bos_id: int, slices: int = 1):
  """Exact -log p of each row's scored tokens, in nats: shape [B]."""
  rows = {"inputs": shifted_inputs(batch["tokens"], bos_id),
          "tokens": batch["tokens"], "weights": batch["weights"],
          "segment_ids": batch.get("segment_ids")}

  def nll_B(r):
    logits = model(r["inputs"], None, r["segment_ids"])
    return jnp.sum(objective.token_nll(logits, r["tokens"]) * r["weights"], axis=-1)

  return batching.in_slices(nll_B, rows, slices)


def train_loss(model, batch, bos_id: int, slices: int = 1):
  """Next-token loss in nats per scored position."""
  nll = sequence_nll(model, batch, bos_id, slices)
  return jnp.sum(nll) / jnp.maximum(jnp.sum(batch["weights"]), 1.0)


def check_options(explicit) -> None:
  """Refuses sampler options that left-to-right sampling does not read."""
  not_read = sorted(k for k, v in explicit.items()
                    if v is not None and k not in OPTIONS)
  if not_read:
    raise errors.UserError(
        f"an autoregressive model samples left to right and does not read "
        f"{', '.join(not_read)}; it takes {', '.join(OPTIONS)}")


def prompt_length(init_BxL, mask_id: int) -> int:
  """The shortest fixed prefix of the rows (each row: a prompt, then only
  [MASK]); a [MASK] before fixed text (a gap to fill) is an error."""
  masked = np.asarray(init_BxL) == mask_id
  if not masked.any(axis=1).all():
    raise errors.UserError("nothing to generate: a row of the template has no "
                           "[MASK]")
  if np.any(masked[:, :-1] & ~masked[:, 1:]):
    raise errors.UserError(
        "an autoregressive model writes left to right: it continues a prompt "
        "but cannot fill a gap before fixed text (use a diffusion model's "
        "infill)")
  return int(np.argmax(masked, axis=1).min())


@functools.partial(jax.jit, static_argnames=("graphdef", "prompt_len", "bos_id",
                                             "eos_id", "options"))
def _generate(graphdef, params, key, init_BxL, *, prompt_len: int, bos_id: int,
              eos_id, options: sampler_options.SamplerOptions):
  model = nnx.merge(graphdef, params)
  b, l = init_BxL.shape
  draw = functools.partial(samplers.draw_tokens, temperature=options.temperature,
                           top_p=options.top_p, float64=options.float64)
  # Input position i holds x_{i-1} (BOS at 0); its logits predict x_i.
  cache = model.init_cache(b, l)
  logits_BxTxV, cache = model.decode(
      shifted_inputs(init_BxL, bos_id)[:, :prompt_len + 1], cache, 0)

  def body(c):
    i, tokens_BxL, cache, logits_BxV, done_B, calls_B, length_B, commit_BxL = c
    # Rows with a longer prompt read it on (teacher forcing) before drawing.
    given_B = jax.lax.dynamic_index_in_dim(init_BxL, i, axis=1, keepdims=False)
    fixed_B = given_B != bos_id
    drawn_B = draw(jax.random.fold_in(key, i), logits_BxV)
    drawn_B = jnp.where(done_B, eos_id if eos_id is not None else 0, drawn_B)
    drawn_B = jnp.where(fixed_B, given_B, drawn_B)
    tokens_BxL = jax.lax.dynamic_update_slice_in_dim(
        tokens_BxL, drawn_B[:, None], i, axis=1)
    commit_BxL = jax.lax.dynamic_update_slice_in_dim(
        commit_BxL, jnp.where(done_B | fixed_B, -1, i - prompt_len)[:, None], i,
        axis=1)
    if options.stop_at_eos:
      stops_B = ~done_B & ~fixed_B & (drawn_B == eos_id)
      length_B = jnp.where(stops_B, i, length_B)
      done_B = done_B | stops_B
    more = i + 1 < l
    logits_BxV, cache = jax.lax.cond(
        more, lambda: _last(model.decode(drawn_B[:, None], cache, i + 1)),
        lambda: (logits_BxV, cache))
    calls_B = calls_B + (more & ~done_B)
    return (i + 1, tokens_BxL, cache, logits_BxV, done_B, calls_B, length_B,
            commit_BxL)

  init = (jnp.int32(prompt_len), init_BxL, cache, logits_BxTxV[:, -1],
          jnp.zeros(b, bool), jnp.ones(b, jnp.int32), jnp.full(b, l, jnp.int32),
          jnp.full((b, l), -1, jnp.int32))
  c = jax.lax.while_loop(lambda c: (c[0] < l) & ~jnp.all(c[4]), body, init)
  _, tokens_BxL, _, _, done_B, calls_B, length_B, commit_BxL = c
  # Rows that all stopped early: the positions never reached are EOS.
  unreached_BxL = tokens_BxL == bos_id
  if eos_id is not None:
    tokens_BxL = jnp.where(unreached_BxL, eos_id, tokens_BxL)
  return samplers.SampleResult(tokens_BxL, calls_B, commit_BxL, length_B)


def _last(logits_and_cache):
  logits_BxTxV, cache = logits_and_cache
  return logits_BxTxV[:, -1], cache


def generate(graphdef, params, key, init_BxL, *, bos_id: int, eos_id,
             options: sampler_options.SamplerOptions) -> samplers.SampleResult:
  """Continues the prompt each row of init_BxL starts with (then [MASK] =
  bos_id up to the end) left to right, one token per network call. The
  shortest prompt is read in one call (prefill); rows with longer prompts
  read the rest one token per call.

  commit_step_BxL counts iterations after the shortest prompt (prompt
  positions: -1); calls_B counts the prefill as one call.
  """
  if options.stop_at_eos and eos_id is None:
    raise errors.UserError("sample.stop_at_eos needs a tokenizer with EOS")
  init = jnp.asarray(init_BxL, jnp.int32)
  with jax.enable_x64(options.float64):
    return _generate(graphdef, params, key, init,
                     prompt_len=prompt_length(init_BxL, bos_id), bos_id=bos_id,
                     eos_id=eos_id, options=options)

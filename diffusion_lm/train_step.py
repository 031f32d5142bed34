"""One training step: the optimizer, the train state, the objective's loss
and the jitted, sharded step; `build` puts them together for a config and a
mesh (the training loop in train.py runs them).

The step is a jax.jit with in_shardings and a donated state. With
train.microbatches > 1 the gradient is accumulated over microbatches
(value_and_grad_in_parts). A step whose loss or gradient is non-finite
records itself in the state's `health`; with train.skip_nonfinite_steps it
keeps the old parameters, optimizer state and EMA instead.
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from diffusion_lm import autoregressive, models, parallel
from diffusion_lm.diffusion import objective, schedules


def learning_rate_schedule(train_config) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=train_config.learning_rate,
      warmup_steps=train_config.warmup_steps,
      decay_steps=max(train_config.steps, train_config.warmup_steps + 1),
      end_value=train_config.learning_rate * train_config.final_lr_fraction)


def make_optimizer(train_config) -> optax.GradientTransformation:
  """AdamW with warmup + cosine decay and global-norm clipping (off when
  grad_clip is 0); no decay on vectors (norm scales)."""
  return optax.chain(
      optax.clip_by_global_norm(train_config.grad_clip)
      if train_config.grad_clip > 0 else optax.identity(),
      optax.adamw(learning_rate_schedule(train_config), b1=train_config.b1,
                  b2=train_config.b2, weight_decay=train_config.weight_decay,
                  mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params)))


def init_state(model_cfg, optimizer, train_config) -> dict:
  """The train state: params, optimizer state, EMA (optional), step and RNG;
  health: the first step with a non-finite loss or gradient (0: none; the
  steps counted from 1) and the steps skipped for one; and data_order: the
  seed offset of the training data's order (pipeline.train_dataset), which
  changes when a job resumes from a data position that does not apply
  (another train.batch_size)."""
  init_key, loop_key = jax.random.split(jax.random.PRNGKey(train_config.seed))
  params = models.init_params(model_cfg, init_key)
  state = {
      "params": params,
      "opt_state": optimizer.init(params),
      "loop": {"step": jnp.int32(0), "rng": loop_key},
      "health": {"first_nonfinite_step": jnp.int32(0),
                 "skipped_steps": jnp.int32(0)},
      "data_order": {"seed_offset": jnp.int32(0)},
  }
  if train_config.ema_decay > 0:
    state["ema"] = params
  return state


def state_shardings(abstract_state, param_shardings, optimizer, mesh) -> dict:
  """Optimizer moments and EMA are sharded like the params they track."""
  replicated = parallel.replicated(mesh)
  shardings = {
      "params": param_shardings,
      "opt_state": optax.tree_map_params(
          optimizer, lambda _, s: s, abstract_state["opt_state"], param_shardings,
          transform_non_params=lambda _: replicated),
      "loop": jax.tree.map(lambda _: replicated, abstract_state["loop"]),
      "health": jax.tree.map(lambda _: replicated, abstract_state["health"]),
      "data_order": jax.tree.map(lambda _: replicated,
                                 abstract_state["data_order"]),
  }
  if "ema" in abstract_state:
    shardings["ema"] = param_shardings
  return shardings


def make_loss(model_cfg, diffusion_config, mask_id: int):
  """loss(model, batch, key) of the run's objective, in nats per scored
  position: the NELBO (with the `diffusion` group's schedule, times and
  masks; per block for block diffusion), or for the autoregressive twin the
  next-token loss."""
  slices = model_cfg.batch_slices
  if model_cfg.causal:
    return lambda model, batch, key: autoregressive.train_loss(
        model, batch, mask_id, slices)
  schedule = schedules.from_config(diffusion_config)
  return lambda model, batch, key: objective.train_loss(
      model, batch, key, schedule, mask_id, slices, diffusion_config.times,
      diffusion_config.complementary_masks, model_cfg.block_size)


def value_and_grad_in_parts(loss_fn, params, batch, key, parts: int):
  """(loss, gradient) of loss_fn(params, batch, key), a loss per scored
  position, with the batch in `parts` microbatches of strided rows (each
  device keeps its rows) run one after another by lax.scan, so that only
  one microbatch's activations are alive at a time.

  Each part's loss is weighted by its scored positions (batch['weights']),
  so for a loss without randomness the result is the whole batch's; part i
  draws its randomness from fold_in(key, i).
  """
  if parts == 1:
    return jax.value_and_grad(loss_fn)(params, batch, key)
  rows = batch["tokens"].shape[0]
  split = jax.tree.map(
      lambda x: jnp.swapaxes(x.reshape(rows // parts, parts, *x.shape[1:]), 0, 1),
      batch)

  def add_part(totals, part_and_index):
    part, i = part_and_index
    value, grads = jax.value_and_grad(loss_fn)(params, part,
                                               jax.random.fold_in(key, i))
    scored = jnp.maximum(jnp.sum(part["weights"]), 1.0)
    loss_sum, grad_sums = totals
    return (loss_sum + value * scored,
            jax.tree.map(lambda a, g: a + g * scored, grad_sums, grads)), None

  zeros = (jnp.float32(0), jax.tree.map(jnp.zeros_like, params))
  (loss_sum, grad_sums), _ = jax.lax.scan(add_part, zeros,
                                          (split, jnp.arange(parts)))
  scored = jnp.maximum(jnp.sum(batch["weights"]), 1.0)
  return loss_sum / scored, jax.tree.map(lambda g: g / scored, grad_sums)


def make_train_step(graphdef, optimizer, loss, train_config, shardings, mesh,
                    rules):
  """jit(state, batch) -> (state, metrics); the old state's buffers are donated.

  The gradient is accumulated over train.microbatches parts of the batch
  (value_and_grad_in_parts). The metrics hold the state's health (module
  doc): `first_nonfinite_step`, and `train/skipped_steps` when
  train.skip_nonfinite_steps.
  """
  ema_decay = train_config.ema_decay
  skip_nonfinite = train_config.skip_nonfinite_steps

  def loss_fn(params, batch, key):
    with parallel.activation_sharding(mesh, rules):
      return loss(nnx.merge(graphdef, params), batch, key)

  def train_step(state, batch):
    step, rng = state["loop"]["step"], state["loop"]["rng"]
    value, grads = value_and_grad_in_parts(
        loss_fn, state["params"], batch, jax.random.fold_in(rng, step),
        train_config.microbatches)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
    updates, opt_state = optimizer.update(grads, state["opt_state"],
                                          state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"params": params, "opt_state": opt_state,
                 "loop": {"step": step + 1, "rng": rng},
                 "data_order": state["data_order"]}
    if "ema" in state:
      new_state["ema"] = optax.incremental_update(params, state["ema"],
                                                  1.0 - ema_decay)
    health = dict(state["health"])
    if skip_nonfinite:  # The old parameters, optimizer state and EMA stay.
      for name in new_state.keys() & {"params", "opt_state", "ema"}:
        new_state[name] = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                       new_state[name], state[name])
      health["skipped_steps"] += (~finite).astype(jnp.int32)
    else:
      first = health["first_nonfinite_step"]
      health["first_nonfinite_step"] = jnp.where((first == 0) & ~finite,
                                                 step + 1, first)
    new_state["health"] = health
    step_metrics = {"train/loss": value, "train/grad_norm": grad_norm,
                    "first_nonfinite_step": health["first_nonfinite_step"]}
    if skip_nonfinite:
      step_metrics["train/skipped_steps"] = health["skipped_steps"]
    return new_state, step_metrics

  batch_sharding = parallel.batch_sharding(mesh)
  return jax.jit(
      train_step,
      in_shardings=(shardings, batch_sharding),  # One sharding for every array.
      out_shardings=(shardings, parallel.replicated(mesh)),
      donate_argnums=0)


@dataclasses.dataclass(frozen=True)
class Training:
  """The compiled pieces of a run, fixed by the config and the mesh."""

  model_cfg: models.TransformerConfig
  graphdef: nnx.GraphDef
  param_shardings: dict
  state_target: dict  # ShapeDtypeStructs of the train state, with shardings.
  init: Callable[[], dict]  # A fresh train state, placed on the mesh.
  step: Callable[[dict, dict], tuple[dict, dict]]


def build(config, tokenizer, mesh) -> Training:
  """The run's compiled pieces (the config checked by validation.check)."""
  model_cfg = models.TransformerConfig.from_config(config.model,
                                                   tokenizer.vocab_size)
  graphdef, abstract_model_state = models.abstract_model(model_cfg)
  param_shardings = parallel.state_shardings(abstract_model_state,
                                             config.mesh.rules, mesh)
  optimizer = make_optimizer(config.train)
  init_fn = functools.partial(init_state, model_cfg, optimizer, config.train)
  abstract_state = jax.eval_shape(init_fn)
  shardings = state_shardings(abstract_state, param_shardings, optimizer, mesh)
  return Training(
      model_cfg=model_cfg,
      graphdef=graphdef,
      param_shardings=param_shardings,
      state_target=parallel.with_shardings(abstract_state, shardings),
      init=jax.jit(init_fn, out_shardings=shardings),
      step=make_train_step(
          graphdef, optimizer,
          make_loss(model_cfg, config.diffusion, tokenizer.mask_id),
          config.train, shardings, mesh, config.mesh.rules))

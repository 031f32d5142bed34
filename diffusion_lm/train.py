"""train_and_evaluate(config, workdir): the training loop, top to bottom.

Resumes from the latest checkpoint in the workdir when there is one. SIGTERM
(a preemption) saves a checkpoint at the current step and stops the loop.
Metrics are fetched one step behind so that dispatch stays asynchronous.
"""

import dataclasses
import functools
import signal
import threading
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from absl import logging
from flax import nnx

from diffusion_lm import (api, checkpoints, errors, evaluation, metrics, models,
                          parallel)
from diffusion_lm.data import pipeline, tokenizers
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
  """The train state: params, optimizer state, EMA (optional), step and RNG."""
  init_key, loop_key = jax.random.split(jax.random.PRNGKey(train_config.seed))
  params = models.init_params(model_cfg, init_key)
  state = {
      "params": params,
      "opt_state": optimizer.init(params),
      "loop": {"step": jnp.int32(0), "rng": loop_key},
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
  }
  if "ema" in abstract_state:
    shardings["ema"] = param_shardings
  return shardings


def make_train_step(graphdef, optimizer, schedule, mask_id: int,
                    ema_decay: float, batch_slices: int, shardings, mesh):
  """jit(state, batch) -> (state, metrics); the old state's buffers are donated."""

  def train_step(state, batch):
    step, rng = state["loop"]["step"], state["loop"]["rng"]

    def loss_fn(params):
      model = nnx.merge(graphdef, params)
      return objective.train_loss(model, batch, jax.random.fold_in(rng, step),
                                  schedule, mask_id, batch_slices)

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"],
                                          state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"params": params, "opt_state": opt_state,
                 "loop": {"step": step + 1, "rng": rng}}
    if "ema" in state:
      new_state["ema"] = optax.incremental_update(params, state["ema"],
                                                  1.0 - ema_decay)
    return new_state, {"train/loss": loss,
                       "train/grad_norm": optax.tree.norm(grads)}

  batch_sharding = parallel.batch_sharding(mesh)
  return jax.jit(
      train_step,
      in_shardings=(shardings, batch_sharding),  # One sharding for every array.
      out_shardings=(shardings, parallel.replicated(mesh)),
      donate_argnums=0)


class _StopOnSigterm:
  """Sets a flag on SIGTERM (single process; multi-host uses orbax's sync)."""

  def __init__(self):
    self.requested = threading.Event()
    self._previous = None

  def __enter__(self):
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM,
                                     lambda *_: self.requested.set())
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


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
  slices, batch = config.train.batch_slices, config.train.batch_size
  if slices < 1 or batch % slices:
    raise errors.UserError(f"train.batch_slices={slices} must be a positive "
                           f"divisor of train.batch_size={batch}")
  model_cfg = models.model_config(config, tokenizer)
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
      step=make_train_step(graphdef, optimizer,
                           schedules.from_config(config.diffusion),
                           tokenizer.mask_id, config.train.ema_decay,
                           config.train.batch_slices, shardings, mesh))


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains, evaluates and checkpoints; returns the final metrics.

  The result has `preempted=True` when SIGTERM stopped the run early.
  """
  # ------------------------------------------------------------------ Setup
  tokenizer = tokenizers.from_config(config.data)
  mesh = parallel.make_mesh(config.mesh)
  training = build(config, tokenizer, mesh)
  eval_params = "ema" if config.train.ema_decay > 0 else "params"
  eval_step = evaluation.make_eval_step(training.graphdef,
                                        training.param_shardings, mesh,
                                        tokenizer.mask_id,
                                        config.eval.num_t_samples)

  # ------------------------------------------------------------------- Data
  train_iter = iter(pipeline.train_dataset(
      config, tokenizer, process_index=jax.process_index(),
      process_count=jax.process_count()))
  mngr = checkpoints.manager(workdir, config.train.max_checkpoints)
  start_step = mngr.latest_step() or 0
  if start_step:  # Before any text is encoded with a tokenizer it may refuse.
    checkpoints.check_tokenizer(mngr, start_step, tokenizer)
  validation = evaluation.EvalSplit(config, tokenizer, "validation")

  # ---------------------------------------------------- Restore or initialise
  if start_step:
    logging.info("Resuming from the checkpoint at step %d.", start_step)
    state = checkpoints.restore_train_state(mngr, start_step,
                                            training.state_target, train_iter)
  else:
    state = training.init()
  num_params = models.count_params(state["params"])
  tokens_per_step = config.train.batch_size * config.data.seq_len
  flops_per_step = tokens_per_step * metrics.train_flops_per_token(
      training.model_cfg, config.data.seq_len)
  peak = metrics.peak_flops_per_device(jax.devices()[0])
  writer = metrics.MetricWriter(workdir, resume_step=start_step,
                                enabled=jax.process_index() == 0)
  logging.info("Model: %d parameters; mesh %s; %d steps of %d tokens.",
               num_params, dict(mesh.shape), config.train.steps, tokens_per_step)
  lr_at = learning_rate_schedule(config.train)

  def save(step):
    if mngr.latest_step() != step:
      checkpoints.save(mngr, step, state, train_iter, config, tokenizer)

  # ------------------------------------------------------------------- Loop
  step = start_step
  pending = None  # (step, metrics on device), written once the next step is queued.
  timer = (step, time.perf_counter())  # Throughput since this (step, time).

  def flush():
    nonlocal pending, timer
    if pending is None:
      return
    logged_step, logged = pending
    logged = {k: float(v) for k, v in jax.device_get(logged).items()}
    now = time.perf_counter()
    steps_done, seconds = logged_step - timer[0], now - timer[1]
    logged["train/learning_rate"] = float(lr_at(logged_step - 1))
    logged["train/tokens_per_s"] = steps_done * tokens_per_step / seconds
    if peak:
      logged["train/mfu"] = (steps_done * flops_per_step / seconds
                             / (peak * jax.device_count()))
    writer.write(logged_step, logged)
    logging.info("step %d/%d | loss %.4f | %.0f tokens/s | ETA %.0fs",
                 logged_step, config.train.steps, logged["train/loss"],
                 logged["train/tokens_per_s"],
                 (config.train.steps - logged_step) * seconds / steps_done)
    pending, timer = None, (logged_step, now)

  with _StopOnSigterm() as stop:
    while step < config.train.steps:
      if stop.requested.is_set() or mngr.reached_preemption(step):
        logging.warning("Preempted: saving the checkpoint at step %d.", step)
        flush()
        save(step)
        mngr.wait_until_finished()
        writer.close()
        return {"preempted": True, "step": step}
      batch = parallel.global_batch(next(train_iter), mesh)
      state, step_metrics = training.step(state, batch)
      step += 1
      flush()
      last = step == config.train.steps
      if step % config.train.log_every == 0 or last:
        pending = (step, step_metrics)
      if step % config.train.eval_every == 0 or last:
        flush()
        result = validation.evaluate(eval_step, state[eval_params], mesh,
                                     config.eval.batches_during_training)
        writer.write(step, {f"validation/{k}": v for k, v in result.items()})
        logging.info("step %d | validation %.4f bits/byte", step,
                     result["bits_per_byte"])
        timer = (step, time.perf_counter())
      if step % config.train.checkpoint_every == 0 or last:
        flush()  # Metrics up to a checkpoint are on disk before it.
        save(step)
    flush()
    mngr.wait_until_finished()

  # ------------------------------------------------------- Final evaluation
  test = evaluation.EvalSplit(config, tokenizer, config.eval.split)
  result = test.evaluate(eval_step, state[eval_params], mesh)
  writer.write(step, {f"eval/{k}": v for k, v in result.items()})
  writer.close()
  logging.info("%s split: %.4f bits/byte, %.4f bits/token, perplexity %.3f",
               config.eval.split, result["bits_per_byte"],
               result["bits_per_token"], result["perplexity"])

  if config.sample.num_samples:
    lm = api.DiffusionLM(training.graphdef, state[eval_params], config, tokenizer)
    for i, text in enumerate(lm.sample()):
      logging.info("sample %d:\n%s", i, text)
  return {"step": step, "preempted": False, **result}

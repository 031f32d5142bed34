"""train_and_evaluate(config, workdir): the training loop, top to bottom.

Checks the whole config first (validation.check, and step_memory.check:
the step fits the devices), then holds the workdir's lock (workdir_lock)
while it runs. Resumes from the newest intact checkpoint
in the workdir when there is one (else starts from train.init_from's
parameters when set), then checks that the tokenizer can encode
the corpus (tokenizers.check_documents) before it trains. A run refused
before its first write leaves the workdir as it found it. Metrics are
fetched one step behind so that dispatch stays asynchronous. Each
evaluation also writes a few samples to TensorBoard's Text tab
(previews.Previews).

SIGTERM (a preemption) saves a checkpoint at the current step and stops the
loop (`preempted`; the command line exits with 143). One that arrives
during the last step or while its checkpoint is written still counts: the
checkpoint is completed, and the final evaluation is left to the next run,
which finds training done and only evaluates (a preempted job has seconds
to stop, and the evaluation may take minutes). During the final evaluation
SIGTERM ends the process at once; the last checkpoint is complete by then.

A non-finite loss or gradient: each step records the first step that had one
(`health`, on the device); the loop reads it where it waits for the device
anyway: the logged metrics (one step behind), before each evaluation and
before each save. So it stops at most train.log_every + 1 steps after the bad
step (sooner at an evaluation or checkpoint), naming it, and never saves a
state from after it. With train.skip_nonfinite_steps such a step keeps the
old parameters, optimizer state and EMA instead, counted in
train/skipped_steps.
"""

import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
from absl import logging

from diffusion_lm import (checkpoints, errors, evaluation, metrics, models,
                          parallel, previews, step_memory, train_step,
                          validation, workdir_lock)
from diffusion_lm.data import corpora, pipeline, tokenizer_training, tokenizers


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


class _ProfileSteps:
  """A jax.profiler trace of steps first..last (train.profile_steps) in
  <workdir>/profile (per process in multi-process jobs)."""

  def __init__(self, steps, workdir: str):
    self.first, self.last = steps or (0, 0)
    self.directory = os.path.join(workdir, "profile")
    if jax.process_count() > 1:
      self.directory = os.path.join(self.directory,
                                    f"process_{jax.process_index()}")
    self.tracing = False

  def before(self, step: int) -> None:
    """Called before running step number `step` (counted from 1)."""
    if step == self.first:
      jax.profiler.start_trace(self.directory)
      self.tracing = True

  def after(self, step: int, outputs) -> None:
    """Called once `step` has been dispatched, with its outputs."""
    if self.tracing and step == self.last:
      self.stop(outputs)

  def stop(self, outputs=None) -> None:
    if self.tracing:
      jax.block_until_ready(outputs)
      jax.profiler.stop_trace()
      self.tracing = False
      logging.info("Profiled steps %d-%d: %s (TensorBoard's profile tab).",
                   self.first, self.last, self.directory)


def compile_step(step_fn, state, batch, writer, step: int):
  """step_fn compiled ahead of time for these arguments; logs the compile
  time (train/compile_s) and XLA's bytes per device."""
  start = time.perf_counter()
  compiled = step_fn.lower(state, batch).compile()
  seconds = time.perf_counter() - start
  writer.write(step, {"train/compile_s": seconds})
  size = metrics.compiled_bytes(compiled)
  xla = "" if size is None else f"; {size / 2**30:.3f} GiB per device (XLA)"
  logging.info("Compiled the train step in %.1f s%s.", seconds, xla)
  return compiled


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains, evaluates and checkpoints; returns the final metrics.

  The result has `preempted=True` when SIGTERM stopped the run early. A bad
  config, a workdir another run holds and a non-finite loss are
  errors.UserErrors.
  """
  validation.check(config, devices=jax.devices(),
                   process_count=jax.process_count())
  step_memory.check(config, jax.devices())
  with workdir_lock.WorkdirLock(workdir, enabled=jax.process_index() == 0):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config, workdir: str) -> dict:
  # ------------------------------------------------------------------ Setup
  tokenizer_training.ensure_model(config.data)
  tokenizer = tokenizers.from_config(config.data,
                                     corpora.prepared_dir(config.data))
  mesh = parallel.make_mesh(config.mesh)
  training = train_step.build(config, tokenizer, mesh)
  eval_name = checkpoints.eval_params_name(config.train)
  eval_step = evaluation.make_eval_step(training.graphdef,
                                        training.param_shardings, mesh,
                                        tokenizer.mask_id,
                                        config.eval.num_t_samples)

  # ------------------------------------------- Restore or initialise, data
  def train_data(seed_offset: int):
    return iter(pipeline.train_dataset(
        config, tokenizer, process_index=jax.process_index(),
        process_count=jax.process_count(), seed_offset=seed_offset))

  mngr = checkpoints.manager(workdir, config.train.max_checkpoints)
  source_step = None  # Of train.init_from's checkpoint, when it is used.
  resumed = checkpoints.resume(mngr, training.state_target, train_data,
                               tokenizer, config.model,
                               config.train.require_checksums)
  tokenizers.check_documents(tokenizer,
                             corpora.builder(config.data).documents())
  if resumed:
    start_step, state, train_iter = resumed
    logging.info("Resuming from the checkpoint at step %d.", start_step)
  else:
    start_step, state, train_iter = 0, training.init(), train_data(0)
    if config.train.init_from:
      source_step, state = _initialised_from(config, training.state_target,
                                             state, tokenizer)
  validation_split = evaluation.EvalSplit(config, tokenizer, "validation")
  samples = (previews.Previews(config, tokenizer, training.graphdef)
             if config.sample.num_samples else None)
  tokens_per_step = config.train.batch_size * config.data.seq_len
  peak = metrics.peak_flops_per_device(jax.devices()[0])
  writer = metrics.MetricWriter(workdir, resume_step=start_step,
                                enabled=jax.process_index() == 0)
  if source_step is not None:
    writer.write(0, {"train/init_from_step": source_step})
  log = metrics.TrainLog(
      writer, start_step=start_step, total_steps=config.train.steps,
      tokens_per_step=tokens_per_step,
      flops_per_step=tokens_per_step * metrics.train_flops_per_token(
          training.model_cfg, config.data.seq_len),
      peak_flops=peak and peak * jax.device_count(),
      learning_rate=train_step.learning_rate_schedule(config.train),
      devices=jax.device_count())
  logging.info("Model: %d parameters; mesh %s; %d steps of %d tokens.",
               models.count_params(state["params"]), dict(mesh.shape),
               config.train.steps, tokens_per_step)

  def stop_if_nonfinite(first_nonfinite_step: int) -> None:
    if first_nonfinite_step:
      kept = mngr.latest_step()
      raise errors.UserError(
          f"the loss or its gradient is not finite (NaN or inf) at step "
          f"{first_nonfinite_step}"
          + (f" (seen at step {step})" if step != first_nonfinite_step else "")
          + ": stopped without saving any later state; "
          + (f"the last checkpoint, step {kept}, is kept in "
             f"{mngr.directory}" if kept is not None else "no checkpoint yet")
          + ". Lower train.learning_rate, clip with train.grad_clip, or set "
          "train.skip_nonfinite_steps=True, and run again to resume")

  def flush():  # The last queued step's metrics: a sync, one step behind.
    fetched = log.flush()
    if fetched:
      stop_if_nonfinite(int(fetched["first_nonfinite_step"]))

  def check_state():  # Where the loop waits for the device anyway.
    flush()
    stop_if_nonfinite(int(state["health"]["first_nonfinite_step"]))

  def save(step):
    check_state()  # Metrics up to a checkpoint are on disk before it.
    if mngr.latest_step() != step:
      start = time.perf_counter()
      checkpoints.save(mngr, step, state, train_iter, config, tokenizer)
      logging.info("Checkpoint at step %d: the loop waited %.2f s; it is "
                   "written in the background.", step,
                   time.perf_counter() - start)

  # ------------------------------------------------------------------- Loop
  step, step_metrics, step_fn = start_step, None, None
  profile = _ProfileSteps(config.train.profile_steps, workdir)
  with _StopOnSigterm() as stop:

    def preempted() -> bool:
      return stop.requested.is_set() or mngr.reached_preemption(step)

    try:
      while step < config.train.steps:
        if preempted():
          logging.warning("Preempted: saving the checkpoint at step %d.", step)
          save(step)
          mngr.wait_until_finished()
          writer.close()
          return {"preempted": True, "step": step}
        batch = parallel.global_batch(next(train_iter), mesh)
        if step_fn is None:
          step_fn = compile_step(training.step, state, batch, writer, step)
        previous = step_metrics
        profile.before(step + 1)
        state, step_metrics = step_fn(state, batch)
        step += 1
        profile.after(step, step_metrics)
        # At most two steps in flight: the host waits for the previous step
        # while this one runs. (A deeper queue starves XLA:CPU's collectives
        # across virtual devices: their rendezvous timed out after 40 s.)
        jax.block_until_ready(previous)
        flush()  # The previous step's, now that this one is queued.
        last = step == config.train.steps
        if step % config.train.log_every == 0 or last:
          log.queue(step, step_metrics)
        if step % config.train.eval_every == 0 or last:
          check_state()
          result = validation_split.evaluate(
              eval_step, state[eval_name], mesh,
              config.eval.batches_during_training)
          writer.write(step, {f"validation/{k}": v for k, v in result.items()})
          logging.info("step %d | validation %s", step, _summary(result))
          if samples:  # TensorBoard's Text tab.
            writer.write_texts(step, {"samples": samples.markdown(
                state[eval_name])})
          log.restart_clock(step)
        if step % config.train.checkpoint_every == 0 or last:
          save(step)
      flush()
    finally:  # A save in flight completes, also when the loop stops early.
      profile.stop(step_metrics)
      mngr.wait_until_finished()
    if preempted():  # During the last step or its checkpoint (module doc).
      logging.warning("Preempted after the checkpoint at step %d was saved: "
                      "the final evaluation is left to the next run.", step)
      writer.close()
      return {"preempted": True, "step": step}

  # ------------------------------------------------------- Final evaluation
  test = evaluation.EvalSplit(config, tokenizer, config.eval.split)
  result = test.evaluate(eval_step, state[eval_name], mesh)
  writer.write(step, {f"eval/{k}": v for k, v in result.items()})
  writer.close()
  logging.info("%s split: %s", config.eval.split, _summary(result))
  return {"step": step, "preempted": False, **result}


def _initialised_from(config, target: dict, state: dict, tokenizer
                      ) -> tuple[int, dict]:
  """(its step, the fresh state with the parameters and EMA of) train.init_from's
  newest intact checkpoint."""
  step, params = checkpoints.params_from(
      config.train.init_from, target["params"], tokenizer, config.model,
      config.train.require_checksums)
  logging.info("Starting from the parameters of %s at step %d.",
               config.train.init_from, step)
  state = dict(state, params=params)
  if "ema" in state:  # Copied: the train step donates both.
    state["ema"] = jax.tree.map(jnp.copy, params)
  return step, state


def _summary(result: dict) -> str:
  """'3.4621 +- 0.0012 bits/byte, ...' of evaluation.bounds' result."""
  parts = []
  for key, value in result.items():
    if key.startswith("bits_per_") and not key.endswith("_stderr"):
      unit = key[len("bits_per_"):].replace("_given_length", " given length")
      parts.append(f"{value:.4f} +- {result[key + '_stderr']:.4f} bits/{unit}")
    elif key.startswith("perplexity"):
      parts.append(f"perplexity {value:.3f}")
  return ", ".join(parts)

"""Throughput of the jitted diffusion train step at one shape (one device).

  python benchmarks/train_step.py --layers 4 --heads 4 --head_dim 64 \
      --seq 256 --batch 16 --vocab 256

Prints one JSON line: train_tokens_per_s (median over --repeats timings of
--steps steps each), compile_s (lowering and compiling the step) and params.
The step is the real one from diffusion_lm.train (NELBO loss, gradient, AdamW,
clipping) on random tokens; the SwiGLU width is --mlp_ratio * width (2.75:
704 at width 256, the GLU width of md4's text8 model at that shape). The rows
are scored in --batch_slices independent slices (model.batch_slices: the same
loss; 4 is the fastest setting on a CPU, 1 the plain step). --attention_impl,
--remat and --scan_layers set model.attention_impl, model.remat and
model.scan_layers; `mfu` (metrics.train_flops_per_token over the device's
dense bf16 peak, metrics.PEAK_FLOPS) is printed for known accelerators, and
`memory_gib` is XLA's bytes per device for the compiled step.
"""

import argparse
import json
import statistics
import time

import jax
import ml_collections
import numpy as np

from diffusion_lm import config_base, metrics, models, parallel, train_step


class _Vocab:
  """A tokenizer stand-in: only the sizes matter to the train step."""

  def __init__(self, vocab_size):
    self.vocab_size, self.mask_id = vocab_size, vocab_size


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--mlp_ratio", type=float, default=2.75)
  parser.add_argument("--seq", type=int, default=256)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--vocab", type=int, default=256)
  parser.add_argument("--batch_slices", type=int, default=4)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--attention_impl", default="")
  parser.add_argument("--remat", default="none")
  parser.add_argument("--scan_layers", action="store_true")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  config = config_base.base_config()
  width = args.heads * args.head_dim
  config.model.update(num_layers=args.layers, num_heads=args.heads,
                      head_dim=args.head_dim, embed_dim=width,
                      mlp_dim=int(args.mlp_ratio * width), dtype=args.dtype,
                      batch_slices=args.batch_slices,
                      attention_impl=args.attention_impl, remat=args.remat,
                      scan_layers=args.scan_layers)
  config.train.batch_size = args.batch
  mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1}),
                            devices=jax.devices()[:1])
  training = train_step.build(config, _Vocab(args.vocab), mesh)
  state = training.init()
  step_fn = training.step
  rng = np.random.default_rng(0)
  batch = parallel.global_batch({
      "tokens": rng.integers(0, args.vocab, (args.batch, args.seq), np.int32),
      "weights": np.ones((args.batch, args.seq), np.float32)}, mesh)

  start = time.perf_counter()
  step_fn = step_fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  memory = metrics.compiled_bytes(step_fn)
  state, out = step_fn(state, batch)  # Warm-up.
  jax.block_until_ready(out)
  timings = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    for _ in range(args.steps):
      state, out = step_fn(state, batch)
    jax.block_until_ready(out)
    timings.append(time.perf_counter() - start)
  seconds = statistics.median(timings)
  tokens_per_s = args.batch * args.seq * args.steps / seconds
  peak = metrics.peak_flops_per_device(jax.devices()[0])
  flops = metrics.train_flops_per_token(training.model_cfg, args.seq)
  print(json.dumps({
      "train_tokens_per_s": round(tokens_per_s, 1),
      "mfu": peak and round(tokens_per_s * flops / peak, 4),
      "memory_gib": memory and round(memory / 2**30, 3),
      "compile_s": round(compile_s, 2),
      "params": models.count_params(state["params"]),
      "step_ms_median": round(1000 * seconds / args.steps, 2),
      "device": jax.devices()[0].device_kind,
  }))


if __name__ == "__main__":
  main()

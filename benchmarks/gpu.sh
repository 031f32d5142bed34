#!/usr/bin/env bash
# The train step at the OWT recipe's model size (configs/owt.py: 12 layers,
# width 768, 12 heads, SwiGLU 2048, vocabulary 50,257, 1,024 tokens per row)
# on one NVIDIA GPU, in bfloat16 with float32 parameters and optimizer state.
# One JSON line per setting: tokens/s, MFU (metrics.train_flops_per_token
# over the GPU's dense bf16 peak), XLA's memory per device, compile time.
#
#   pip install -e ".[cuda]" && benchmarks/gpu.sh [--batch=32]
#
# Settings: cuDNN flash attention (the one to quote), XLA's attention, and
# cuDNN with model.remat='dots'.
set -euo pipefail
cd "$(dirname "$0")/.."

batch=32
for arg in "$@"; do
  case "${arg}" in
    --batch=*) batch="${arg#*=}" ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "benchmarks/gpu.sh: error: unknown flag '${arg}' (only --batch=N)" >&2; exit 2 ;;
  esac
done

python -c 'import jax, sys; sys.exit(0 if jax.devices()[0].platform == "gpu" else
  "benchmarks/gpu.sh: error: no GPU: JAX sees " + str(jax.devices()))'

owt=(--layers=12 --heads=12 --head_dim=64 --mlp_ratio=2.6667 --vocab=50257
     --seq=1024 --batch="${batch}" --batch_slices=1 --dtype=bfloat16
     --steps=10 --repeats=5)
for setting in "--attention_impl=cudnn" "--attention_impl=xla" \
               "--attention_impl=cudnn --remat=dots"; do
  # shellcheck disable=SC2086  # One setting: several flags.
  echo "{\"setting\": \"${setting}\", \"result\": $(python benchmarks/train_step.py "${owt[@]}" ${setting})}"
done

#!/usr/bin/env bash
# GPU check for the arbiter (run only on a machine with an NVIDIA GPU, torch and the driver's
# libnvidia-ml.so.1): the arbiter reads the real GPU through NVML; a torch process mapped to an
# engine by pid_file allocates past that engine's budget; the engine must go to `shedding`
# (rule over_budget) and back to `ok` once the memory is released.
#
# Usage (repo root):  benchmarks/gpu/arbiter_nvml_check.sh [PREBUILT_TEST_BINARY]
#   Without an argument it builds tests/arbiter_gpu.rs (several minutes: pingora is in the tree).
#   To save device time, build here first:
#     CARGO_TARGET_DIR=target cargo test --release --test arbiter_gpu --no-run
#   and pass the printed binary (carried under an ignored path such as target/).
# Env: OKOME_GPU_BUDGET_GIB (default 2), OKOME_GPU_ALLOC_GIB (default 4), NVML_LIB (optional path).
set -euo pipefail
cd "$(dirname "$0")/../.."
nvidia-smi --query-gpu=name,uuid,memory.total,memory.used --format=csv || true
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
export OKOME_GPU_CHECK=1
export RUST_LOG=${RUST_LOG:-info}
if [[ $# -ge 1 ]]; then
  "$1" --ignored --nocapture --test-threads=1
else
  cargo test --release --test arbiter_gpu -- --ignored --nocapture --test-threads=1
fi

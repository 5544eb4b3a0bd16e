#!/usr/bin/env bash
# Every GPU measurement of the README's Performance section in one go, sized to finish in about 4-5 minutes on one H100/H200 (4.2 min on the H200):
#   bash benchmarks/run_gpu.sh [OUT_DIR]        (default: $OUT, else benchmarks/results)
# Needs torch with CUDA, lightning, torchmetrics and scikit-learn; Hydra is optional (without it the benchmarks build
# the default run with the Python mirror of the config, benchmarks/common.py:build_python). Each step has its own
# time limit, and each script saves its JSON as it goes, so a step stopped early keeps what it measured.
set -u
OUT_DIR=${1:-${OUT:-benchmarks/results}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
LOG="$OUT_DIR/gpu_run.log"
step() {  # step SECONDS SCRIPT ARGS...
  local limit=$1; shift
  echo "=== $(date +%T) $* (limit ${limit}s)" | tee -a "$LOG"
  timeout "$limit" "$PY" "$@" 2>&1 | grep -v -E "Warning|warn\(|^\s*$" | tee -a "$LOG"
  echo "=== exit ${PIPESTATUS[0]}" | tee -a "$LOG"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; nproc;
  "$PY" -c "import torch, lightning, sklearn; print(torch.__version__, torch.version.cuda, lightning.__version__, sklearn.__version__)";
  "$PY" -c "import hydra" 2>&1 | tail -1; } 2>&1 | tee -a "$LOG"
step 150 benchmarks/train_throughput.py --device cuda --batch-sizes 128 1024 --steps 50 --warmup 10 --repeats 2 \
  --out "$OUT_DIR/train_throughput_cuda.json"
step 45 benchmarks/sampling_throughput.py --device cuda --batch-sizes 128 1024 --repeats 2 \
  --out "$OUT_DIR/sampling_throughput_cuda.json"
step 35 benchmarks/eval_cost.py --device cuda --out "$OUT_DIR/eval_cost_cuda.json"
step 140 benchmarks/gpu_options.py --device cuda --batch-sizes 128 1024 --compile-batch-sizes 1024 --steps 40 \
  --warmup 10 --out "$OUT_DIR/gpu_options_cuda.json"
ls -la "$OUT_DIR" | tee -a "$LOG"

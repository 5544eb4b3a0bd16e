#!/usr/bin/env bash
# Every GPU measurement of docs/performance.md in one go, sized to finish in under 10 minutes on one H100/H200
# (the step limits add up to 595 s; the last steps are the first to go if a run is cut short):
#   bash benchmarks/run_gpu.sh [OUT_DIR]        (default: $OUT, else benchmarks/results)
# Needs torch with CUDA, lightning, torchmetrics, scikit-learn and diffusers (unet_vs_diffusers.py only); Hydra is
# optional (without it the benchmarks build the default run with the Python mirror of the config,
# benchmarks/common.py:build_python). Each step has its own
# time limit, and each script saves its JSON as it goes, so a step stopped early keeps what it measured.
# The order puts the goals first: the checks, the Lightning/bare ratios (default network), the ddpm_cifar10 network
# against diffusers' UNet2DModel of the same size (32-true, bf16, channels-last, compile), the CIFAR-size network's
# Lightning/bare ratio (on-device data, peak memory), bits/dim of 10,000 examples x 8 draws, the preset networks' images/s in 32-true and
# bf16-mixed at their batch (docs/presets.md), then bf16/compile on the CIFAR-size network.
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
step 45 benchmarks/gpu_checks.py --device cuda --out "$OUT_DIR/gpu_checks_cuda.json"
step 110 benchmarks/train_throughput.py --device cuda --batch-sizes 128 1024 --parameterizations eps energy \
  --steps 50 --warmup 10 --repeats 2 --out "$OUT_DIR/train_throughput_cuda.json"
step 90 benchmarks/unet_vs_diffusers.py --device cuda --batch 128 --pairs 5 \
  --options 32-true bf16-mixed channels_last "bf16-mixed + channels_last" compile "bf16-mixed + compile" \
  --out "$OUT_DIR/unet_vs_diffusers_cuda.json"
step 100 benchmarks/train_throughput.py --device cuda --networks cifar --batch-sizes 128 1024 --parameterizations eps \
  --steps 25 --warmup 8 --repeats 2 --out "$OUT_DIR/train_throughput_cuda_cifar.json"
step 35 benchmarks/eval_cost.py --device cuda --examples 10000 --eval-batch-size 2000 --num-samples 1 8 \
  --train-steps 100 --out "$OUT_DIR/eval_cost_cuda.json"
step 45 benchmarks/preset_networks.py --device cuda --repeats 3 --out "$OUT_DIR/preset_networks_cuda.json"
step 105 benchmarks/gpu_options.py --device cuda --network cifar --batch-sizes 128 \
  --options 32-true bf16-mixed channels_last "bf16-mixed + channels_last" compile "bf16-mixed + compile" \
  --steps 30 --warmup 10 --out "$OUT_DIR/gpu_options_cuda_cifar.json"
step 35 benchmarks/gpu_options.py --device cuda --batch-sizes 128 1024 --options 32-true bf16-mixed channels_last \
  --steps 40 --warmup 10 --out "$OUT_DIR/gpu_options_cuda.json"
step 30 benchmarks/sampling_throughput.py --device cuda --batch-sizes 128 1024 --repeats 2 \
  --out "$OUT_DIR/sampling_throughput_cuda.json"
ls -la "$OUT_DIR" | tee -a "$LOG"

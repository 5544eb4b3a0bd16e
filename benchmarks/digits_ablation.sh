#!/usr/bin/env bash
# One-at-a-time ablation of the searched digits likelihood recipe (the default with weighting=elbo and the search's
# dropout 0.2, docs/results.md): that run and one change at a time,
# each at the Optuna search's budget (240 s of CPU time of one torch thread, the CPUTimeBudget callback; val/bpd with
# 4 λ draws per example), two runs in parallel on a 2-core machine:
#   bash benchmarks/digits_ablation.sh [LOG_DIR] [SECONDS]      (default: outputs, 240)
# Each run is a folder LOG_DIR/digits_ablation/runs/<change>; afterwards
#   python compare.py LOG_DIR/digits_ablation/runs
# tabulates val/bpd per change. A run folder that already holds metrics.json is skipped, so the script resumes.
set -u
LOG_DIR=${1:-outputs}
SECONDS_BUDGET=${2:-240}
PY=${PYTHON:-python}
COMMON="task_name=digits_ablation threads=1 logger=csv fid=null test=false trainer.max_epochs=100000 weighting=elbo model.dropout=0.2
 +callbacks.cpu_budget._target_=vdmlab.callbacks.budget.CPUTimeBudget +callbacks.cpu_budget.seconds=$SECONDS_BUDGET
 module.eval_num_samples=4 ~callbacks.sample_grid ~callbacks.schedule_plot"
# name|overrides (empty: the default recipe)
CHANGES=(
  "default|"
  "no_fourier|model.fourier_min_exp=null model.fourier_max_exp=null"
  "no_dropout|model.dropout=0.0"
  "schedule_linear|schedule=linear"
  "schedule_learned|schedule=learned"
  "logsnr_-5_10|diffusion.logsnr_min=-5.0 diffusion.logsnr_max=10.0"
)
run_one() {
  local name=${1%%|*} overrides=${1#*|}
  local dir="$LOG_DIR/digits_ablation/runs/$name"
  [ -f "$dir/metrics.json" ] && { echo "skip $name (done)"; return; }
  echo "start $name: $overrides"
  # shellcheck disable=SC2086
  $PY train.py $COMMON $overrides "hydra.run.dir=$dir" > /dev/null 2>&1 || echo "FAILED $name (see $dir)"
  echo "done $name"
}
export -f run_one
export LOG_DIR PY COMMON
printf '%s\n' "${CHANGES[@]}" | xargs -P 2 -I{} bash -c 'run_one "$@"' _ {}
$PY compare.py "$LOG_DIR/digits_ablation/runs" > /dev/null && echo "wrote $LOG_DIR/digits_ablation/runs/compare.md"

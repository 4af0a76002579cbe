#!/usr/bin/env bash
# CAFLOW (paper 002) on one image-to-image task of the bundled photos: train the autoregressive
# model (eq. 8) and the DUAL-GLOW ablation (eq. 6) side by side, one CPU thread each for
# SECONDS of CPU time (default 600), then score both on 100 held-out pairs: conditional bits/dim,
# PSNR, SSIM and RMSE of one random sample and of the best of 10 by conditional likelihood, and
# how often the ground truth out-scores the samples; at the paper's temperature for the task, then
# at temperature 1. Writes likelihood-ordered sample grids. Measured on 2 cores: training 11-17
# minutes (both runs side by side), each table 1-2 minutes.
# Usage: bash scripts/caflow-table.sh sr4|colorize|inpaint|sketch [SECONDS] [RUNS_FOLDER]
#        (default folder runs/caflow-TASK)
set -euo pipefail
cd "$(dirname "$0")/.."
task="${1:-}"
case "$task" in
  sr4 | colorize | inpaint | sketch) ;;
  *) echo "usage: bash scripts/caflow-table.sh sr4|colorize|inpaint|sketch [SECONDS] [RUNS_FOLDER]" >&2; exit 2 ;;
esac
seconds="${2:-600}"
out="${3:-runs/caflow-$task}"
bash scripts/setup-env.sh
mkdir -p "$out"
train() {
  OMP_NUM_THREADS=1 .venv/bin/msflow train "configs/photos-$task-caflow$1.yaml" train.max_seconds="$seconds" \
    train.progress=false --out "$out/model$1" > "$out/train$1.log" 2>&1
}
train "" & full=$!
train -dualglow & ablation=$!
wait "$full"
wait "$ablation"
tail -n 2 "$out"/train*.log
.venv/bin/msflow translate-table "$out/model" "$out/model-dualglow" --count 100 --best-of 10 \
  --grid "$out/grid.png" --json "$out/table.json" --force | tee "$out/table.md"
.venv/bin/msflow translate-table "$out/model" "$out/model-dualglow" --count 100 --best-of 10 -t 1 \
  --grid "$out/grid_t1.png" --json "$out/table_t1.json" --force | tee "$out/table_t1.md"

#!/usr/bin/env bash
# Winkler et al. Table 3 and Figure 5 on the bundled shapes-seg task: train the binary-dequantized
# conditional flow, the uniform-dequantized flow and the factorized weighted-Bernoulli baseline
# (600 CPU seconds each, all three at once on one core each), then report bits/dim, the maximal F-score of the
# mean of 100 samples, and the precision-recall plot. About 18 minutes on 2 cores (measured: 17 min 51 s).
# Usage: bash scripts/segmentation-table.sh [RUNS_FOLDER]   (default runs/segmentation)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
out="${1:-runs/segmentation}"
mkdir -p "$out"
train() {
  OMP_NUM_THREADS=1 .venv/bin/msflow train "shapes-seg-$1" train.progress=false --out "$out/$1" > "$out/$1.log" 2>&1
}
train cflow & train cflow-uniform & train factorized & wait
tail -n 3 "$out"/*.log
.venv/bin/msflow seg-table "$out/cflow" "$out/cflow-uniform" "$out/factorized" \
  -o "$out/precision_recall.png" --json "$out/table.json" --force | tee "$out/table.md"

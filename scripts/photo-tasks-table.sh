#!/usr/bin/env bash
# Issue 21's acceptance on the held-out photos: train the x2 and x4 super-resolution flows, the
# factorized x2 baseline and CAFLOW colorization on the bundled photographs (each config's own CPU
# budget: 600-720 CPU s), then score each on the 4 whole held-out photos against bicubic or the
# grey input (msflow task-table), write the JSON to docs/results/ and the grids to docs/figures/,
# and render the README tables from the JSON. About 30 minutes on 2 cores.
# Usage: bash scripts/photo-tasks-table.sh [RUNS_FOLDER]   (default runs)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
out="${1:-runs}"
mkdir -p "$out"
configs=(photos-sr2-cflow photos-sr2-factorized photos-sr4-cflow photos-sr4-caflow photos-colorize-caflow)
for c in "${configs[@]}"; do  # one thread each; the budgets count CPU seconds, so sharing the cores is fair
  OMP_NUM_THREADS=1 .venv/bin/msflow train "$c" train.progress=false --out "$out/$c" > "$out/$c.log" 2>&1 &
done
wait
tail -n 3 "$out"/photos-*.log
table() {  # NAME RUN... [--baseline RUN]
  local name=$1; shift
  .venv/bin/msflow task-table "$@" --json "docs/results/task-$name.json" -o "docs/figures/task-$name.png" --force
}
table sr2 "$out/photos-sr2-cflow" --baseline "$out/photos-sr2-factorized"
table sr4 "$out/photos-sr4-cflow" "$out/photos-sr4-caflow"
table colorize "$out/photos-colorize-caflow"
.venv/bin/python scripts/render_tables.py

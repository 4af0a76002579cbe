#!/usr/bin/env bash
# The main job: set up, train the default Glow on bundled MNIST-5k (28x28), print test
# bits/dim and write sample grids to runs/mnist5k-glow/samples/. Re-running resumes or re-reports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
exec .venv/bin/msflow train mnist5k-glow "$@"

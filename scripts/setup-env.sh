#!/usr/bin/env bash
# Create .venv (if needed) and install msflow with its data, metrics, dev and bench extras (the test
# suite runs the peer benchmark at a tiny size, so normflows is needed there too).
# Torch is installed first and pinned through constraints.txt, so pip never pulls a CUDA build.
# Safe to re-run: it does nothing when pyproject.toml, constraints.txt and this file are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.msflow-installed
want=$(cat pyproject.toml constraints.txt scripts/setup-env.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt torch
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[data,metrics,dev,bench]"
  echo "$want" > "$stamp"
fi

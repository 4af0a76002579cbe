#!/usr/bin/env bash
# Create .venv (if needed) and install msflow with its data and dev extras.
# Torch is installed first and pinned through constraints.txt, so pip never pulls a CUDA build.
# Safe to re-run: it does nothing when pyproject.toml and constraints.txt are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.msflow-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt torch
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[data,dev]"
  echo "$want" > "$stamp"
fi

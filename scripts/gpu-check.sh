#!/usr/bin/env bash
# CUDA correctness and GPU figures, for a GPU machine that has PyTorch but no network.
# Wheels of the pure-Python extras (normflows, FrEIA, mlxtend) travel in .whl/ (see
# benchmarks/README.md, "On a GPU"). Usage: bash scripts/gpu-check.sh OUTDIR [STAGE...]
# Stages: env tests train peers cnf scaling marscf (default: all).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: gpu-check.sh OUTDIR [STAGE...]}; shift
stages=${*:-env tests train peers cnf scaling marscf}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
for stage in $stages; do
  echo "=== $stage"
  start=$(date +%s)
  case $stage in
    env) nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
         python3 -c "import torch, torchdiffeq; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" ;;
    tests) python3 -m pytest tests/test_cuda.py -q -x -p no:cacheprovider -n 4 2>&1 | tail -30 ;;
    train) python3 -m msflow.cli train mnist5k-glow train.device=cuda train.progress=false --out /tmp/gpu-glow 2>&1 | tail -12
           cp /tmp/gpu-glow/metrics.jsonl "$out/gpu-glow-metrics.jsonl" ;;
    peers) python3 benchmarks/peers.py --device cuda --precision bf16-mixed --json "$out/peers-cuda.json" ;;
    cnf) python3 benchmarks/cnf_peers.py --device cuda --quick --batch 256 --json "$out/cnf-peers-cuda.json" ;;
    scaling) python3 benchmarks/scaling.py --device cuda --quick --json "$out/scaling-cuda.json" --plot "$out/scaling-cuda.png" ;;
    marscf) python3 benchmarks/marscf_sampling.py --device cuda --sizes 8 16 32 64 128 --repeats 20 \
              --json "$out/marscf-sampling-cuda.json" --plot "$out/marscf-sampling-cuda.png" | tail -12 ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
  echo "=== $stage: $(( $(date +%s) - start )) s"
done

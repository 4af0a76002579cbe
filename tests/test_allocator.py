"""The CPU allocator tuning: freed tensor memory is reused, so repeated work stops page-faulting."""

import os
import platform
import subprocess
import sys

import pytest

from msflow._allocator import tune_cpu_allocator

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)

_FAULTS = """
import resource, torch
from msflow.models.glow import glow
torch.manual_seed(0)
model = glow((3, 32, 32), levels=3, steps=2, hidden=128)
x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
with torch.inference_mode():
    for _ in range(8):  # the heap grows to its working size
        model.bits_per_dim(x)
    rounds = []
    for _ in range(3):  # the quietest of three rounds: the steady state, not a late heap growth
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(4):
            model.bits_per_dim(x)
        rounds.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
print(min(rounds))
"""


def _faults_per_call(tune: str) -> float:
    env = {**os.environ, "MSFLOW_TUNE_MALLOC": tune, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@glibc
def test_tuned_allocator_stops_page_faults_in_evaluation():
    # A Glow's activations are 8 MiB each at batch 64: untuned glibc gives them back to the
    # kernel after every batch and the next batch faults them in again, zero-filled.
    untuned, tuned = _faults_per_call("0"), _faults_per_call("1")
    assert untuned > 2000
    assert tuned < untuned / 20


@glibc
def test_opt_out(monkeypatch):
    monkeypatch.setenv("MSFLOW_TUNE_MALLOC", "0")
    assert tune_cpu_allocator() is False


@glibc
def test_import_applies_it():
    code = "import msflow, msflow._allocator as a; print(a.tune_cpu_allocator())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"

"""The CPU allocator tuning: freed tensor memory is reused, so repeated work stops page-faulting.

Importing msflow leaves ``malloc`` alone; the ``msflow`` command and ``train()`` tune it.
"""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import msflow._allocator
from msflow._allocator import tune_cpu_allocator
from msflow.cli import main
from msflow.train import train
from runs import tiny_config

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)

_FAULTS = """
import resource, sys, torch
import msflow
if sys.argv[1] == "tune":
    assert msflow.tune_cpu_allocator()
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


def _faults_per_call(mode: str) -> float:
    env = {**os.environ, "MSFLOW_TUNE_MALLOC": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@glibc
def test_import_leaves_malloc_alone_and_tuning_stops_page_faults():
    # A Glow's activations are 8 MiB each at batch 64: untuned glibc gives them back to the
    # kernel after every batch and the next batch faults them in again, zero-filled.
    imported, tuned = _faults_per_call("import"), _faults_per_call("tune")
    assert imported > 2000  # `import msflow` did not tune
    assert tuned < imported / 20


@glibc
def test_opt_out(monkeypatch):
    monkeypatch.setenv("MSFLOW_TUNE_MALLOC", "0")
    assert tune_cpu_allocator() is False


class _Tuned(Exception):
    """Raised from inside tune_cpu_allocator (whatever name the caller imported it by): it was called."""


def _refuse() -> bool:
    raise _Tuned


def test_the_command_tunes_first(monkeypatch):
    monkeypatch.setattr(msflow._allocator, "_applies", _refuse)
    with pytest.raises(_Tuned):
        main(["list"])


def test_train_tunes_first(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(msflow._allocator, "_applies", _refuse)
    with pytest.raises(_Tuned):
        train(tiny_config(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # before the run folder, the lock and the data

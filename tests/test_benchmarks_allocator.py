"""benchmarks/allocator.py: page faults and step times with the allocator tuning off and on."""

import json
import platform
from pathlib import Path

import pytest
from bench_scripts import load_script

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="the tuning is glibc's mallopt"
)


def test_smoke_reports_every_library_and_phase_in_both_modes(tmp_path: Path, capsys) -> None:
    allocator = load_script("allocator")
    out = tmp_path / "alloc.json"
    assert allocator.main(["--smoke", "--workload", "mnist", "--phases", "eval", "train", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    keys = {f"{lib}/{phase}" for lib in ("msflow", "normflows", "freia") for phase in ("eval", "train")}
    for mode in ("untuned", "tuned"):
        assert set(report[mode]) == keys
        for row in report[mode].values():
            assert row["faults_per_batch"] >= 0 and row["ms_per_batch"] > 0
    table = capsys.readouterr().out
    assert "| msflow/eval |" in table and "speed-up" in table

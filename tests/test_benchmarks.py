"""The benchmarks' machinery at a tiny size: they run, and their reports have the promised shape.

Speed ratios are never asserted: they depend on the machine and its load.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load_script(name: str) -> ModuleType:
    # benchmarks/ is a folder of scripts, not a package: load the file itself, with its folder on
    # sys.path as when it runs as a script (for the shared benchmarks/_memory.py).
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"msflow_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def peers() -> ModuleType:
    pytest.importorskip("normflows")
    return _load_script("peers")


@pytest.fixture(scope="module")
def checkpointing() -> ModuleType:
    return _load_script("checkpointing")


@pytest.fixture(autouse=True)
def _keep_thread_count() -> Iterator[None]:
    # The benchmark sets torch's thread count for the whole process; give it back to the suite.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_smoke_report_has_every_phase_and_positive_throughput(peers: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    assert peers.main(["--smoke", "--no-memory", "--precision", "bf16-mixed", "--json", str(out)]) == 0
    report = json.loads(out.read_text())

    assert set(report) >= {"config", "environment", "models", "throughput", "memory", "ratios"}
    assert set(report["throughput"]) == {"msflow", "normflows", "msflow[bf16-mixed]"}
    for by_phase in report["throughput"].values():
        assert set(by_phase) == {"train", "eval", "sample"}
        for t in by_phase.values():
            assert t["median"] > 0 and t["cpu_median"] > 0
            assert len(t["samples"]) == report["config"]["repeats"]
    assert set(report["ratios"]) == {"msflow", "msflow[bf16-mixed]"}
    for by_phase in report["ratios"].values():
        for r in by_phase.values():
            assert set(r) == {"throughput", "throughput_paired", "cpu_throughput", "peak_memory"}
            assert r["throughput"] > 0 and r["throughput_paired"] > 0 and r["cpu_throughput"] > 0
    for model in report["models"].values():
        # Both libraries report bits/dim on the same scale: finite and near 8 for a fresh model.
        assert model["params"] > 0 and 0 < model["bpd_at_init"] < 50


def test_models_match_in_size_and_latent_dimension(peers: ModuleType) -> None:
    cfg = peers.PRESETS["smoke"]
    ms, nf = peers.build_contestant("msflow", cfg), peers.build_contestant("normflows", cfg)
    # Same steps and widths; msflow adds only its split priors' small conditioning convs.
    assert 0.9 < ms.num_params() / nf.num_params() < 1.2
    x = peers.make_batches(cfg)[0]
    for c in (ms, nf):
        c.initialize(x)
        assert peers.sample_step(c, x) >= 0
        assert peers.train_step(c, x) > 0


def test_memory_worker_runs_in_a_fresh_process(peers: ModuleType) -> None:
    cfg = dataclasses.replace(peers.PRESETS["smoke"], memory_iters=1)
    mem = peers.measure_memory(cfg, "msflow", "eval")
    assert set(mem) == {"rss_before_mib", "peak_rss_mib", "peak_delta_mib", "peak_reset", "peak_delta_mib_samples"}
    assert mem["peak_rss_mib"] >= mem["rss_before_mib"] > 0


def test_checkpointing_smoke_report_has_both_settings_and_same_gradients(
    checkpointing: ModuleType, tmp_path: Path
) -> None:
    out = tmp_path / "checkpointing.json"
    assert checkpointing.main(["--smoke", "--json", str(out)]) == 0
    report = json.loads(out.read_text())

    assert set(report) >= {"config", "environment", "model", "data", "check", "settings", "ratios", "acceptance"}
    assert report["model"]["params"] > 0
    assert set(report["settings"]) == {"without", "with"}
    for setting in report["settings"].values():
        assert setting["time"]["median"] > 0 and setting["time"]["cpu_median"] > 0
        assert len(setting["time"]["samples"]) == report["config"]["repeats"]
        assert setting["memory"]["peak_delta_mib"] > 0 and setting["memory"]["peak_rss_mib"] > 0
        assert 0 < setting["time"]["last_loss"] < 50  # bits/dim of a tiny, briefly trained model
    assert all(r > 0 for r in report["ratios"].values())
    assert isinstance(report["acceptance"]["pass"], bool)
    # Recomputation changes memory, not results.
    check = report["check"]
    assert check["match"] and check["loss_max_abs_diff"] == 0
    assert check["grad_max_abs_diff"] <= 1e-6 < check["grad_max_abs"]


def test_stability_smoke_trains_both_models_and_reports(tmp_path: Path) -> None:
    import subprocess

    out = tmp_path / "stability"
    cmd = [
        sys.executable,
        str(BENCHMARKS / "stability.py"),
        "--smoke",
        "--jobs",
        "1",
        "--lrs",
        "1e-3",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "stability.json").read_text())
    assert {r["model"] for r in report["results"]} == {"balanced", "glow"}
    for r in report["results"]:
        assert r["curve"] and r["non_finite_steps"] == 0 and r["stopped"] is None
        assert r["test_bpd"] > 0 and r["params"] > 0 and r["worst_rise"] >= 0
    assert (out / "stability.png").stat().st_size > 0
    assert "| balanced |" in (out / "stability.md").read_text() and "| glow |" in proc.stdout

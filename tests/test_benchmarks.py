"""The peer benchmark's machinery at a tiny size: it runs, and its report has the promised shape.

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

pytest.importorskip("normflows")

PEERS_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "peers.py"


@pytest.fixture(scope="module")
def peers() -> ModuleType:
    # benchmarks/ is a folder of scripts, not a package: load the file itself.
    spec = importlib.util.spec_from_file_location("msflow_bench_peers", PEERS_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


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

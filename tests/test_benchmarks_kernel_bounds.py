"""benchmarks/kernel_bounds.py at a tiny size: the kernel bound covers every coupling network and target.

Speeds are never asserted (they depend on the machine and its load); the arithmetic that turns
them into bounds is.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from types import ModuleType

import pytest
import torch
from bench_scripts import load_script


@pytest.fixture(scope="module")
def bounds() -> ModuleType:
    pytest.importorskip("normflows")
    pytest.importorskip("FrEIA")
    return load_script("kernel_bounds")


def test_coupling_networks_are_every_step_with_its_input_shape(bounds: ModuleType) -> None:
    cfg = bounds.make_config("smoke", "mnist")
    c = bounds.build_contestant("msflow", cfg)
    x = bounds.make_batches(cfg)[0]
    nets = bounds.coupling_networks(c.model, x)
    assert len(nets) == cfg.levels * cfg.steps
    # MNIST 1x28x28: squeeze -> 4x14x14 (the net sees 2 channels), split + squeeze -> 8x7x7 (4).
    shapes = [shape for _, shape in nets]
    assert shapes == [(cfg.batch, 2, 14, 14)] * cfg.steps + [(cfg.batch, 4, 7, 7)] * cfg.steps
    assert all(net[0].in_channels == shape[1] for net, shape in nets)


def test_train_work_backpropagates_into_input_and_weights_of_a_copy(bounds: ModuleType) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    work = bounds.NetworkWork(net, (2, 2, 5, 5), "train", "bf16-mixed")
    work()
    assert work.x.grad is not None and work.x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in work.net.parameters())
    assert all(p.grad is None for p in net.parameters())  # the model's own weights are untouched
    assert work.net[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_eval_work_records_no_graph(bounds: ModuleType) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1))
    work = bounds.NetworkWork(net, (1, 2, 4, 4), "eval", "float32")
    work()
    assert not work.x.requires_grad and all(p.grad is None for p in work.net.parameters())


def test_smoke_report_bounds_every_target_against_both_peers(
    bounds: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bounds.json"
    assert bounds.main(["--smoke", "--shape", "mnist", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    w = report["workloads"]["mnist"]
    keys = {(r["phase"], r["precision"], r["peer"]) for r in w["rows"]}
    assert keys == {(p, prec, peer) for (p, prec) in bounds.TARGETS for peer in ("normflows", "freia")}
    for r in w["rows"]:
        iso = w["isolated"][f"{r['phase']}/{r['precision']}"]
        assert iso["ms_per_batch"] == pytest.approx(iso["networks_ms"] + iso["adam_ms"])
        assert (iso["adam_ms"] > 0) == (r["phase"] == "train")
        samples = iso["samples"]
        assert len(samples) == len(w["ms_per_batch"][r["peer_spec"]][r["phase"]]) == w["config"]["repeats"]
        assert all(t["ms_per_batch"] == pytest.approx(t["networks_ms"] + t["adam_ms"]) for t in samples)
        # The peer at its best: its faster layout, in the row's precision (bf16 against bf16).
        assert bounds.parse_spec(r["peer_spec"])[:2] == (r["peer"], r["precision"])
        layouts = [s for s in w["ms_per_batch"] if bounds.parse_spec(s)[:2] == (r["peer"], r["precision"])]
        assert len(layouts) == 2
        fastest = min(statistics.median(w["ms_per_batch"][s][r["phase"]]) for s in layouts)
        peer_ms = w["ms_per_batch"][r["peer_spec"]][r["phase"]]
        assert statistics.median(peer_ms) == fastest
        paired = [p / t["ms_per_batch"] for p, t in zip(peer_ms, samples, strict=True)]
        assert r["bound"] == pytest.approx(statistics.median(paired))
        assert (
            r["bound_min"] <= r["bound"] <= r["bound_max"] and r["measured_min"] <= r["measured"] <= r["measured_max"]
        )
        assert r["reachable"] == (r["bound"] >= r["target"])
        assert r["measured"] > 0 and r["bound_ms_per_batch"] > 0
    assert sum(w["networks_per_shape"].values()) == w["config"]["levels"] * w["config"]["steps"]
    table = capsys.readouterr().out
    assert "| mnist | eval | float32 | normflows (" in table and "| 1.3 |" in table and "**bound**" in table


def test_peaks_are_measured_for_both_yardsticks_and_tabled_against_the_issues_machine(bounds: ModuleType) -> None:
    peaks = bounds.peak_gflops(side=64, batch=2, repeats=1)
    assert set(peaks) == set(bounds.ISSUE_PEAKS) == {"matmul", "conv"}
    assert all(set(p) == {"float32", "bf16"} and min(p.values()) > 0 for p in peaks.values())
    env = {"cpu": "test CPU", "cpu_bf16_units": [], "threads": 1, "torch": torch.__version__}
    table = bounds.markdown_table({"environment": env, "workloads": {}, "peaks": peaks})
    ratio = peaks["conv"]["bf16"] / peaks["conv"]["float32"]
    assert f"| {ratio:.2f} | 175 / 720 (4.1x) |" in table

"""benchmarks/cnf_peers.py at a tiny size: its report has the promised shape, and the two
contestants (msflow's CNF block and the plain torchdiffeq FFJORD) compute the same quantity,
with and without RNODE's regularizers.

Speed ratios are never asserted: they depend on the machine and its load.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch
from bench_scripts import load_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("cnf_peers")


def test_smoke_report_has_both_contestants_every_phase_and_nfe(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "cnf_peers.json"
    assert bench.main(["--smoke", "--no-memory", "--json", str(out)]) == 0
    report = json.loads(out.read_text())

    assert set(report) >= {"config", "environment", "models", "check", "throughput", "nfe", "memory", "ratios"}
    names = {"msflow", "ffjord"}
    assert set(report["throughput"]) == set(report["nfe"]) == set(report["models"]) == names
    for name in names:
        for phase in ("train", "eval", "sample", "train_rnode"):
            t = report["throughput"][name][phase]
            assert t["median"] > 0 and t["cpu_median"] > 0
            assert len(t["samples"]) == report["config"]["repeats"]
            parts = report["nfe"][name][phase]
            assert set(parts) == ({"forward", "backward"} if phase.startswith("train") else {"solve"})
            assert all(p["median"] > 0 for p in parts.values())
        model = report["models"][name]
        # Bits/dim of a fresh field on uniform-noise images: finite, near 8 plus what the
        # random (not zero) field adds.
        assert math.isfinite(model["bpd_at_init"]) and math.isfinite(model["bpd_after_timing"])
        assert 0 < model["bpd_at_init"] < 50
    assert report["models"]["msflow"]["params"] == report["models"]["ffjord"]["params"] > 0
    assert set(report["ratios"]) == {"train", "eval", "sample", "train_rnode"}
    for r in report["ratios"].values():
        assert r["throughput"] > 0 and r["throughput_paired"] > 0 and r["cpu_throughput"] > 0
        assert r["peak_memory"] is None
    # The regularized pair trained in lockstep: the same NFE at every timed step.
    for phase in report["nfe"]["msflow"]:
        assert report["nfe"]["msflow"][phase] == report["nfe"]["ffjord"][phase]
    rnode = report["check"]["train_rnode"]
    assert rnode["regularization"]["msflow"] > 0 and rnode["nfe"]["msflow"] == rnode["nfe"]["ffjord"]
    assert "train_rnode" in bench.markdown_table(report)


@pytest.mark.parametrize("gradients", ["adjoint", "direct"])
def test_identical_weights_give_the_same_bits_per_dim_gradients_and_samples(bench: ModuleType, gradients: str) -> None:
    cfg = dataclasses.replace(bench.PRESETS["smoke"], gradients=gradients)
    torch.set_num_threads(cfg.threads)
    inputs = bench.Inputs.from_batches(bench.make_batches(cfg), cfg.seed, cfg.device)
    ms, ff = bench.build_pair(cfg)
    check = bench.check_equivalence(cfg, ms, ff, inputs)

    # Same function, same solver settings, same inputs and probes: the same solves. Measured
    # identical to the last bit on the CPU; allow for a platform's float rounding, far inside the
    # eval solver's tolerance (1e-5).
    assert check["grad_max_abs"] > 0  # the field is not zero: the solves are not trivial
    assert check["eval_bpd_max_abs_diff"] <= 1e-5
    assert check["train_loss_abs_diff"] <= 1e-5
    assert check["grad_rel_diff"] <= 1e-4
    assert check["sample_max_abs_diff"] <= 1e-5
    assert check["nfe"]["msflow"] == check["nfe"]["ffjord"]
    backward = check["nfe"]["msflow"].pop("train_backward")
    assert all(n > 0 for n in check["nfe"]["msflow"].values())
    # Back-propagation through the solver's operations evaluates the field no more.
    assert backward > 0 if gradients == "adjoint" else backward == 0

    # The check is not vacuous: a different weight in the peer shows up.
    with torch.no_grad():
        next(ff.model.parameters()).add_(0.1)
    assert bench.check_equivalence(cfg, ms, ff, inputs)["eval_bpd_max_abs_diff"] > 1e-4


@pytest.mark.parametrize("gradients", ["adjoint", "direct"])
def test_rnode_pair_gives_the_same_regularizers_loss_gradients_and_nfe(bench: ModuleType, gradients: str) -> None:
    cfg = dataclasses.replace(bench.PRESETS["smoke"], gradients=gradients)
    torch.set_num_threads(cfg.threads)
    inputs = bench.Inputs.from_batches(bench.make_batches(cfg), cfg.seed, cfg.device)
    plain = bench.check_equivalence(cfg, *bench.build_pair(cfg), inputs)
    ms, ff = bench.build_pair(cfg, rnode=True)
    check = bench.check_rnode_equivalence(cfg, ms, ff, inputs)

    assert check["regularization"]["msflow"] > 0  # RNODE is on: kinetic and Jacobian terms in the loss
    assert check["regularization_abs_diff"] <= 1e-7
    assert check["train_loss_abs_diff"] <= 1e-5
    assert check["grad_max_abs"] > 0 and check["grad_rel_diff"] <= 1e-4
    assert check["nfe"]["msflow"] == check["nfe"]["ffjord"]
    # The two RNODE states never steer the step size: the forward solve takes the steps of the
    # unregularized one (same weights, same probe), and the loss is the plain one plus the term.
    assert check["nfe"]["msflow"]["train_forward"] == plain["nfe"]["msflow"]["train_forward"]
    bpd = check["loss"]["msflow"] - check["regularization"]["msflow"]
    assert bpd == pytest.approx(plain["train_loss"]["msflow"], abs=1e-6)
    assert (check["nfe"]["msflow"]["train_backward"] > 0) == (gradients == "adjoint")

    # Not vacuous: another weight in the peer shows up.
    ff.model.rnode_weight = 2 * cfg.rnode_weight
    assert bench.check_rnode_equivalence(cfg, ms, ff, inputs)["regularization_abs_diff"] > 1e-7


def test_memory_worker_runs_in_a_fresh_process(bench: ModuleType) -> None:
    mem = bench.measure_memory(bench.PRESETS["smoke"], "ffjord", "eval")
    assert set(mem) == {"rss_before_mib", "peak_rss_mib", "peak_delta_mib", "peak_reset", "peak_delta_mib_samples"}
    assert mem["peak_rss_mib"] >= mem["rss_before_mib"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_cuda_is_a_clear_error(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as err:
        bench.main(["--smoke", "--device", "cuda"])
    assert err.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err

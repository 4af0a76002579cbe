"""The benchmarks' machinery at a tiny size: they run, and their reports have the promised shape.

Speed ratios are never asserted: they depend on the machine and its load.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from bench_scripts import BENCHMARKS, load_script
from torch import Tensor


@pytest.fixture(scope="module")
def peers() -> ModuleType:
    pytest.importorskip("normflows")
    pytest.importorskip("FrEIA")
    return load_script("peers")


@pytest.fixture(scope="module")
def checkpointing() -> ModuleType:
    return load_script("checkpointing")


def test_smoke_report_has_every_workload_contestant_and_peer_ratio(
    peers: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "peers.json"
    assert peers.main(["--smoke", "--no-memory", "--precision", "bf16-mixed", "--json", str(out)]) == 0
    report = json.loads(out.read_text())

    assert set(report) == {"environment", "workloads"}
    env = report["environment"]
    assert env["device"] == "cpu" and env["threads"] == 1
    assert set(env["cpu_bf16_units"]) <= {"avx512_bf16", "amx_bf16"}
    assert set(report["workloads"]) == {"patches32", "mnist"}
    mnist = report["workloads"]["mnist"]["config"]
    assert mnist["image_shape"] == [1, 28, 28] and mnist["levels"] == 2 and mnist["data"] == "mnist5k"
    contestants = {"msflow", "normflows", "freia", "msflow[bf16-mixed]"}
    for w in report["workloads"].values():
        assert set(w) >= {"config", "models", "throughput", "memory", "ratios"}
        assert set(w["throughput"]) == set(w["models"]) == contestants
        for by_phase in w["throughput"].values():
            assert set(by_phase) == {"train", "eval", "sample"}
            for t in by_phase.values():
                assert t["median"] > 0 and t["cpu_median"] > 0
                assert len(t["samples"]) == w["config"]["repeats"]
        assert set(w["ratios"]) == {"msflow", "msflow[bf16-mixed]"}
        for by_peer in w["ratios"].values():
            assert set(by_peer) == {"normflows", "freia"}
            for by_phase in by_peer.values():
                assert set(by_phase) == {"train", "eval", "sample"}
                for r in by_phase.values():
                    assert set(r) == {"throughput", "throughput_paired", "cpu_throughput", "peak_memory"}
                    assert r["throughput"] > 0 and r["throughput_paired"] > 0 and r["cpu_throughput"] > 0
                    assert r["peak_memory"] is None  # --no-memory
        for model in w["models"].values():
            # Every library reports bits/dim on the same scale: near 8 for a fresh model.
            assert model["params"] > 0 and 6 < model["bpd_at_init"] < 10
    table = capsys.readouterr().out
    for peer in ("normflows", "freia"):
        assert f"| train | fp32 | {peer} |" in table and f"| sample | bf16-mixed subnets | {peer} |" in table


def test_models_match_in_size_and_latent_shapes(peers: ModuleType) -> None:
    from msflow.transforms import GaussianSplitPrior, InvConv1x1

    cfg = peers.make_config("smoke", "patches32")
    ms, nf, fr = (peers.build_contestant(s, cfg) for s in ("msflow", "normflows", "freia"))
    # Same steps and widths; msflow adds only its split priors' small conditioning convs.
    assert 0.9 < ms.num_params() / nf.num_params() < 1.2
    # FrEIA has the same ActNorms and coupling nets; it lacks the learned 1x1 convs and the priors.
    not_in_freia = sum(
        p.numel() for m in ms.model.modules() if isinstance(m, InvConv1x1 | GaussianSplitPrior) for p in m.parameters()
    )
    assert fr.num_params() == ms.num_params() - not_in_freia
    assert [tuple(s) for s in fr.model.global_out_shapes] == [tuple(s) for s in ms.model.latent_shapes()]
    x = peers.make_batches(cfg)[0]
    for c in (ms, nf, fr):
        c.initialize(x)
        c.check_device(x)
        images = c.sample(3)
        assert images.dtype == torch.uint8 and images.shape == (3, *cfg.image_shape)
        assert peers.sample_step(c, x).item() >= 0
        assert peers.train_step(c, x).item() > 0


def test_freia_glow_inverts_and_its_log_det_is_the_jacobians(peers: ModuleType) -> None:
    cfg = peers.make_config("smoke", "patches32")
    torch.manual_seed(0)
    model = peers.freia_glow(cfg)
    v = torch.rand(4, *cfg.image_shape) - 0.5
    with torch.no_grad():
        model(v)  # ActNorm's data-dependent initialisation
        model.double()
        for p in model.parameters():
            if p.requires_grad:  # move the couplings off their zero init, so they matter
                p.add_(0.1 * torch.randn_like(p))
        v = v.double()
        zs, log_det = model(v)
        (v_back,), _ = model(list(zs), rev=True)
    # Not to float64 precision: FrEIA computes each fixed 1x1 conv's inverse (and log-det) once, in float32.
    assert torch.allclose(v_back, v, atol=1e-6)

    def flat_latents(image: Tensor) -> Tensor:
        return torch.cat([z.flatten() for z in model(image[None])[0]])

    jac = torch.autograd.functional.jacobian(flat_latents, v[0])
    jac = jac.reshape(v[0].numel(), v[0].numel())
    sign, logabsdet = torch.linalg.slogdet(jac)
    assert sign != 0 and torch.allclose(logabsdet, log_det[0], atol=1e-5)


def test_freia_contestant_scores_inverts_and_samples_digits(peers: ModuleType) -> None:
    cfg = peers.make_config("smoke", "mnist")
    fr = peers.build_contestant("freia", cfg)
    x = peers.make_batches(cfg)[0]
    assert 7 < fr.initialize(x) < 9  # uint8 digits, fresh model
    v = peers._dequantize(x)
    with torch.no_grad():
        zs, _ = fr.model(v)
        (v_back,), _ = fr.model(list(zs), rev=True)
    assert torch.allclose(v_back, v, atol=1e-5)
    images = fr.sample(5)
    assert images.dtype == torch.uint8 and images.shape == (5, 1, 28, 28)


def test_device_must_exist(peers: ModuleType) -> None:
    with pytest.raises(SystemExit):
        peers.main(["--smoke", "--device", "tpu"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            peers.main(["--smoke", "--device", "cuda"])


def test_memory_worker_runs_in_a_fresh_process(peers: ModuleType, tmp_path: Path) -> None:
    cfg = dataclasses.replace(peers.make_config("smoke", "patches32"), memory_iters=1)
    path = tmp_path / "batches.pt"
    torch.save(peers.make_batches(cfg), path)
    mem = peers.measure_memory(cfg, "freia", "train", str(path))
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


def test_equal_budget_smoke_trains_each_contestant_and_scores_the_test_set(tmp_path: Path) -> None:
    pytest.importorskip("normflows")
    pytest.importorskip("FrEIA")
    budget = load_script("equal_budget")
    out, plot = tmp_path / "budget.json", tmp_path / "budget.png"
    specs = ["msflow[float32]", "freia"]
    assert budget.main(["--smoke", "--specs", *specs, "--json", str(out), "--plot", str(plot)]) == 0
    report = json.loads(out.read_text())
    assert [r["spec"] for r in report["results"]] == specs
    for r in report["results"]:
        assert r["steps"] > 0 and r["train_seconds"] >= report["config"]["budget"]
        assert math.isfinite(r["test_bpd"]) and 0 < r["test_bpd"] < 10 and r["test_bpd_stderr"] > 0
        assert r["curve"] and r["curve"][0]["step"] == 1
    # glow((1, 28, 28), levels=2, steps=1, hidden=8) has 1760; the channel-wise split prior drops
    # the first level's 3x3 conv from 2 kept to 4 prior channels: 2 * 4 * 9 + 4 = 76 parameters.
    assert report["results"][0]["precision"] == "float32" and report["results"][0]["params"] == 1760 - 76
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        budget.main(["--smoke", "--specs", "glow"])


def test_flop_counts_and_the_float32_reference(peers: ModuleType) -> None:
    cfg = peers.make_config("smoke", "mnist")
    c = peers.build_contestant("msflow", cfg)
    x = peers.make_batches(cfg)[0]
    c.initialize(x)
    before = [p.detach().clone() for p in c.model.parameters()]
    flops = peers.flops_per_image(c, x)
    assert all(torch.equal(a, b) for a, b in zip(before, c.model.parameters(), strict=True))  # no step taken
    assert flops["eval"] > 0 and 2 < flops["train"] / flops["eval"] < 4  # backward ~ twice the forward
    assert flops["sample"] == pytest.approx(flops["eval"], rel=0.05)
    assert peers.reference_conv_gflops(cfg, repeats=2) > 0

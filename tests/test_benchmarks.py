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

    assert set(report) == {"environment", "workloads", "differences"}
    env = report["environment"]
    assert env["device"] == "cpu" and env["threads"] == 1 and env["peer_layouts"] == "both"
    assert set(env["cpu_bf16_units"]) <= {"avx512_bf16", "amx_bf16"}
    assert {"avx512_bf16", "amx_bf16"} <= set(env["cpu_features"]) and env["cpu"]
    assert set(report["workloads"]) == {"patches32", "mnist"}
    mnist = report["workloads"]["mnist"]["config"]
    assert mnist["image_shape"] == [1, 28, 28] and mnist["levels"] == 2 and mnist["data"] == "mnist5k"
    peer_specs = {f"{lib}{p}{cl}" for lib in ("normflows", "freia") for p in ("", "[bf16-mixed]") for cl in ("", "+cl")}
    contestants = {"msflow", "msflow[bf16-mixed]"} | peer_specs
    for w in report["workloads"].values():
        assert set(w) >= {"config", "models", "throughput", "memory", "ratios", "loadavg_timing"}
        assert set(w["throughput"]) == set(w["models"]) == contestants
        for by_phase in w["throughput"].values():
            assert set(by_phase) == {"train", "eval", "sample"}
            for t in by_phase.values():
                assert t["median"] > 0 and t["cpu_median"] > 0
                assert len(t["samples"]) == w["config"]["repeats"]
        assert set(w["ratios"]) == {"msflow", "msflow[bf16-mixed]"}
        for variant, by_peer in w["ratios"].items():
            assert set(by_peer) == {"normflows", "freia"}
            for lib, by_phase in by_peer.items():
                assert set(by_phase) == {"train", "eval", "sample"}
                for phase, r in by_phase.items():
                    # float32 against float32, bf16 against bf16, each peer in its faster layout
                    assert peers.parse_spec(r["peer_spec"])[:2] == (lib, peers.parse_spec(variant)[1])
                    others = [s for s in peer_specs if peers.parse_spec(s)[:2] == peers.parse_spec(r["peer_spec"])[:2]]
                    fastest = max(w["throughput"][s][phase]["median"] for s in others)
                    assert w["throughput"][r["peer_spec"]][phase]["median"] == fastest
                    assert r["paired_min"] <= r["throughput_paired"] <= r["paired_max"]
                    assert r["throughput"] > 0 and r["cpu_throughput"] > 0
                    assert r["peak_memory"] is None  # --no-memory
        for model in w["models"].values():
            # Every library reports bits/dim on the same scale: near 8 for a fresh model.
            assert model["params"] > 0 and 6 < model["bpd_at_init"] < 10
    table = capsys.readouterr().out
    for peer in ("normflows", "FrEIA"):
        assert f"| train | float32 | {peer} (" in table and f"| sample | bf16-mixed | {peer} (" in table
    assert "| normflows[bf16-mixed] | eval |" in table  # the layout table


def test_spec_grammar(peers: ModuleType) -> None:
    assert peers.parse_spec("msflow") == ("msflow", "float32", False)
    assert peers.parse_spec("freia[bf16-mixed]+cl") == ("freia", "bf16-mixed", True)
    for spec in ("msflow", "normflows+cl", "freia[bf16-mixed]", "normflows[bf16-mixed]+cl"):
        assert peers.spec_name(*peers.parse_spec(spec)) == spec
    for bad in ("msflow+cl", "glow", "freia[fp16]", "normflows[float32]x"):
        with pytest.raises(ValueError):
            peers.parse_spec(bad)
    assert peers.contestant_specs(["float32"], "contiguous") == ["msflow", "normflows", "freia"]


def test_peers_at_their_best_layouts_activations_and_autocast(peers: ModuleType) -> None:
    cfg = peers.make_config("smoke", "mnist")
    x = peers.make_batches(cfg)[0]
    for lib in ("normflows", "freia"):
        plain, cl = peers.build_contestant(lib, cfg), peers.build_contestant(f"{lib}+cl", cfg)
        # In-place ReLUs everywhere, no LeakyReLU left (normflows' LeakyReLU(0) is swapped).
        acts = [m for m in cl.model.modules() if isinstance(m, torch.nn.ReLU | torch.nn.LeakyReLU)]
        assert acts and all(isinstance(m, torch.nn.ReLU) and m.inplace for m in acts)
        convs = [m.weight for m in cl.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
        # Same seed, same function: the layout changes nothing but speed.
        torch.manual_seed(1)
        a = plain.initialize(x)
        torch.manual_seed(1)
        assert cl.initialize(x) == pytest.approx(a, abs=1e-5)
        bf16 = peers.build_contestant(f"{lib}[bf16-mixed]", cfg)
        with bf16.precision():
            assert torch.is_autocast_enabled("cpu")
        assert peers.train_step(bf16, x).item() > 0 and peers.sample_step(bf16, x).item() >= 0


def test_coupling_nets_compute_the_same_function_at_equal_weights(peers: ModuleType) -> None:
    """Where the architectures coincide (every coupling net), the three libraries' nets agree
    exactly at equal weights; the rest of each Glow differs as ``differences`` in the report says."""
    from msflow.transforms import AffineCoupling

    cfg = peers.make_config("smoke", "patches32")
    ms, nf, fr = (peers.build_contestant(s, cfg) for s in ("msflow", "normflows", "freia"))

    def nets(model: torch.nn.Module, kind: type) -> list[torch.nn.Module]:
        return [m for m in model.modules() if isinstance(m, kind)]

    ms_net = next(m for m in ms.model.modules() if isinstance(m, AffineCoupling)).net
    width = ms_net[0].in_channels  # the finest level's nets (normflows lists its levels coarse to fine)
    nf_net = next(
        m.net for m in nf.model.modules() if type(m).__name__ == "ConvNet2d" and m.net[0].in_channels == width
    )
    fr_net = next(
        m
        for m in fr.model.modules()
        if isinstance(m, torch.nn.Sequential) and len(m) == 5 and m[0].in_channels == width
    )
    convs = [nets(n, torch.nn.Conv2d) for n in (ms_net, nf_net, fr_net)]
    assert [[tuple(c.weight.shape[1:]) for c in cs] for cs in convs[1:]] == [
        [tuple(c.weight.shape[1:]) for c in convs[0]]
    ] * 2
    torch.manual_seed(0)
    with torch.no_grad():
        for c in convs[0]:
            c.weight.normal_(0, 0.3)
            c.bias.normal_(0, 0.3)
        for cs in convs[1:]:
            for mine, theirs in zip(convs[0], cs, strict=True):
                theirs.weight.copy_(mine.weight.reshape(theirs.weight.shape))
                theirs.bias.copy_(mine.bias.reshape(theirs.bias.shape))
        h = torch.randn(3, convs[0][0].in_channels, 4, 4).contiguous(memory_format=torch.channels_last)
        outs = [net(h.clone()) for net in (ms_net, nf_net, fr_net)]
    assert torch.allclose(outs[0], outs[1], atol=1e-6) and torch.allclose(outs[0], outs[2], atol=1e-6)
    # The whole Glows do the same arithmetic (convolutions and matmuls) per image, at the
    # benchmark's width (at a tiny width the 1x1 weights' assembly and FrEIA's squeeze convolutions
    # would weigh in). FrEIA's 1x1 convolutions are fixed: no weight gradient when training.
    wide = peers.make_config("smoke", "mnist", hidden=128, batch=2)
    x = peers.make_batches(wide)[0]
    flops = []
    for spec in ("msflow", "normflows", "freia"):
        c = peers.build_contestant(spec, wide)
        c.initialize(x)
        flops.append(peers.flops_per_image(c, x))
    for phase in ("train", "eval", "sample"):
        assert flops[1][phase] == pytest.approx(flops[0][phase], rel=0.01)
    assert flops[2]["eval"] == pytest.approx(flops[0]["eval"], rel=0.01)
    assert flops[2]["train"] == pytest.approx(flops[0]["train"], rel=0.03)
    assert set(peers.ARCHITECTURE_DIFFERENCES) == {"same", "normflows", "freia", "bf16"}


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


def test_freia_glow_computes_msflows_function_at_equal_weights(peers: ModuleType) -> None:
    """FrEIA's Glow is msflow's where the architectures allow: with msflow's channel-wise split
    priors at their initial identity (FrEIA has none) and FrEIA's fixed 1x1 convolutions set to
    msflow's current ``W``, copying ActNorms and coupling nets gives the same log-density."""
    import FrEIA.modules as Fm

    from msflow.distributions import standard_normal_log_prob
    from msflow.transforms import ActNorm, AffineCoupling, GaussianSplitPrior, InvConv1x1

    cfg = peers.make_config("smoke", "patches32")
    ms, fr = peers.build_contestant("msflow", cfg), peers.build_contestant("freia", cfg)
    x = peers.make_batches(cfg)[0]
    ms.initialize(x)
    fr.initialize(x)
    ms.model.double()
    fr.model.double()
    torch.manual_seed(0)

    def of(model: torch.nn.Module, kind: type) -> list[torch.nn.Module]:
        return [m for m in model.modules() if isinstance(m, kind)]

    with torch.no_grad():
        for m in ms.model.modules():
            if not isinstance(m, GaussianSplitPrior):  # FrEIA's latents are N(0, I): msflow's priors at init
                for p in m.parameters(recurse=False):
                    p.add_(0.1 * torch.randn_like(p))
        pairs = [(of(ms.model, a), of(fr.model, b)) for a, b in [(ActNorm, Fm.ActNorm), (InvConv1x1, Fm.Fixed1x1Conv),
                 (AffineCoupling, Fm.AffineCouplingOneSided)]]  # fmt: skip
        assert all(len(mine) == len(theirs) == cfg.levels * cfg.steps for mine, theirs in pairs)
        for mine, theirs in zip(*pairs[0], strict=True):  # (x + b) e^s = x e^s + b e^s
            theirs.scale.copy_(mine.log_scale)
            theirs.bias.copy_(mine.bias * mine.log_scale.exp())
        for mine, theirs in zip(*pairs[1], strict=True):
            w, _ = mine.weight_and_logabsdet()
            theirs.M.copy_(w[:, :, None, None])
            theirs.M_inv.copy_(torch.linalg.inv(w)[:, :, None, None])
            theirs.logDetM.copy_(torch.linalg.slogdet(w)[1])
        for mine, theirs in zip(*pairs[2], strict=True):
            for a, b in zip(of(mine.net, torch.nn.Conv2d), of(theirs.subnet, torch.nn.Conv2d), strict=True):
                b.weight.copy_(a.weight)
                b.bias.copy_(a.bias)
            # msflow interleaves (shift, log-scale) channels; FrEIA takes (log-scale, shift) halves.
            n = b.out_channels // 2
            order = torch.cat([torch.arange(1, 2 * n, 2), torch.arange(0, 2 * n, 2)])
            b.weight.copy_(a.weight[order])
            b.bias.copy_(a.bias[order])
        v = torch.rand(4, *cfg.image_shape, dtype=torch.float64)
        want = ms.model.log_prob_continuous(v)
        zs, log_det = fr.model(v - 0.5)  # msflow's "center" preprocessing, log-det 0
        got = log_det + sum(standard_normal_log_prob(z) for z in zs)
    assert want.abs().min() > 1.0 and torch.allclose(got, want, rtol=0, atol=1e-9)


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
    specs = ["msflow[float32]", "freia+cl"]
    argv = ["--smoke", "--specs", *specs, "--seeds", "0", "1", "--json", str(out), "--plot", str(plot)]
    assert budget.main(argv) == 0
    report = json.loads(out.read_text())
    cfg = report["config"]
    assert [(r["spec"], r["seed"]) for r in report["results"]] == [(s, seed) for s in specs for seed in (0, 1)]
    for r in report["results"]:
        assert r["steps"] > 0 and r["train_seconds"] >= cfg["budget"]
        # Runs take turns: each had several slices, and none ran far past its budget.
        assert r["slices"] >= 2 and r["train_seconds"] < cfg["budget"] + cfg["slice"]
        assert r["cpu_seconds"] > 0 and r["wall_seconds"] > 0
        assert math.isfinite(r["test_bpd"]) and 0 < r["test_bpd"] < 10 and r["test_bpd_stderr"] > 0
        assert r["curve"] and r["curve"][0]["step"] == 1
    # Different seeds, different runs; the summary is their mean and spread.
    a, b = (r["test_bpd"] for r in report["results"][:2])
    assert a != b
    s = report["summary"]["msflow[float32]"]
    assert s["test_bpd_mean"] == pytest.approx((a + b) / 2) and s["test_bpd_min"] == min(a, b)
    assert s["test_bpd_std"] == pytest.approx(abs(a - b) / math.sqrt(2))
    # glow((1, 28, 28), levels=2, steps=1, hidden=8) has 1760; the channel-wise split prior drops
    # the first level's 3x3 conv from 2 kept to 4 prior channels: 2 * 4 * 9 + 4 = 76 parameters.
    assert s["precision"] == "float32" and s["params"] == 1760 - 76
    env = report["environment"]
    assert env["loadavg_before"] and env["loadavg_after"] and report["loadavg_rounds"] and "cpu_features" in env
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for bad in (["--specs", "glow"], ["--seeds", "0", "0"]):
        with pytest.raises(SystemExit):
            budget.main(["--smoke", *bad])


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

"""TarFlow: the causal Transformer, the block's inverses and conditions, the family (noise, score
step, guidance, Jacobi against sequential decoding) and the CLI on a tiny run. The block's
contract checks (shapes, inversion, log-det against the autograd Jacobian, image conditions)
are cases of tests/test_conformance.py."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tiny import TINY

from msflow import create_model
from msflow.cli import main
from msflow.errors import ConfigError
from msflow.models.tarflow import TarFlow, tarflow
from msflow.nn.subnets import subnet_precision
from msflow.nn.transformer import CausalTransformer
from msflow.transforms.tarflow import TarFlowBlock, patchify, unpatchify

F64 = torch.float64


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny(randomize: Callable | None = None, **options) -> TarFlow:
    torch.manual_seed(0)
    model = tarflow((1, 8, 8), **{"patch": 2, "steps": 2, "layers": 1, "hidden": 16, **options})
    return model if randomize is None else randomize(model, std=0.05, seed=1)


# ---------------------------------------------------------------- network and tokens


@pytest.mark.parametrize("classes", [0, 3])
def test_cached_steps_equal_the_causal_pass(randomize: Callable, classes: int) -> None:
    net = randomize(CausalTransformer(4, 6, width=8, layers=2, heads=2, num_tokens=5, num_classes=classes).double())
    x = torch.randn(2, 5, 4, dtype=F64)
    labels = torch.tensor([1, -1]) if classes else None
    full = net(x, labels=labels)
    c, cache, outs = net.condition(None, labels), net.empty_cache(), []
    for i in range(5):
        out, cache = net.step(None if i == 0 else x[:, i - 1 : i], i, cache, c, 2)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-12, rtol=0)


def test_output_i_ignores_tokens_from_i_on(randomize: Callable) -> None:
    net = randomize(CausalTransformer(3, 2, width=8, layers=2, heads=1, num_tokens=6).double())
    x = torch.randn(1, 6, 3, dtype=F64)
    jac = torch.autograd.functional.jacobian(lambda t: net(t)[0, :, 0], x)[:, 0]  # (out token, in token, feat)
    for i in range(6):
        assert jac[i, i:].abs().max() == 0 and (i == 0 or jac[i, :i].abs().max() > 0)


def test_patchify_round_trip_and_layout() -> None:
    x = torch.arange(2 * 4 * 6, dtype=F64).view(1, 2, 4, 6)
    tokens = patchify(x, 2)
    assert tokens.shape == (1, 6, 8)
    torch.testing.assert_close(tokens[0, 1], x[0, :, 0:2, 2:4].reshape(-1))
    torch.testing.assert_close(unpatchify(tokens, (2, 4, 6), 2), x)


def test_bad_patch_and_two_conditions_are_refused() -> None:
    with pytest.raises(ValueError, match="patch"):
        TarFlowBlock((1, 6, 6), patch=4)
    with pytest.raises(ValueError, match="not both"):
        TarFlowBlock((1, 4, 4), patch=2, cond_channels=1, num_classes=2)


# ---------------------------------------------------------------- class-conditional block


def class_block(randomize: Callable) -> TarFlowBlock:
    torch.manual_seed(0)
    return randomize(TarFlowBlock((2, 4, 4), patch=2, width=8, layers=1, num_classes=3).double(), std=0.1)


def test_class_block_is_exact_and_label_sensitive(randomize: Callable, jacobian_logabsdet: Callable) -> None:
    block = class_block(randomize)
    x, y = torch.randn(3, 2, 4, 4, dtype=F64), torch.tensor([0, 2, -1])
    z, logdet = block(x, y)
    for method in ("sequential", "jacobi"):
        x_back, ld_back = block.inverse(z, y, method=method, tol=1e-13)
        torch.testing.assert_close(x_back, x, atol=1e-10, rtol=0)
        torch.testing.assert_close(ld_back, -logdet, atol=1e-10, rtol=0)
    for i in range(3):
        _, expected = jacobian_logabsdet(lambda p, i=i: block(p[None], y[i : i + 1])[0][0], x[i])
        torch.testing.assert_close(logdet[i], expected, atol=1e-8, rtol=0)
    assert (block(x, torch.tensor([1, 0, 1]))[0] - z).abs().max() > 1e-4
    with pytest.raises(ValueError, match="cond"):
        block(x)
    with pytest.raises(ValueError, match="labels must lie"):
        block(x, torch.tensor([0, 3, 1]))


def test_guided_inverse_mixes_parameters_and_both_methods_agree(randomize: Callable) -> None:
    block = class_block(randomize)
    z, y, null = torch.randn(2, 2, 4, 4, dtype=F64), torch.tensor([0, 1]), torch.tensor([-1, -1])
    plain, _ = block.inverse(z, y)
    same, _ = block.inverse(z, y, guidance=0.0, uncond=null)
    torch.testing.assert_close(same, plain, atol=0, rtol=0)
    guided, _ = block.inverse(z, y, guidance=2.0, uncond=null)
    guided_jacobi, _ = block.inverse(z, y, method="jacobi", tol=1e-13, guidance=2.0, uncond=null)
    torch.testing.assert_close(guided_jacobi, guided, atol=1e-10, rtol=0)
    assert (guided - plain).abs().max() > 1e-4
    # Token 0 by hand: theta = (1 + w) theta(y) - w theta(null), from the start token alone.
    tokens = block.tokens(guided)
    mu_c, a_c = block.parameters_of(tokens, y)
    mu_u, a_u = block.parameters_of(tokens, null)
    mu, a = 3 * mu_c - 2 * mu_u, 3 * a_c - 2 * a_u
    torch.testing.assert_close(block.tokens(z)[:, 0], ((tokens - mu) * torch.exp(-a))[:, 0], atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="uncond"):
        block.inverse(z, y, guidance=1.0)


# ---------------------------------------------------------------- the family


def test_model_logdet_is_slogdet_of_jacobian(randomize: Callable, jacobian_logabsdet: Callable) -> None:
    model = tiny(randomize, preprocess="logit", alpha=0.05).double()
    v = 0.05 + 0.9 * torch.rand(2, 1, 8, 8, generator=seeded(0), dtype=F64)
    (z,), logdet = model.encode(v)
    for i in range(2):
        _, expected = jacobian_logabsdet(lambda p: model.encode(p[None])[0][0][0], v[i])
        torch.testing.assert_close(logdet[i], expected, atol=1e-8, rtol=0)
    torch.testing.assert_close(model.decode([z]), v, atol=1e-10, rtol=0)
    torch.testing.assert_close(model.decode([z], method="jacobi"), v, atol=1e-6, rtol=0)  # jacobi_tol 1e-5 in h


def test_noise_is_trained_but_never_evaluated(randomize: Callable) -> None:
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8, generator=seeded(0))
    clean, noisy = tiny(randomize), tiny(randomize, noise_std=0.05)
    with torch.no_grad():
        assert torch.equal(
            clean.training_bits_per_dim(x, generator=seeded(1)), clean.bits_per_dim(x, generator=seeded(1))
        )
        assert torch.equal(noisy.bits_per_dim(x, generator=seeded(1)), clean.bits_per_dim(x, generator=seeded(1)))
        assert not torch.equal(
            noisy.training_bits_per_dim(x, generator=seeded(1)), noisy.bits_per_dim(x, generator=seeded(1))
        )
    with pytest.raises(ConfigError, match="noise_std"):
        create_model("tarflow-digits8", noise_std=0.05, preprocess="logit")


def test_score_step_is_sigma_squared_times_the_gradient(randomize: Callable) -> None:
    model = tiny(randomize, noise_std=0.1)
    h = torch.randn(2, 1, 8, 8, generator=seeded(0))
    h_req = h.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.log_prob_flow(h_req, None).sum(), h_req)
    with torch.inference_mode():  # how `msflow sample` runs it
        stepped = model.score_step(h, None)
    torch.testing.assert_close(stepped, h + 0.01 * grad)
    with torch.inference_mode():
        a = model.sample(3, 0.7, generator=seeded(2))
        b = model.sample(3, 0.7, generator=seeded(2), denoise=False)
    assert a.dtype == torch.uint8 and a.shape == (3, 1, 8, 8) and not torch.equal(a, b)


def test_class_conditional_model_trains_with_label_drop_and_guides(randomize: Callable) -> None:
    model = tiny(randomize, num_classes=10, label_drop=0.5)
    x, y = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8), torch.arange(8)
    loss, logged = model.training_loss(x, seeded(0), cond=y)
    loss.backward()
    assert math.isfinite(loss.item()) and "loss_bpd" in logged
    with torch.no_grad():
        assert not torch.equal(model.bits_per_dim(x, y, seeded(0)), model.bits_per_dim(x, None, seeded(0)))
        guided = model.sample(4, cond=torch.tensor([3]), guidance=1.5, generator=seeded(1))
        guided_jacobi = model.sample(4, cond=torch.tensor([3]), guidance=1.5, generator=seeded(1), method="jacobi")
    assert guided.shape == (4, 1, 8, 8)
    assert (guided.int() - guided_jacobi.int()).abs().max() <= 1  # one 8-bit level: rounding at a bin edge
    with pytest.raises(ConfigError, match="class-conditional"):
        tiny(randomize).sample(2, guidance=1.0)


def test_bf16_mixed_keeps_the_affine_arithmetic_in_float32(randomize: Callable) -> None:
    model = tiny(randomize)
    v = torch.rand(4, 1, 8, 8, generator=seeded(0))
    with torch.no_grad():
        (z32,), ld32 = model.encode(v)
        with subnet_precision("bf16-mixed"):
            (z16,), ld16 = model.encode(v)
            v_back = model.decode([z16])
    assert z16.dtype == ld16.dtype == torch.float32
    torch.testing.assert_close(z16, z32, atol=0.1, rtol=0.05)
    torch.testing.assert_close(ld16, ld32, atol=0.5, rtol=0.01)
    assert float((v_back - v).abs().max()) < 2e-2  # bf16 parameters of the cached steps vs the full pass


# ---------------------------------------------------------------- Jacobi against sequential decoding


@pytest.fixture(scope="module")
def trained() -> TarFlow:
    """A tiny TarFlow fitted for 60 Adam steps to the 8x8 digits (a few seconds)."""
    from msflow.data import get_dataset

    torch.manual_seed(0)
    model = create_model("tarflow-digits8", steps=2, layers=1, hidden=32, preprocess="logit", alpha=0.05)
    images = get_dataset("digits8", "train").images
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = seeded(0)
    losses = []
    for _ in range(60):
        batch = images[torch.randint(0, len(images), (64,), generator=gen)]
        loss, _ = model.training_loss(batch, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 2, losses  # it learned something
    return model.eval()


def test_jacobi_sampling_agrees_with_sequential(trained: TarFlow) -> None:
    (z,) = trained.sample_latents(16, 1.0, seeded(3))
    stats: dict[str, int] = {}
    with torch.no_grad():
        exact = trained.invert(z, None, "sequential")
        fast = trained.invert(z, None, "jacobi", tol=1e-6, stats=stats)
    assert float((fast - exact).abs().max()) < 1e-4
    assert 2 <= stats["sweeps"] <= 2 * 16, stats  # at most one sweep per token of each block


@pytest.mark.slow
def test_jacobi_speed_up_on_the_mnist_preset() -> None:
    """Prints the wall-clock speed-up of Jacobi over sequential decoding (49 tokens a block)."""
    torch.manual_seed(0)
    model = create_model("tarflow-mnist").eval()
    for block in model.blocks:  # an untrained flow is the identity: give it some dependence
        torch.nn.init.normal_(block.net.proj_out.weight, std=0.02)
    (z,) = model.sample_latents(64, 1.0, seeded(0))
    times, results, stats = {}, {}, {}
    with torch.no_grad():
        for method in ("sequential", "jacobi"):
            start = time.perf_counter()
            results[method] = model.invert(z, None, method, tol=1e-5, stats=stats.setdefault(method, {}))
            times[method] = time.perf_counter() - start
    assert float((results["jacobi"] - results["sequential"]).abs().max()) < 1e-4
    print(
        f"sequential {times['sequential']:.2f} s, jacobi {times['jacobi']:.2f} s ({stats['jacobi']['sweeps']} sweeps)"
    )


# ---------------------------------------------------------------- the CLI, unchanged


TINY_TARFLOW = [
    *[o for o in TINY if not o.startswith(("model.options.steps", "model.options.hidden"))],
    "model.name=tarflow-digits8",
    "model.options.steps=2",
    "model.options.layers=1",
    "model.options.hidden=16",
    "model.options.noise_std=0.05",
    "model.options.preprocess=scale",
    "train.steps=3",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tarflow")
    assert main(["train", "mnist5k-tarflow", *TINY_TARFLOW, f"train.out={out}"]) == 0
    return out


def test_cli_train_eval_sample_report_ood(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", str(tiny_run), "--device", "cpu"]) == 0
    assert "invertibility: max |x - f^-1(f(x))|" in capsys.readouterr().out
    assert main(["sample", str(tiny_run), "-n", "4", "-o", str(tmp_path / "s.png"), "--device", "cpu"]) == 0
    assert main(["report", str(tiny_run), "--temperatures", "0.7", "--device", "cpu"]) == 0
    assert (tiny_run / "report.html").is_file()
    ood = ["ood", str(tiny_run), "--ood", "noise", "-n", "20", "-o", str(tmp_path / "ood.png"), "--device", "cpu"]
    assert main(ood) == 0
    assert "AUROC" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_temperature(tiny_run: Path, tmp_path: Path) -> None:
    """Slow on a fresh cache: the Frechet distance's classifier is trained once (about a minute)."""
    argv = ["temperature", str(tiny_run), "--temperatures", "0.7", "-n", "20", "-o", str(tmp_path / "t.png")]
    assert main([*argv, "--device", "cpu"]) == 0


# ---------------------------------------------------------------- as a multi-resolution level density


def test_multires_tarflow_levels_are_exact_and_conditioned(randomize: Callable, jacobian_logabsdet: Callable) -> None:
    torch.manual_seed(0)
    model = create_model("mrcnf-mnist5k", image_shape=(1, 8, 8), resolutions=2, density="tarflow", steps=2, hidden=8)
    model = randomize(model.double(), std=0.05, seed=2)
    detail = model.levels[0]
    assert [b.cond_channels for b in detail] == [1, 1] and model.levels[1][0].cond_channels == 0
    v = 0.05 + 0.9 * torch.rand(2, 1, 8, 8, generator=seeded(0), dtype=F64)
    zs, logdet = model.encode(v)
    torch.testing.assert_close(model.decode(zs), v, atol=1e-10, rtol=0)
    flat = lambda p: torch.cat([z.reshape(-1) for z in model.encode(p[None])[0]])  # noqa: E731
    _, expected = jacobian_logabsdet(flat, v[0])
    torch.testing.assert_close(logdet[0], expected, atol=1e-8, rtol=0)
    x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8, generator=seeded(1))
    loss, logged = model.training_loss(x, seeded(2), level=0)
    assert math.isfinite(loss.item())
    assert model.sample(2, 0.7, generator=seeded(3)).shape == (2, 1, 8, 8)

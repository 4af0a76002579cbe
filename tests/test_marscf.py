"""mAR-SCF: the ConvLSTM, the mAR prior's two directions, whole models, Lemma A.1, presets, configs,
and latent-space interpolation (paper 001).

The generic block contract of the mAR prior is in tests/test_conformance.py; here: the
teacher-forced density equals the sequential one, causality over channels, MARPS call counts,
temperature 0, and the whole model's exactness.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from PIL import Image
from torch import Tensor

import msflow
from msflow.analysis.interpolate import (
    decode_prior_space,
    encode_prior_space,
    interpolate,
    save_interpolation_grid,
)
from msflow.errors import ConfigError
from msflow.models.marscf import MARSCF, lemma_a1_channels, marscf
from msflow.nn import ConvLSTM
from msflow.transforms import MARSplitPrior

F64 = torch.float64
CONFIGS = sorted(Path(__file__).parent.parent.joinpath("configs").glob("mnist5k-marscf-*.yaml"))
PRESETS = [name for name in msflow.list_models() if name.startswith("marscf-")]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(shape: tuple[int, ...], n: int, seed: int) -> Tensor:
    return torch.randint(0, 256, (n, *shape), generator=seeded(seed), dtype=torch.uint8)


def tiny(randomize: Callable, dtype: torch.dtype = F64, shape=(1, 8, 8), levels=2, **options) -> MARSCF:
    """A tiny initialised, perturbed mAR-SCF model."""
    torch.manual_seed(0)
    kw = {"steps": 1, "hidden": 8, "mixtures": 3, "lstm_hidden": 4, **options}
    model = marscf(shape, levels=levels, **kw).to(dtype)
    with torch.no_grad():
        model.bits_per_dim(images(shape, 16, 100))
    return randomize(model, std=0.05, seed=1).eval()


def prior_and_input(randomize: Callable, keep: int, cond_channels: int = 0) -> tuple[MARSplitPrior, Tensor, Tensor]:
    prior = MARSplitPrior(5, keep=keep, cond_channels=cond_channels, hidden=6, embed_hidden=4).double()
    randomize(prior, std=0.2, seed=3)
    x = torch.randn(3, 5, 4, 6, generator=seeded(4), dtype=F64)
    cond = torch.randn(3, cond_channels, 4, 6, generator=seeded(5), dtype=F64) if cond_channels else None
    return prior, x, cond


# ---------------------------------------------------------------- ConvLSTM


def test_convlstm_teacher_forcing_equals_stepping(randomize: Callable) -> None:
    lstm = randomize(ConvLSTM(3, hidden=5, num_layers=3, kernel_size=5, dilation=2).double(), std=0.2)
    seq = torch.randn(6, 2, 3, 7, 5, dtype=F64)
    state, outputs = lstm.initial_state(seq[0]), []
    for x_t in seq:
        h, state = lstm.step(x_t, state)
        outputs.append(h)
    torch.testing.assert_close(lstm(seq), torch.stack(outputs), atol=1e-12, rtol=0)


# ---------------------------------------------------------------- the mAR prior


@pytest.mark.parametrize(("keep", "cond_channels"), [(2, 0), (0, 0), (1, 2)], ids=["split", "top", "split-cond"])
def test_teacher_forced_density_equals_sequential_per_channel_densities(
    randomize: Callable, keep: int, cond_channels: int
) -> None:
    """log N(eps; 0, I) + logdet of one teacher-forced pass == sum_j log N(l^j; mu^j, sigma^j),
    with (mu^j, sigma^j) computed one channel at a time by the sampling recursion."""
    prior, x, cond = prior_and_input(randomize, keep, cond_channels)
    prior.requires_grad_(False)
    out, logdet = prior(x, cond)
    normal = torch.distributions.Normal(torch.zeros((), dtype=F64), torch.ones((), dtype=F64))
    teacher_forced = normal.log_prob(out[:, keep:]).sum((1, 2, 3)) + logdet
    state = prior.start(x[:, :keep], cond)
    previous, sequential = torch.zeros_like(x[:, :1]), torch.zeros(3, dtype=F64)
    for j in range(keep, 5):
        mu, log_sigma, state = prior.step(previous, state)
        previous = x[:, j : j + 1]
        sequential = sequential + torch.distributions.Normal(mu, log_sigma.exp()).log_prob(previous).sum((1, 2, 3))
    torch.testing.assert_close(teacher_forced, sequential, atol=1e-10, rtol=0)
    torch.testing.assert_close(out[:, :keep], x[:, :keep], atol=0, rtol=0)
    assert float(logdet.abs().min()) > 1e-3, "perturbed prior should not be the identity"


@torch.no_grad()
def test_prior_is_causal_over_channels(randomize: Callable) -> None:
    """Changing channel j of l changes eps^j and later channels, never earlier ones."""
    prior, x, _ = prior_and_input(randomize, keep=1)
    base, _ = prior(x)
    for j in range(1, 5):
        changed = x.clone()
        changed[:, j] += 1.0
        out, _ = prior(changed)
        torch.testing.assert_close(out[:, :j], base[:, :j], atol=0, rtol=0)
        assert float((out[:, j:] - base[:, j:]).abs().min(dim=1).values.max()) > 0


def test_sampling_is_one_step_per_channel_and_temperature_zero_is_the_mean_path(randomize: Callable) -> None:
    prior, x, _ = prior_and_input(randomize, keep=2)
    eps = torch.zeros(3, 3, 4, 6, dtype=F64)
    with mock.patch.object(MARSplitPrior, "step", autospec=True, side_effect=MARSplitPrior.step) as step:
        sample, _ = prior.inverse(torch.cat([x[:, :2], eps], dim=1))
    assert step.call_count == prior.num_sequential_steps == 3
    # eps = 0: every channel is its conditional mean given the channels drawn before it.
    mu, _ = prior.teacher_forced_params(sample[:, :2], sample[:, 2:])
    torch.testing.assert_close(sample[:, 2:], mu, atol=1e-12, rtol=0)


@torch.no_grad()
def test_prior_ignores_cond_without_cond_channels_and_needs_it_with(randomize: Callable) -> None:
    prior, x, _ = prior_and_input(randomize, keep=2)
    junk = torch.randn(3, 2, 4, 6, dtype=F64)
    torch.testing.assert_close(prior(x, junk)[0], prior(x)[0], atol=0, rtol=0)
    conditional, x, cond = prior_and_input(randomize, keep=2, cond_channels=2)
    with pytest.raises(ValueError, match="cond"):
        conditional(x)
    assert float((conditional(x, cond)[0] - conditional(x, 2 * cond)[0]).abs().max()) > 1e-6


# ---------------------------------------------------------------- whole models


@pytest.mark.parametrize("coupling", ["affine", "mixlogcdf"])
def test_sampled_latents_are_recovered_by_encoding(randomize: Callable, coupling: str) -> None:
    model = tiny(randomize, coupling=coupling)
    zs = model.sample_latents(3, temperature=0.8, generator=seeded(7))
    with torch.no_grad():
        v = model.decode(zs)
        zs_back, _ = model.encode(v)
    for z, z_back in zip(zs, zs_back, strict=True):
        torch.testing.assert_close(z_back, z, atol=1e-9, rtol=0)


def test_whole_model_logdet_is_slogdet_of_jacobian(randomize: Callable, jacobian_logabsdet: Callable) -> None:
    """log|det d(eps_1, eps_2)/dv| of a 2-level mAR + MixLogCDF model equals the autograd slogdet."""
    model = tiny(randomize, shape=(1, 4, 4), levels=2)
    v = torch.rand(2, 1, 4, 4, generator=seeded(8), dtype=F64) * 0.9 + 0.05

    def latents(point: Tensor) -> Tensor:
        zs, _ = model.encode(point[None])
        return torch.cat([z.flatten() for z in zs])

    with torch.no_grad():
        _, logdet = model.encode(v)
    for i in range(2):
        sign, reference = jacobian_logabsdet(latents, v[i])
        assert sign != 0
        torch.testing.assert_close(logdet[i], reference, atol=1e-8, rtol=0)


def test_temperature_zero_sample_is_the_mean_path(randomize: Callable) -> None:
    model = tiny(randomize)
    a = model.sample(2, temperature=0.0, generator=seeded(1))
    b = model.sample(2, temperature=0.0, generator=seeded(2))
    assert torch.equal(a, b)
    with torch.no_grad():
        expected = model.dequantizer.quantize(
            model.decode([torch.zeros(2, *s, dtype=F64) for s in model.latent_shapes()])
        )
    assert torch.equal(a, expected)
    assert not torch.equal(a, model.sample(2, temperature=1.0, generator=seeded(1)))


@pytest.mark.parametrize(("shape", "levels"), [((1, 28, 28), 2), ((3, 32, 32), 3), ((3, 8, 8), 1), ((2, 16, 16), 4)])
def test_sequential_steps_follow_lemma_a1(shape: tuple[int, int, int], levels: int) -> None:
    model = marscf(shape, levels=levels, steps=1, hidden=4, mixtures=1, lstm_hidden=2, lstm_layers=1)
    c, n = shape[0], levels
    expected = [2**i * c for i in range(1, n)] + [2 ** (n + 1) * c]
    assert lemma_a1_channels(c, n) == expected
    assert model.sequential_steps_per_level() == expected
    assert model.num_sequential_steps() == sum(expected)
    assert [s[0] for s in model.latent_shapes()] == expected
    with mock.patch.object(MARSplitPrior, "step", autospec=True, side_effect=MARSplitPrior.step) as step:
        model.sample(1)
    assert step.call_count == sum(expected)


def test_gaussian_prior_samples_each_level_in_one_draw() -> None:
    model = marscf((1, 8, 8), levels=2, steps=1, hidden=4, prior="gaussian", coupling="affine")
    assert model.sequential_steps_per_level() == [1, 1]


@pytest.mark.parametrize(
    ("name", "prior", "coupling"), list(itertools.product(PRESETS, ["mar", "gaussian"], ["affine", "mixlogcdf"]))
)
def test_every_preset_option_builds_tiny_and_runs(name: str, prior: str, coupling: str) -> None:
    torch.manual_seed(0)
    model = msflow.create_model(name, prior=prior, coupling=coupling, steps=1, hidden=4, mixtures=2, lstm_hidden=2)
    assert isinstance(model, MARSCF)
    x = images(model.image_shape, 2, 0)
    with torch.no_grad():
        log_p = model.log_prob(x, generator=seeded(0))
    assert log_p.shape == (2,) and bool(torch.isfinite(log_p).all())
    sample = model.sample(2, temperature=0.7, generator=seeded(1))
    assert sample.dtype == torch.uint8 and sample.shape == (2, *model.image_shape)


def test_presets_cover_the_paper_datasets_and_reject_unknown_options() -> None:
    assert {f"marscf-{d}" for d in ("mnist5k", "mnist", "cifar10", "imagenet32", "patches32")} <= set(PRESETS)
    assert msflow.create_model("marscf-mnist5k", steps=1, hidden=4).latent_shapes() == [(2, 14, 14), (8, 7, 7)]
    for bad in ({"prior": "flow"}, {"coupling": "spline"}, {"coupling": "spline", "hidden": 4}):
        with pytest.raises(ConfigError):
            msflow.create_model("marscf-mnist5k", **bad)


def test_default_depths_follow_supplement_b() -> None:
    def couplings(model: MARSCF) -> int:
        return sum(type(m).__name__.endswith("Coupling") for m in model.levels[0].modules())

    assert couplings(marscf((1, 8, 8), levels=2, hidden=4, coupling="affine", prior="gaussian")) == 32
    assert couplings(marscf((1, 8, 8), levels=2, hidden=4, mixtures=2, lstm_hidden=2)) == 4


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_configs_build(path: Path) -> None:
    cfg = yaml.safe_load(path.read_text())
    model = msflow.create_model(cfg["model"]["name"], **cfg["model"]["options"])
    assert isinstance(model, MARSCF) and model.image_shape == (1, 28, 28)
    assert cfg["data"]["name"] == "mnist5k"


def test_configs_share_one_training_budget() -> None:
    assert len(CONFIGS) == 4
    budgets = [
        {k: v for k, v in yaml.safe_load(p.read_text()).items() if k in ("optim", "train", "data")} for p in CONFIGS
    ]
    assert all(b == budgets[0] for b in budgets)


# ---------------------------------------------------------------- interpolation


@pytest.fixture(scope="module")
def interp_model() -> MARSCF:
    torch.manual_seed(0)
    model = marscf((1, 8, 8), levels=2, steps=1, hidden=8, mixtures=3, lstm_hidden=4).double()
    with torch.no_grad():
        model.bits_per_dim(images((1, 8, 8), 16, 100))
        gen = seeded(2)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=F64) * 0.05)
    return model.eval()


def test_prior_space_density_is_the_model_density(interp_model: MARSCF) -> None:
    v = (images((1, 8, 8), 3, 5).double() + 0.5) / 256
    with torch.no_grad():
        ls = encode_prior_space(interp_model, v)
        decoded = decode_prior_space(interp_model, ls)
        expected = interp_model.log_prob_continuous(v)
    torch.testing.assert_close(decoded.v, v, atol=1e-10, rtol=0)
    torch.testing.assert_close(decoded.log_p, expected, atol=1e-8, rtol=0)


def test_prior_density_is_image_density_minus_jacobian(randomize: Callable, jacobian_logabsdet: Callable) -> None:
    """log p(v) - log p_phi(l) == log|det dl/dv|, the latter from the autograd Jacobian of v -> l."""
    model = tiny(randomize, shape=(1, 4, 4), levels=2)
    v = torch.rand(2, 1, 4, 4, generator=seeded(11), dtype=F64) * 0.9 + 0.05
    with torch.no_grad():
        decoded = decode_prior_space(model, encode_prior_space(model, v))
    for i in range(2):
        _, reference = jacobian_logabsdet(
            lambda p: torch.cat([l.flatten() for l in encode_prior_space(model, p[None])]), v[i]
        )
        torch.testing.assert_close(decoded.log_p[i] - decoded.log_prior[i], reference, atol=1e-8, rtol=0)


def test_interpolation_lowers_the_objective_and_the_latent_bits_per_dim(interp_model: MARSCF, tmp_path: Path) -> None:
    x = images((1, 8, 8), 2, 9)
    before = {k: v.clone() for k, v in interp_model.state_dict().items()}
    result = interpolate(interp_model, x[0], x[1], steps=5, iters=40, lr=5e-2, lambdas=(0.3, 0.3))
    assert all(torch.equal(v, before[k]) for k, v in interp_model.state_dict().items()), "weights must not change"
    assert result.linear.shape == result.optimised.shape == (5, 1, 8, 8)
    for path in (result.linear, result.optimised):
        assert torch.equal(path[0], x[0]) and torch.equal(path[-1], x[1])
    assert min(result.objective) < result.objective[0] - 0.01
    summary = result.summary()
    # The objective's density term, the latent bits/dim, goes down: the path moved to likelier latents.
    assert summary["mean_interior_latent_bpd_optimised"] < summary["mean_interior_latent_bpd_linear"] - 0.01
    assert summary["objective_start"] == pytest.approx(summary["mean_interior_latent_bpd_linear"], abs=1e-9)
    torch.testing.assert_close(result.latent_bpd_optimised[[0, -1]], result.latent_bpd_linear[[0, -1]])
    # Image bits/dim are reported for both paths (same endpoints, same dequantization noise).
    torch.testing.assert_close(result.bpd_optimised[[0, -1]], result.bpd_linear[[0, -1]])
    assert bool(torch.isfinite(result.bpd_optimised).all())
    assert not torch.equal(result.optimised[1:-1], result.linear[1:-1])
    png = save_interpolation_grid(result, tmp_path / "interp.png", scale=2)
    with Image.open(png) as img:
        assert img.size == (2 * (5 * 10 + 2), 2 * (2 * 10 + 2))


def test_interpolation_rejects_bad_inputs(interp_model: MARSCF) -> None:
    x = images((1, 8, 8), 2, 9)
    with pytest.raises(ValueError, match="steps"):
        interpolate(interp_model, x[0], x[1], steps=2)
    fresh = marscf((1, 8, 8), levels=2, steps=1, hidden=4, mixtures=2, lstm_hidden=2)
    with pytest.raises(ValueError, match="initialised"):
        interpolate(fresh, x[0], x[1], steps=3, iters=1)


def test_interpolation_of_a_conditional_model_uses_the_condition(randomize: Callable) -> None:
    """One condition ``(1, ...)`` serves every point; another condition gives another path."""
    torch.manual_seed(0)
    model = marscf((1, 4, 4), levels=1, steps=1, hidden=4, mixtures=2, lstm_hidden=4, cond_channels=[2]).double()
    x = images((1, 4, 4), 2, 12)
    cond = torch.randn(1, 2, 2, 2, generator=seeded(13), dtype=F64)
    with torch.no_grad():
        model.bits_per_dim(images((1, 4, 4), 8, 14), cond=cond.expand(8, -1, -1, -1))
    randomize(model, std=0.05, seed=1)
    with pytest.raises(ValueError, match="cond"):
        interpolate(model, x[0], x[1], steps=3, iters=1)
    a = interpolate(model, x[0], x[1], steps=4, iters=5, cond=cond)
    b = interpolate(model, x[0], x[1], steps=4, iters=5, cond=-3 * cond)
    assert a.objective[-1] != b.objective[-1]
    assert min(a.objective) <= a.objective[0]

"""CAFLOW (paper 002): the conditional autoregressive flows G_i, eq. 9, weight sharing, the DUAL-GLOW
ablation (eq. 6), the training objective, sampling and input checks.

Exactness checks run in float64 on tiny models whose every parameter is perturbed (the
zero-initialised last layers would otherwise make the flows identities and the checks vacuous).
"""

from __future__ import annotations

import math

import pytest
import torch

from msflow import create_model
from msflow.distributions import standard_normal_log_prob
from msflow.errors import DataError, ShapeError
from msflow.metrics.bpd import bits_per_dim
from msflow.models.caflow import CAFlow

TINY = dict(size=8, levels=2, hidden=8, cond_hidden=8, cond_steps=1, target_steps=1, flow_steps=1)


def tiny(preset: str = "caflow-colorize", seed: int = 0, **options) -> CAFlow:
    """A perturbed float64 tiny model with its ActNorms initialised."""
    torch.manual_seed(seed)
    model = create_model(preset, **{**TINY, **options}).double()
    w, y = images(model, 6, seed)
    model.bits_per_dim(w, y)  # data-dependent ActNorm initialisation
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def images(model: CAFlow, n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(0, 256, (n, *model.image_shape), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 256, (n, *model.cond_shape), generator=g, dtype=torch.uint8)
    return w, y


def latents(model: CAFlow, n: int = 3, seed: int = 2) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Target and condition latents ``L``, ``D`` (coarse to fine) of random images."""
    w, y = images(model, n, seed)
    v = (w.double() + 0.5) / 256
    zs, _ = model.T.encode_with_features(v, [None] * model.num_levels)
    ds, _ = model._condition_latents(model.condition_image(y, w), None, torch.float64)
    return zs[::-1], ds


@pytest.mark.parametrize("options", [{}, {"share_weights": True}, {"factorization": "dual-glow"}])
def test_g_i_inverts_f_i_for_fixed_conditions(options: dict) -> None:
    model = tiny(**options)
    ls, ds = latents(model)
    for i in range(model.num_levels):
        zs, logdet = model.encode_component(i, ls, ds)
        assert [tuple(z.shape[1:]) for z in zs] == model.component_shapes(i, *ls[i].shape[-2:])
        back = model.decode_component(i, zs, ls, ds)
        torch.testing.assert_close(back, ls[i], atol=1e-10, rtol=0)
        assert logdet.abs().min() > 1e-3  # the perturbed blocks are not volume-preserving


def test_g_i_log_det_equals_autograd_jacobian() -> None:
    model = tiny()
    ls, ds = latents(model, n=1)
    i = 1  # the finest component reads L_0 and D_0, D_1
    zs, logdet = model.encode_component(i, ls, ds)

    def flat_z(l_i: torch.Tensor) -> torch.Tensor:
        return torch.cat([z.flatten() for z in model.encode_component(i, [*ls[:i], l_i], ds)[0]])

    jac = torch.autograd.functional.jacobian(flat_z, ls[i])
    _, expected = torch.linalg.slogdet(jac.reshape(jac.shape[0], -1))
    torch.testing.assert_close(logdet[0], expected, atol=1e-9, rtol=0)


def test_eq9_is_the_sum_of_its_parts_computed_separately() -> None:
    model = tiny()
    w, y = images(model, 4)
    v = (w.double() + 0.5) / 256
    ds, _ = model._condition_latents(model.condition_image(y, w), None, torch.float64)
    total = model._conditional_log_prob(v, ds)
    # Term by term: log|det dT/dw|, then per component i each split-off z^i_j by N(0, I) plus
    # each block's log-det, run block by block by hand.
    h, parts = model.T.preprocess(v)
    ls_fine = []
    for level, keep in zip(model.T.levels, model.T.keep, strict=True):
        h, ld = level(h)
        parts = parts + ld
        ls_fine.append(h[:, keep:])
        h = h[:, :keep]
    ls = ls_fine[::-1]
    for i in range(model.num_levels):
        h = ls[i]
        for j in range(i, -1, -1):
            cond = ds[i] if j == i else torch.cat([ls[j], ds[j]], 1)
            h, ld = model.block(i, j)(h, cond)
            keep = 0 if j == 0 else h.shape[1] // 2
            parts = parts + ld + standard_normal_log_prob(h[:, keep:])
            h = h[:, :keep]
    torch.testing.assert_close(total, parts, atol=1e-9, rtol=0)
    # and bits/dim is that density with the uniform bin term: -log p / (D log 2) + 8
    bpd = model.bits_per_dim(w, y, generator=torch.Generator().manual_seed(0))
    v2, _ = model.dequantizer(w, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h = v2 - model.base(y)  # what T reads: the target relative to the grey condition
    torch.testing.assert_close(bpd, bits_per_dim(model._conditional_log_prob(h, ds), w[0].numel(), 8))


def test_conditional_density_equals_the_jacobian_of_the_whole_map() -> None:
    """For fixed y, v -> (all z^i_j) is a bijection; eq. 9 must be its change of variables."""
    model = tiny(seed=3)
    w, y = images(model, 1, seed=5)
    ds, _ = model._condition_latents(model.condition_image(y, w), None, torch.float64)
    v = (w.double() + 0.5) / 256

    def all_z(v_: torch.Tensor) -> torch.Tensor:
        zs, _ = model.T.encode_with_features(v_, [None] * model.num_levels)
        ls = zs[::-1]
        return torch.cat([z.flatten() for i in range(model.num_levels) for z in model.encode_component(i, ls, ds)[0]])

    z = all_z(v)
    jac = torch.autograd.functional.jacobian(all_z, v).reshape(z.numel(), -1)
    assert jac.shape == (192, 192)
    expected = torch.linalg.slogdet(jac)[1] + standard_normal_log_prob(z[None])[0]
    torch.testing.assert_close(model._conditional_log_prob(v, ds)[0], expected, atol=1e-8, rtol=0)


@pytest.mark.parametrize("levels", [2, 3, 4])
def test_weight_sharing_uses_2n_minus_1_blocks(levels: int) -> None:
    size = 2**levels * 2
    opts = dict(TINY, size=size, levels=levels)
    full = create_model("caflow-colorize", **opts)
    shared = create_model("caflow-colorize", share_weights=True, **opts)
    dual = create_model("caflow-colorize", factorization="dual-glow", **opts)
    assert len(full.blocks) == levels * (levels + 1) // 2
    assert len(shared.blocks) == 2 * levels - 1
    assert len(dual.blocks) == levels
    # f^i_j is one module for every i > j (appendix D), a distinct one in the full model
    for j in range(levels - 1):
        assert len({id(shared.block(i, j)) for i in range(j + 1, levels)}) == 1
        assert len({id(full.block(i, j)) for i in range(j + 1, levels)}) == levels - 1 - j
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(dual) < count(shared) < count(full) or levels == 2 and count(shared) == count(full)


def test_dual_glow_component_reads_only_its_own_level() -> None:
    """Eq. 6: p(L_i | D_i) ignores the other levels; eq. 8 reads the coarser ones."""
    for factorization, expect_change in (("dual-glow", False), ("autoregressive", True)):
        model = tiny(factorization=factorization)
        ls, ds = latents(model)
        base = model.component_log_prob(1, ls, ds)
        moved_l = model.component_log_prob(1, [ls[0] + 0.3, ls[1]], ds)
        moved_d = model.component_log_prob(1, ls, [ds[0] + 0.3, ds[1]])
        for moved in (moved_l, moved_d):
            assert (not torch.allclose(moved, base)) == expect_change
        # the finer condition D_i is read in both
        assert not torch.allclose(model.component_log_prob(1, ls, [ds[0], ds[1] + 0.3]), base)


def test_training_objective_adds_lambda_log_p_y() -> None:
    model = tiny(lam=0.0)
    w, y = images(model, 3)
    seed = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    base = model.training_bits_per_dim(w, y, seed())
    model.lam = 0.25
    weighted = model.training_bits_per_dim(w, y, seed())
    # the same draws: the difference is lambda * (-log p(y)) / (D_w log 2)
    _, _, log_p_y, _ = model._terms(w, y, seed(), noisy_cond=True)
    cond_bits = -log_p_y / (w[0].numel() * math.log(2)) + 8 * y[0].numel() / w[0].numel()
    torch.testing.assert_close(weighted - base, 0.25 * cond_bits)
    # evaluation scores the conditional density alone, with deterministic conditions
    a = model.bits_per_dim(w, y, seed())
    torch.testing.assert_close(a, model.bits_per_dim(w, y, seed()))


def test_training_reduces_the_conditional_loss() -> None:
    torch.manual_seed(0)
    model = create_model("caflow-colorize", **TINY)
    w = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8).repeat(8, 1, 1, 1)
    y = w.float().mean(1, keepdim=True).round().to(torch.uint8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for step in range(60):
        loss = model.training_bits_per_dim(w, y, torch.Generator().manual_seed(step)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < first - 1.0


def test_sampling_shapes_temperatures_and_determinism() -> None:
    model = tiny()
    _, y = images(model, 2)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a = model.sample(4, 0.7, y[:1], g())
    assert a.shape == (4, 3, 8, 8) and a.dtype == torch.uint8
    assert torch.equal(a, model.sample(4, 0.7, y[:1], g()))
    assert not torch.equal(a[0], a[1])
    # temperature 0 gives one image per condition; one temperature per scale is accepted
    zero = model.sample(3, 0.0, y[:1])
    assert torch.equal(zero[0], zero[1]) and torch.equal(zero[1], zero[2])
    assert torch.equal(model.sample(2, [0.0, 0.0], y), model.sample(2, 0.0, y))
    with pytest.raises(ValueError, match="one temperature or 2"):
        model.sample(2, [0.5, 0.5, 0.5], y[:1])
    with pytest.raises(ShapeError, match="one condition image or n=3"):
        model.sample(3, 0.5, y)


def test_encode_decode_round_trip_and_log_det() -> None:
    model = tiny()
    w, y = images(model, 2)
    v = model.dequantize(w, y, torch.Generator().manual_seed(0))
    zs, logdet = model.encode(v, y)
    assert len(zs) == 3  # F_0 has one block, F_1 two
    torch.testing.assert_close(model.decode(zs, y), v, atol=1e-10, rtol=0)
    ds, _ = model._condition_latents(model.condition_image(y, w), None, torch.float64)
    density = logdet + sum(standard_normal_log_prob(z) for z in zs)
    torch.testing.assert_close(density, model._conditional_log_prob(v - model.base(y), ds), atol=1e-9, rtol=0)


def test_sample_is_the_inverse_of_encoding() -> None:
    """Decoding the latents of a real target gives it back: sampling runs eq. 9's map backwards."""
    model = tiny()
    w, y = images(model, 2)
    v = (w.double() + 0.5) / 256
    ds, _ = model._condition_latents(model.condition_image(y, w), None, torch.float64)
    zs, _ = model.T.encode_with_features(v, [None] * model.num_levels)
    ls = zs[::-1]
    comps = [model.encode_component(i, ls, ds)[0] for i in range(model.num_levels)]
    regenerated: list[torch.Tensor] = []
    for i in range(model.num_levels):
        regenerated.append(model.decode_component(i, comps[i], regenerated, ds))
    back = model.T.decode_with_features(regenerated[::-1], [None] * model.num_levels)
    assert torch.equal(model.dequantizer.quantize(back), w)


def test_superres_condition_is_the_low_resolution_image() -> None:
    model = tiny("caflow-sr4", size=16)
    assert model.cond_shape == (3, 4, 4) and model.scale == 4
    w, y = images(model, 2)
    assert model.bits_per_dim(w, y).shape == (2,)
    assert model.sample(2, 0.5, y[:1]).shape == (2, 3, 16, 16)
    with pytest.raises(ShapeError, match=r"a 16x16 target needs a condition of shape 3x4x4, got 3x8x8"):
        model.bits_per_dim(w, torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_bad_conditions_name_the_expected_shape() -> None:
    model = tiny()  # colorization: greyscale 1x8x8 conditions
    w, y = images(model, 2)
    with pytest.raises(ShapeError, match=r"greyscale condition images of shape 1x8x8 .*got 3x8x8: convert"):
        model.bits_per_dim(w, torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ShapeError, match=r"a 8x8 target needs a condition of shape 1x8x8, got 1x16x16"):
        model.bits_per_dim(w, torch.zeros(2, 1, 16, 16, dtype=torch.uint8))
    with pytest.raises(ShapeError, match="sides divisible by 4"):
        model.sample(1, 0.5, torch.zeros(1, 1, 6, 6, dtype=torch.uint8))
    with pytest.raises(ShapeError, match="2 targets but 1 conditions"):
        model.bits_per_dim(w, y[:1])
    with pytest.raises(DataError, match="floats in"):
        model.bits_per_dim(w, y.double() * 2)
    with pytest.raises(ShapeError, match=r"targets \(B, 3, H, W\) with H and W divisible by 4"):
        model.bits_per_dim(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), y)
    colour = tiny("caflow-inpaint")
    with pytest.raises(ShapeError, match=r"masked RGB condition images of shape 3x8x8 .*got 1x8x8"):
        colour.sample(1, 0.5, y[:1])
    # floats in [0, 1] are the same condition as their uint8 pixels
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    torch.testing.assert_close(model.bits_per_dim(w, y.double() / 255, g()), model.bits_per_dim(w, y, g()))


def test_any_squeezable_size_is_scored_and_sampled() -> None:
    model = tiny()
    w = torch.randint(0, 256, (2, 3, 16, 12), dtype=torch.uint8)
    y = torch.randint(0, 256, (2, 1, 16, 12), dtype=torch.uint8)
    assert torch.isfinite(model.bits_per_dim(w, y)).all()
    assert model.sample(2, 0.5, y).shape == (2, 3, 16, 12)


def test_same_noise_ranks_candidates_by_content() -> None:
    model = tiny()
    w, y = images(model, 1)
    batch = w.repeat(3, 1, 1, 1)
    same = model.bits_per_dim(batch, y.repeat(3, 1, 1, 1), torch.Generator().manual_seed(0), same_noise=True)
    assert torch.allclose(same, same[:1].expand(3))
    differ = model.bits_per_dim(batch, y.repeat(3, 1, 1, 1), torch.Generator().manual_seed(0))
    assert not torch.allclose(differ, differ[:1].expand(3))


def test_variational_dequantization_density_is_its_change_of_variables() -> None:
    model = tiny(dequantization="variational", dequant_steps=2)
    deq = model.dequantizer
    x = torch.randint(0, 256, (1, 3, 2, 2), dtype=torch.uint8)
    eps = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    v, log_q = deq.from_noise(eps, x)
    assert torch.equal(deq.quantize(v), x)
    jac = torch.autograd.functional.jacobian(lambda e: deq.from_noise(e, x)[0] * 256, eps).reshape(12, 12)
    expected = standard_normal_log_prob(eps)[0] - torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(log_q[0], expected, atol=1e-9, rtol=0)
    w, y = images(model, 2)
    assert torch.isfinite(model.training_bits_per_dim(w, y, torch.Generator().manual_seed(0))).all()


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="factorization"):
        create_model("caflow-colorize", factorization="glow")
    with pytest.raises(ValueError, match="dequantization"):
        create_model("caflow-colorize", dequantization="binary")
    with pytest.raises(ValueError, match="lam"):
        create_model("caflow-colorize", lam=-1.0)
    with pytest.raises(ValueError, match="must divide by"):
        create_model("caflow-sr4", size=40)


def test_reconstruction_errors_with_fewer_images_than_a_batch() -> None:
    """``msflow eval`` checks invertibility on the first images; conditions must be cut to match."""
    from msflow.data.pairs import PairedDataset
    from msflow.metrics.invertibility import reconstruction_errors

    model = tiny()
    w, y = images(model, 5)
    errors = reconstruction_errors(model, PairedDataset(w, y, task="colorize"), batch_size=4, max_images=3)
    assert errors.shape == (3,) and errors.max() < 1e-9


PRESETS = {  # preset -> (condition shape, steps per level of R, T and each f^i_j)
    "caflow-sr4": ((3, 8, 8), (4, 8, 4)),
    "caflow-colorize": ((1, 32, 32), (4, 8, 4)),
    "caflow-inpaint": ((3, 32, 32), (4, 8, 4)),
    "caflow-sketch": ((1, 32, 32), (4, 8, 4)),
    "caflow-sr4-paper": ((3, 8, 8), (16, 32, 12)),  # appendix B.1
    "caflow-colorize-paper": ((1, 32, 32), (24, 24, 12)),  # B.2
    "caflow-inpaint-paper": ((3, 32, 32), (30, 30, 16)),  # B.3
    "caflow-sketch-paper": ((1, 32, 32), (16, 16, 12)),
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_build_with_their_shapes_and_depths(preset: str) -> None:
    from msflow.transforms import AffineCoupling, AffineInjector

    assert preset in msflow_models()
    model = create_model(preset)
    cond_shape, (r, t, f) = PRESETS[preset]
    assert model.image_shape == (3, 32, 32) and model.cond_shape == cond_shape and model.num_levels == 3
    couplings = lambda m: sum(isinstance(b, AffineCoupling) for b in m.modules())  # noqa: E731
    assert couplings(model.R.levels[0]) == r and couplings(model.T.levels[0]) == t
    injectors = sum(isinstance(b, AffineInjector) for b in model.block(2, 1).modules())
    assert couplings(model.block(2, 1)) == f and injectors == f
    w = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 256, (2, *cond_shape), dtype=torch.uint8)
    assert torch.isfinite(model.bits_per_dim(w, y)).all()


def msflow_models() -> list[str]:
    from msflow import list_models

    caflow = [name for name in list_models() if name.startswith("caflow-")]
    assert sorted(caflow) == sorted(PRESETS)  # every CAFLOW preset is covered here
    return caflow

"""Never worse than the trivial answer: image-to-image flows measured from a guess made from their
condition (DESIGN.md section 6), and the bounded coupling scale that keeps their samples from
saturating.

Super-resolution flows model the target relative to Pillow's bicubic upsampling of the
condition, colorization relative to the grey image; the shift has log-det 0, so an untrained
model sampled at temperature 0 returns the guess itself. Exactness checks run in float64 on
perturbed parameters (zero-initialised last layers would make them vacuous).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

import msflow
from msflow.errors import CheckpointError, ConfigError
from msflow.metrics.fidelity import psnr
from msflow.transforms import AffineCoupling, AffineInjector
from msflow.transforms.coupling import LOG_SCALES, SCALE_BOUND
from msflow.transforms.shift import ConditionalShift, ImageBase, pillow_bicubic

TINY_CFLOW = {"steps": 1, "hidden": 8, "features": 8, "blocks": 1, "growth": 4}
TINY_CAFLOW = {"levels": 3, "hidden": 8, "cond_hidden": 8, "cond_steps": 1, "target_steps": 1, "flow_steps": 1}
SUPERRES = {"cflow-sr2": (2, TINY_CFLOW), "cflow-sr4": (4, TINY_CFLOW), "caflow-sr4": (4, TINY_CAFLOW)}


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pillow_upsample(low: Tensor, scale: int) -> Tensor:
    """Pillow's bicubic resize of uint8 ``(B, C, h, w)`` images, one plane at a time."""
    b, c, h, w = low.shape
    planes = [Image.fromarray(p.numpy()).resize((w * scale, h * scale), Image.BICUBIC) for p in low.reshape(-1, h, w)]
    return torch.from_numpy(np.stack([np.asarray(p) for p in planes])).reshape(b, c, h * scale, w * scale)


def held_out_pairs(factor: int, n: int = 64) -> tuple[Tensor, Tensor]:
    """``n`` evenly spaced held-out photo crops and their antialiased 1/factor versions."""
    from msflow.data.pairs import load_sr_pairs

    pairs = load_sr_pairs("test", factor)
    pick = torch.linspace(0, len(pairs.images) - 1, n).long()
    return pairs.images[pick], pairs.conds[pick]


def mean_psnr(images: Tensor, truth: Tensor) -> float:
    return sum(psnr(a, b) for a, b in zip(images, truth, strict=True)) / len(images)


# ---------------------------------------------------------------- the base


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (7, 5), (16, 16)])
def test_pillow_bicubic_is_pillows_resize_to_the_pixel(scale: int, size: tuple[int, int]) -> None:
    low = torch.randint(0, 256, (2, 3, *size), generator=seeded(scale), dtype=torch.uint8)
    ours = pillow_bicubic(low.float(), scale)
    assert torch.equal(ours, ours.round()) and ours.min() >= 0 and ours.max() <= 255
    assert torch.equal(ours.to(torch.uint8), pillow_upsample(low, scale))


def test_base_is_at_bin_centres_and_repeats_a_grey_condition() -> None:
    low = torch.randint(0, 256, (2, 3, 5, 6), generator=seeded(0), dtype=torch.uint8)
    base = ImageBase(2, channels=3)(low.float())
    torch.testing.assert_close(base * 256 - 0.5, pillow_upsample(low, 2).float(), atol=1e-4, rtol=0)
    grey = low[:, :1].float()
    colour = ImageBase(1, channels=3)(grey)
    assert colour.shape == (2, 3, 5, 6) and torch.equal(colour, ((grey + 0.5) / 256).expand(-1, 3, -1, -1))
    with pytest.raises(ValueError, match="3-channel condition cannot be the base of 1 channels"):
        ImageBase(1, channels=1)(low.float())


def test_shift_has_log_det_zero_and_inverts_exactly(jacobian_logabsdet: Callable) -> None:
    shift = ConditionalShift(ImageBase(2)).double()
    x = torch.rand(3, 3, 6, 8, generator=seeded(0), dtype=torch.float64)
    low = torch.randint(0, 256, (3, 3, 3, 4), generator=seeded(1)).double()
    z, logdet = shift(x, low)
    back, logdet_inverse = shift.inverse(z, low)
    torch.testing.assert_close(back, x, atol=1e-12, rtol=0)
    assert torch.equal(logdet, torch.zeros(3, dtype=torch.float64)) and torch.equal(logdet_inverse, logdet)
    assert (z - x).abs().max() > 0.1  # it does shift
    sign, logabsdet = jacobian_logabsdet(lambda p: shift(p[None], low[:1])[0][0], x[0])
    assert sign == 1 and abs(float(logabsdet)) < 1e-12
    # one condition serves a batch of samples; a missing or misfit one is refused
    torch.testing.assert_close(shift(x, low[:1])[0][0], z[0])
    with pytest.raises(ValueError, match="cond"):
        shift(x)
    with pytest.raises(ValueError, match="does not fit inputs"):
        shift(x, low[..., :2, :2])


# ---------------------------------------------------------------- the bounded coupling scale


@pytest.mark.parametrize("cond_channels", [0, 2])
def test_bounded_coupling_is_exact(cond_channels: int, randomize: Callable, jacobian_logabsdet: Callable) -> None:
    torch.manual_seed(0)
    layer = AffineCoupling(4, scale="bounded", cond_channels=cond_channels).double()
    randomize(layer, std=0.3, seed=1)
    x = torch.randn(2, 4, 3, 5, generator=seeded(2), dtype=torch.float64)
    c = torch.randn(2, 2, 3, 5, generator=seeded(3), dtype=torch.float64) if cond_channels else None
    z, logdet = layer(x, c)
    back, logdet_inverse = layer.inverse(z, c)
    torch.testing.assert_close(back, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(logdet + logdet_inverse, torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    assert logdet.abs().min() > 1e-3
    for i in range(2):
        ci = None if c is None else c[i : i + 1]
        _, forward = jacobian_logabsdet(lambda p, ci=ci: layer(p[None], ci)[0][0], x[i])
        _, backward = jacobian_logabsdet(lambda p, ci=ci: layer.inverse(p[None], ci)[0][0], z[i])
        torch.testing.assert_close(logdet[i], forward, atol=1e-9, rtol=0)
        torch.testing.assert_close(logdet_inverse[i], backward, atol=1e-9, rtol=0)


@pytest.mark.parametrize("raw", [-1e4, -30.0, 30.0, 1e4])
def test_bounded_scale_stays_within_its_bound_whatever_the_net_says(raw: float) -> None:
    layer = AffineCoupling(4, scale="bounded")
    with torch.no_grad():
        layer.net[-1].bias[1::2] = raw  # the raw log-scale of both changed channels
    x = torch.randn(2, 4, 3, 3, generator=seeded(0))
    _, logdet = layer.inverse(x)
    per_dim = logdet / (2 * 3 * 3)
    assert torch.isfinite(per_dim).all() and (per_dim.abs() <= np.log(SCALE_BOUND) + 1e-6).all()
    assert (per_dim.abs() > 0.9 * np.log(SCALE_BOUND)).all()  # saturated at the bound, not below it


def test_bounded_scales_keep_samples_from_saturating() -> None:
    """Couplings whose nets all ask for a scale near 0: the sigmoid's inverse divides by it and
    blows whole images to 0 and 255; the bounded scale expands at most twofold per coupling."""
    hr, lr = held_out_pairs(2)
    saturated = {}
    for scale in ("sigmoid", "bounded"):
        torch.manual_seed(0)
        model = msflow.create_model("cflow-sr2", **{**TINY_CFLOW, "steps": 2}, coupling_scale=scale)
        with torch.no_grad():
            model.bits_per_dim(hr, lr, seeded(0))  # ActNorm's start on real pairs
            for layer in model.modules():
                if isinstance(layer, AffineCoupling):
                    layer.net[-1].bias[1::2] = -8.0
        samples = model.sample(len(lr), 0.9, cond=lr, generator=seeded(1))
        saturated[scale] = float(((samples == 0) | (samples == 255)).float().mean())
    assert float(((hr == 0) | (hr == 255)).float().mean()) < 0.02
    assert saturated["sigmoid"] > 0.8 and saturated["bounded"] < 0.2, saturated


# ---------------------------------------------------------------- models at temperature 0


@pytest.mark.parametrize("name", sorted(SUPERRES))
def test_untrained_superres_at_temperature_zero_is_bicubic(name: str) -> None:
    factor, options = SUPERRES[name]
    hr, lr = held_out_pairs(factor)
    torch.manual_seed(0)
    model = msflow.create_model(name, **options)
    assert model.residual
    samples = model.sample(len(lr), 0.0, cond=lr)
    bicubic = pillow_upsample(lr, factor)
    assert abs(mean_psnr(samples, hr) - mean_psnr(bicubic, hr)) < 0.1
    assert torch.equal(samples, bicubic)  # in fact to the pixel
    assert torch.equal(model.dequantizer.quantize(model.base(lr)), bicubic)


def test_untrained_colorization_at_temperature_zero_is_the_grey_image() -> None:
    from msflow.data.translation import load_colorize_pairs

    pairs = load_colorize_pairs("test")
    grey = pairs.conds[torch.linspace(0, len(pairs.conds) - 1, 64).long()]
    torch.manual_seed(0)
    model = msflow.create_model("caflow-colorize", **TINY_CAFLOW)
    samples = model.sample(len(grey), 0.0, cond=grey)
    assert model.residual and torch.equal(samples, grey.expand(-1, 3, -1, -1))


@pytest.mark.parametrize("name", ["cflow-sr4", "caflow-sr4"])
def test_residual_models_round_trip_and_shift_only_by_the_base(name: str, randomize: Callable) -> None:
    factor, options = SUPERRES[name]
    hr, lr = held_out_pairs(factor, n=3)
    torch.manual_seed(0)
    model = msflow.create_model(name, **options).double()
    with torch.no_grad():
        model.bits_per_dim(hr, lr)  # ActNorm's start
    randomize(model, std=0.05, seed=1)
    v = model.dequantize(hr, lr, seeded(2))
    with torch.no_grad():
        zs, logdet = model.encode(v, lr)
        torch.testing.assert_close(model.decode(zs, lr), v, atol=1e-5, rtol=0)
        # The flow sees v - b(x) and nothing else: moving v and the base together changes nothing
        # (by 2^-7, which bin centres in float32 add exactly).
        model.shift.base = _Offset(model.shift.base, 2**-7)
        moved, logdet_moved = model.encode(v + 2**-7, lr)
    for z, z_moved in zip(zs, moved, strict=True):
        torch.testing.assert_close(z_moved, z, atol=1e-9, rtol=0)
    torch.testing.assert_close(logdet_moved, logdet, atol=1e-9, rtol=0)


class _Offset(torch.nn.Module):
    """A base moved by a constant."""

    def __init__(self, base: torch.nn.Module, offset: float) -> None:
        super().__init__()
        self.base, self.offset = base, offset

    def forward(self, pixels: Tensor) -> Tensor:  # noqa: D102
        return self.base(pixels) + self.offset


@pytest.mark.parametrize("name", sorted(SUPERRES))
def test_residual_model_starts_below_the_centred_one_in_bits_per_dim(name: str) -> None:
    """After ActNorm's start alone, the bicubic guess already explains most of each image."""
    factor, options = SUPERRES[name]
    hr, lr = held_out_pairs(factor)
    bpd = {}
    for residual in (True, False):
        torch.manual_seed(0)
        model = msflow.create_model(name, **options, residual=residual)
        with torch.no_grad():
            model.bits_per_dim(hr, lr, seeded(0))  # ActNorm's start
            bpd[residual] = float(model.bits_per_dim(hr, lr, seeded(1)).mean())
    assert np.isfinite(list(bpd.values())).all() and bpd[True] < bpd[False] - 0.5, bpd


# ---------------------------------------------------------------- runs trained before the base


def scale_functions(module: torch.nn.Module) -> set[str]:
    """Names of the scale functions of the couplings and injectors in ``module``."""
    names = {fn: name for name, fn in LOG_SCALES.items()}
    return {names[m.log_scale_fn] for m in module.modules() if isinstance(m, AffineCoupling | AffineInjector)}


@pytest.mark.parametrize("name", sorted(SUPERRES))
def test_residual_false_is_the_model_of_earlier_runs(name: str) -> None:
    from msflow.train.checkpoint import load_weights

    _, options = SUPERRES[name]
    torch.manual_seed(0)
    legacy = msflow.create_model(name, **options, residual=False)
    torch.manual_seed(0)
    residual = msflow.create_model(name, **options)
    assert not legacy.residual and not any(key.startswith("shift.") for key in legacy.state_dict())
    # The scale functions of those runs. The residual flow's couplings are bounded both ways;
    # CAFLOW's have the paper's soft clamp either way (and "bounded" as an option).
    if name.startswith("caflow"):
        assert scale_functions(legacy) == scale_functions(residual) == {"atan"}
        bounded = msflow.create_model(name, **options, coupling_scale="bounded")
        assert scale_functions(bounded.R) == {"atan"}  # only ever run forwards
        assert scale_functions(bounded.T) == scale_functions(bounded.blocks) == {"bounded"}
    else:
        assert scale_functions(legacy) == {"sigmoid"} and scale_functions(residual) == {"bounded"}
    assert set(residual.state_dict()) - set(legacy.state_dict()) == {"shift.residual"}
    lr = torch.randint(0, 256, (2, *legacy.cond_shape), generator=seeded(0), dtype=torch.uint8)
    assert (legacy.sample(2, 0.0, cond=lr) == 128).all()  # centred on 1/2, as before
    # A checkpoint of either kind is refused by the other, never read around the wrong base.
    with pytest.raises(CheckpointError, match="1 missing.*shift.residual"):
        load_weights(residual, legacy.state_dict(), "old run")
    with pytest.raises(CheckpointError, match="1 unexpected.*shift.residual"):
        load_weights(legacy, residual.state_dict(), "new run")


def test_tasks_without_a_trivial_answer_have_no_base() -> None:
    inpaint = msflow.create_model("caflow-inpaint", **TINY_CAFLOW)
    assert not inpaint.residual
    masked = torch.randint(0, 256, (1, 3, 32, 32), generator=seeded(0), dtype=torch.uint8)
    assert (inpaint.base(masked) == 0.5).all()
    with pytest.raises(ConfigError, match="no trivial answer"):
        msflow.create_model("caflow-sketch", **TINY_CAFLOW, residual=True)


def test_runs_trained_before_the_base_load_as_they_were_trained(tmp_path) -> None:
    from msflow.cli import main
    from msflow.runs import load_run
    from msflow.train.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint

    tiny = "model.options={steps: 1, hidden: 8, features: 8, blocks: 1, growth: 4, residual: false}"
    common = ["train.steps=2", "train.max_seconds=0", "train.batch_size=4", "train.progress=false", "data.test_crops=2"]
    assert main(["train", "photos-sr2-cflow", *common, tiny, "train.num_samples=0", "--out", str(tmp_path)]) == 0
    tensors, meta = load_checkpoint(tmp_path / CHECKPOINT)
    # What a run of the earlier version stored: no residual option anywhere.
    del meta["config"]["model"]["options"]["residual"], meta["model_spec"]["overrides"]["residual"]
    save_checkpoint(tmp_path / CHECKPOINT, tensors, meta)
    model, cfg, _ = load_run(tmp_path)
    assert not model.residual and cfg.model.options["residual"] is False
    lr = torch.full((1, 3, 8, 8), 200, dtype=torch.uint8)
    assert (model.sample(1, 0.0, cond=lr) != 200).float().mean() > 0.5  # centred on 1/2, not on the bicubic base

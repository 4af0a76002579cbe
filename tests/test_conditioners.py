"""Condition encoders: per-level shapes, the strided-conv chain, size errors, per-sample
independence, parameter counts from the architecture, gradients, bf16 autocast, channels_last."""

from __future__ import annotations

from math import gcd

import pytest
import torch
from torch import nn

from msflow.nn import CONDITIONERS, RRDBNet, SRConditioner, VGGConditioner

TINY_SR = {"features": 8, "blocks": 1, "growth": 4}
TINY_VGG = {"channels": (4, 6, 8)}


def _sr(scale: int = 2, num_levels: int = 2) -> SRConditioner:
    return SRConditioner(3, scale=scale, num_levels=num_levels, **TINY_SR)


def _lr_side(scale: int, num_levels: int) -> int:
    """Smallest low-resolution side whose x``scale`` target halves ``num_levels`` times."""
    return 2**num_levels // gcd(scale, 2**num_levels)


def _conv(c_in: int, c_out: int, k: int = 3) -> int:
    return k * k * c_in * c_out + c_out


def _rrdbnet_params(c_in: int, f: int, blocks: int, g: int) -> int:
    # Dense block: four convs to g channels, the k-th seeing f + k*g channels, then one back to f.
    dense = sum(_conv(f + k * g, g) for k in range(4)) + _conv(f + 4 * g, f)
    return _conv(c_in, f) + blocks * 3 * dense + _conv(f, f)


def _vgg_params(c_in: int, widths: list[int]) -> int:
    total = _conv(c_in, widths[0])
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        total += 2 * a + _conv(a, b) + 2 * b + _conv(b, b)  # each block: affine instance norm + conv
    return total


def _count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("num_levels", [1, 2, 3])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_sr_shapes(scale: int, num_levels: int) -> None:
    k = _lr_side(scale, num_levels)
    h, w = 2 * k, 3 * k
    out = _sr(scale, num_levels)(torch.randn(2, 3, h, w))
    hr_h, hr_w = scale * h, scale * w
    assert [tuple(o.shape) for o in out] == [
        (2, 8, hr_h // 2 ** (i + 1), hr_w // 2 ** (i + 1)) for i in range(num_levels)
    ]


@pytest.mark.parametrize("num_levels", [1, 2, 3])
def test_vgg_shapes(num_levels: int) -> None:
    net = VGGConditioner(3, num_levels, **TINY_VGG)
    out = net(torch.randn(2, 3, 16, 8))
    assert net.level_channels == [6, 8, 8][:num_levels]
    assert [tuple(o.shape) for o in out] == [
        (2, c, 16 // 2 ** (i + 1), 8 // 2 ** (i + 1)) for i, c in enumerate(net.level_channels)
    ]


def test_sr_levels_are_a_chain_of_strided_convs() -> None:
    net = _sr(scale=2, num_levels=3)
    lr = torch.randn(1, 3, 4, 4)
    seen = {}
    net.rrdb.register_forward_hook(lambda _m, _i, out: seen.setdefault("rrdb", out))
    out = net(lr)
    upsampled = nn.functional.interpolate(seen["rrdb"], size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[0], net.down[0](upsampled))
    for i in range(2):
        torch.testing.assert_close(out[i + 1], net.down[i + 1](out[i]))
    assert all(d.kernel_size == (2, 2) and d.stride == (2, 2) for d in net.down)


@pytest.mark.parametrize(
    ("net", "shape", "needle"),
    [
        (_sr(2, 2), (1, 3, 3, 4), "multiple of 2"),
        (_sr(2, 3), (1, 3, 4, 6), "multiple of 4"),
        (VGGConditioner(3, 2, **TINY_VGG), (1, 3, 8, 6), "multiple of 4"),
        (VGGConditioner(3, 2, **TINY_VGG), (1, 1, 8, 8), "(B, 3, h, w)"),
    ],
)
def test_bad_sizes_raise_with_a_fix(net: nn.Module, shape: tuple[int, ...], needle: str) -> None:
    with pytest.raises(ValueError) as info:
        net(torch.randn(shape))
    assert needle in str(info.value)
    if shape[1] == 3:
        assert f"{shape[2]} x {shape[3]}" in str(info.value) and "pad" in str(info.value)


@pytest.mark.parametrize("make", [lambda: _sr(2, 2), lambda: VGGConditioner(3, 2, **TINY_VGG)])
@pytest.mark.parametrize("train", [True, False])
def test_samples_do_not_influence_each_other(make, train: bool) -> None:
    net = make().train(train)
    x = torch.randn(2, 3, 8, 8)
    y = x.clone()
    y[1] = 10 * torch.randn_like(y[1]) + 3
    for a, b in zip(net(x), net(y), strict=True):
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-6)
        assert not torch.allclose(a[1], b[1])


def test_parameter_counts_follow_the_architecture() -> None:
    with torch.device("meta"):  # the full-size nets are counted, never run
        trunk = RRDBNet(3, features=128, blocks=16, growth=32)
        cnf = SRConditioner(3, 2, 2, features=128, blocks=16, growth=32)
        baseline = SRConditioner(3, 2, 2, features=128, blocks=16, growth=55)
    assert _count(trunk) == _rrdbnet_params(3, 128, 16, 32)
    assert _count(cnf) == _rrdbnet_params(3, 128, 16, 32) + 2 * _conv(128, 128, k=2)
    assert _count(baseline) == _rrdbnet_params(3, 128, 16, 55) + 2 * _conv(128, 128, k=2)
    assert _count(baseline) > _count(cnf)
    assert _count(VGGConditioner(3, 2, (32, 64, 128))) == _vgg_params(3, [32, 64, 128])
    assert _count(VGGConditioner(3, 3, (32, 64, 128))) == _vgg_params(3, [32, 64, 128, 128])


@pytest.mark.parametrize("make", [lambda: _sr(2, 2), lambda: VGGConditioner(3, 2, **TINY_VGG)])
def test_gradients_reach_every_parameter(make) -> None:
    net = make()
    out = net(torch.randn(2, 3, 8, 8))
    sum((o * torch.randn_like(o)).sum() for o in out).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("make", [lambda: _sr(2, 2), lambda: VGGConditioner(3, 2, **TINY_VGG)])
def test_bf16_autocast(make) -> None:
    net = make()
    x = torch.randn(2, 3, 8, 8)
    reference = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    for r, o in zip(reference, out, strict=True):
        assert o.shape == r.shape and torch.isfinite(o).all()
        torch.testing.assert_close(o.float(), r, rtol=0.1, atol=0.1)


@pytest.mark.parametrize("make", [lambda: _sr(2, 2), lambda: VGGConditioner(3, 2, **TINY_VGG)])
def test_channels_last_matches_contiguous(make) -> None:
    net = make()
    x = torch.randn(2, 3, 8, 8)
    reference = net(x)
    net = net.to(memory_format=torch.channels_last)
    for r, o in zip(reference, net(x.to(memory_format=torch.channels_last)), strict=True):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


def test_registry() -> None:
    assert CONDITIONERS == {"rrdb": SRConditioner, "vgg": VGGConditioner}
    assert CONDITIONERS["rrdb"](num_levels=1, **TINY_SR).level_channels == [8]
    assert CONDITIONERS["vgg"](num_levels=1, **TINY_VGG).level_channels == [6]

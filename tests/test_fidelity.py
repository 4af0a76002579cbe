"""PSNR, SSIM, RMSE and the detail ratio on small images with values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from msflow.errors import ShapeError
from msflow.metrics.fidelity import detail_ratio, psnr, rmse, ssim


def test_psnr_and_rmse_of_a_constant_offset() -> None:
    x = torch.full((3, 8, 8), 100, dtype=torch.uint8)
    y = x + 5
    assert rmse(x, y) == pytest.approx(5.0)
    assert psnr(x, y) == pytest.approx(10 * math.log10(255**2 / 25))
    assert psnr(x, x) == math.inf


def test_ssim_is_one_for_identical_images_and_lower_for_noise() -> None:
    gen = torch.Generator().manual_seed(0)
    x = (torch.arange(16)[None, None, :] * 8 + torch.arange(16)[None, :, None] * 4).expand(3, -1, -1).to(torch.uint8)
    noisy = (x.int() + torch.randint(-40, 41, x.shape, generator=gen)).clamp(0, 255).to(torch.uint8)
    assert ssim(x, x) == pytest.approx(1.0)
    assert ssim(noisy, x) < 0.9


def test_detail_ratio_is_one_for_the_truth_and_below_one_when_blurred() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (3, 16, 16), generator=gen, dtype=torch.uint8)
    blurred = torch.nn.functional.avg_pool2d(x[None].float(), 3, 1, 1, count_include_pad=False)[0]
    assert detail_ratio(x, x) == pytest.approx(1.0)
    assert detail_ratio(blurred.round().to(torch.uint8), x) < 0.5


def test_detail_ratio_of_a_flat_reference_is_refused() -> None:
    flat = torch.zeros(1, 8, 8, dtype=torch.uint8)
    with pytest.raises(ShapeError, match="constant"):
        detail_ratio(flat, flat)

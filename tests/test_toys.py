"""2-D toy densities with the balanced flow (paper 004, Figures 3 and 7): samplers, fit, figure, ``msflow toy``."""

from __future__ import annotations

import copy
import functools
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from sklearn.datasets import make_moons
from torch import Tensor

from msflow.analysis import TOYS, fit_toy, toy_figure, toy_flow, toy_log_likelihood, toy_log_prob
from msflow.analysis.toys import RING_RADII, density_grid, intermediates
from msflow.cli import main
from msflow.core import FlowSequential
from msflow.distributions import standard_normal_log_prob
from msflow.errors import MsflowError

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TINY = {"blocks": 2, "hidden": 32, "batch_size": 256}
STEPS = {"moons": 150, "rings": 150, "checkerboard": 300}  # the board's squares need a little longer


def draw(name: str, n: int = 20_000, seed: int = 0) -> Tensor:
    """``n`` points of toy ``name`` as ``(n, 2)`` float64."""
    return TOYS[name](n, generator=torch.Generator().manual_seed(seed)).reshape(n, 2).double()


@pytest.fixture(scope="module")
def trained() -> Callable[[str], FlowSequential]:
    """``trained(name)``: a tiny flow fitted briefly to the toy, fitted once per module (tests must not modify it)."""
    return functools.cache(lambda name: fit_toy(name, steps=STEPS[name], lr=1e-2, **TINY)[0])


# ----------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("name", sorted(TOYS))
def test_samplers_give_seeded_points_as_one_pixel_images(name: str) -> None:
    x = TOYS[name](1000, generator=torch.Generator().manual_seed(3))
    assert x.shape == (1000, 2, 1, 1) and x.dtype == torch.float32
    assert torch.equal(x, TOYS[name](1000, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(x, TOYS[name](1000, generator=torch.Generator().manual_seed(4)))
    # The standardised scale: the plane's [-4, 4] square, up to the noise of the rims.
    assert 3.5 < x.abs().max() < 4.6


def test_checkerboard_fills_the_black_squares_only_and_evenly() -> None:
    xy = draw("checkerboard")
    assert xy.min() >= -4 and xy.max() <= 4
    col, row = ((xy + 4) // 2).long().clamp(max=3).unbind(1)
    assert bool(((col + row) % 2 == 0).all())
    counts = torch.bincount(4 * row + col, minlength=16).double() / len(xy)
    black = torch.tensor([(c + r) % 2 == 0 for r in range(4) for c in range(4)])
    assert torch.allclose(counts[black], torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.01)
    # Uniform inside a square: the mean offset from its corner is the centre (1, 1).
    offset = xy + 4 - 2 * torch.stack([col, row], 1)
    assert torch.allclose(offset.mean(0), torch.ones(2, dtype=torch.float64), atol=0.02)


def test_ring_radii_cluster_at_the_ring_radii_with_mass_along_their_length() -> None:
    xy = draw("rings")
    r = xy.norm(dim=1)
    radii = torch.tensor(RING_RADII, dtype=torch.float64)
    gap, ring = (r[:, None] - radii).abs().min(dim=1)
    assert gap.max() < 0.45 and gap.mean() < 0.08  # nothing between the rings
    share = torch.bincount(ring, minlength=len(radii)).double() / len(xy)
    assert torch.allclose(share, radii / radii.sum(), atol=0.01)
    theta = torch.atan2(xy[:, 1], xy[:, 0])
    assert theta.cos().mean().abs() < 0.02 and theta.sin().mean().abs() < 0.02  # no preferred direction


def test_moons_are_two_half_circles_matching_scikit_learn() -> None:
    xy = draw("moons") / 2.5 + torch.tensor([0.5, 0.25], dtype=torch.float64)  # back to make_moons' frame
    to_upper = ((xy).norm(dim=1) - 1).abs()
    to_lower = ((xy - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1) - 1).abs()
    upper = to_upper < to_lower
    assert abs(upper.double().mean() - 0.5) < 0.02
    assert torch.minimum(to_upper, to_lower).mean() < 0.1
    # Two clusters: the upper moon lies above the lower one on average, by far more than the noise.
    assert xy[upper, 1].mean() - xy[~upper, 1].mean() > 0.5
    ref = torch.from_numpy(make_moons(20_000, noise=0.1, random_state=0)[0])
    assert torch.allclose(xy.mean(0), ref.mean(0), atol=0.02)
    assert torch.allclose(torch.cov(xy.T), torch.cov(ref.T), atol=0.03)


def test_unknown_toy_is_a_user_error_naming_the_choices() -> None:
    with pytest.raises(MsflowError, match="checkerboard, moons, rings"):
        fit_toy("spiral", steps=1)
    with pytest.raises(MsflowError, match="lr > 0"):
        fit_toy("moons", steps=1, lr=-1.0)


# ----------------------------------------------------------------------------- the flow


def test_toy_flow_starts_as_the_identity_with_a_standard_normal_density() -> None:
    x = draw("rings", 64).float().reshape(64, 2, 1, 1)
    flow = toy_flow(blocks=3, hidden=8)
    z, logdet = flow(x)
    assert len(flow) == 3 and torch.allclose(z, x, atol=1e-5) and logdet.abs().max() < 1e-4
    assert torch.allclose(toy_log_prob(flow, x), standard_normal_log_prob(x), atol=1e-4)


def test_log_prob_is_the_change_of_variables_with_the_autograd_jacobian(trained: Callable) -> None:
    flow = copy.deepcopy(trained("moons")).double()
    x = draw("moons", 6, seed=1).reshape(6, 2, 1, 1)

    def f(v: Tensor) -> Tensor:
        return flow(v.reshape(1, 2, 1, 1))[0].reshape(2)

    jacobians = [torch.autograd.functional.jacobian(f, v) for v in x.reshape(6, 2)]
    want = standard_normal_log_prob(flow(x)[0]) + torch.stack([torch.linalg.slogdet(j)[1] for j in jacobians])
    assert torch.allclose(toy_log_prob(flow, x), want, atol=1e-8)
    hs = intermediates(flow, x)
    assert len(hs) == 3 and torch.allclose(hs[0], x.reshape(6, 2)) and torch.allclose(hs[-1], flow(x)[0].reshape(6, 2))


@pytest.mark.parametrize("name", sorted(TOYS))
def test_learned_density_integrates_to_one(trained: Callable, name: str) -> None:
    extent, size = 12.0, 400
    p = density_grid(trained(name), extent, size).double()
    assert abs(p.sum().item() * (2 * extent / size) ** 2 - 1) < 0.05
    # ...and it is no longer the standard normal it started as.
    assert abs(p.max().item() - 1 / (2 * math.pi)) > 0.02


@pytest.mark.parametrize("name", sorted(TOYS))
def test_training_raises_the_held_out_likelihood_by_a_real_margin(trained: Callable, name: str) -> None:
    before, _ = toy_log_likelihood(fit_toy(name, steps=0, **TINY)[0], name, n=4000)
    after, stderr = toy_log_likelihood(trained(name), name, n=4000)
    assert after > before + 0.5 and stderr < 0.05, (before, after)


def test_checkerboard_density_learns_the_board(trained: Callable) -> None:
    """More mass on the black squares than on the white ones, which the initial Gaussian cannot have."""
    p = density_grid(trained("checkerboard"), 4.0, 8)  # 8 x 8 grid: 4 points per square
    col, row = torch.meshgrid(torch.arange(8) // 2, torch.arange(8) // 2, indexing="xy")
    black = (col + row) % 2 == 0
    assert p[black].mean() > 1.5 * p[~black].mean()


def test_fit_is_reproducible_and_leaves_the_global_random_state_alone() -> None:
    state = torch.get_rng_state()
    _, a = fit_toy("rings", steps=5, seed=7, **TINY)
    _, b = fit_toy("rings", steps=5, seed=7, **TINY)
    _, c = fit_toy("rings", steps=5, seed=8, **TINY)
    assert a == b and a != c and len(a) == 5 and all(map(math.isfinite, a))
    assert torch.equal(torch.get_rng_state(), state)


# ----------------------------------------------------------------------------- the figure


def test_figure_has_data_each_block_and_the_density(trained: Callable, tmp_path: Path) -> None:
    flow = trained("rings")
    path = tmp_path / "fig.png"
    fig = toy_figure(flow, TOYS["rings"](500), path, grid=50)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == len(flow) + 2
    assert titles[0].startswith("data, +-") and titles[-1] == "density"
    assert all(t.startswith(f"block {i}, ") and t.endswith("x") for i, t in enumerate(titles[1:-1], 1))
    width, height = Image.open(path).size
    assert width > 3 * height  # one row of L + 2 square panels
    heat = fig.axes[-1].get_images()[0].get_array()
    assert heat.shape == (50, 50) and heat.min() >= 0 and heat.max() > 0


# ----------------------------------------------------------------------------- msflow toy


def test_cli_trains_prints_the_likelihood_and_writes_the_figure(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "toy.png"
    assert main(["toy", "rings", "--blocks", "2", "--steps", "20", "--seed", "1", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "held-out log-likelihood" in text and "nats" in text and str(out) in text
    value = float(text.split("held-out log-likelihood: ")[1].split()[0])
    assert -10 < value < 0
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] > 3 * img.size[1]


def test_cli_bad_name_exits_2_listing_the_choices(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "msflow.cli", "toy", "spiral", "-o", str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert "invalid choice: 'spiral'" in proc.stderr and all(name in proc.stderr for name in TOYS)
    assert not (tmp_path / "x.png").exists()

r"""2-D toy densities with the balanced flow (Liao & He, paper 004, Figures 3 and 7).

A point of the plane is a ``(2, 1, 1)`` image, so the balanced blocks of section 4.1,
``f_l = f_act . f_aff . f_conv`` with stride 1, act on it unchanged. The flow
``f = f_L o ... o f_1`` maps data to a standard-normal latent and the density is the change
of variables

.. math::

    \log p(x) = \log \mathcal N(f(x); 0, I) + \sum_{l=1}^{L} \log|\det J_{f_l}(h_{l-1})|,
    \qquad h_0 = x, \quad h_l = f_l(h_{l-1}).

:func:`toy_figure` draws the data ``h_0``, every intermediate ``h_l`` (each block stretches,
then contracts the plane; a panel notes its extent as a multiple of the data's, the paper's
"N x") and ``p(x)`` on a grid.

Example:
    >>> import torch
    >>> flow, losses = fit_toy("moons", blocks=2, steps=3, hidden=8, batch_size=64)
    >>> x = TOYS["moons"](5, generator=torch.Generator().manual_seed(0))
    >>> x.shape, toy_log_prob(flow, x).shape, len(losses)
    (torch.Size([5, 2, 1, 1]), torch.Size([5]), 3)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from tqdm.auto import tqdm

from msflow._io import atomic_write
from msflow.core import FlowSequential
from msflow.distributions import standard_normal_log_prob
from msflow.errors import MsflowError
from msflow.models.balanced import balanced_block
from msflow.nn.subnets import conv_subnet
from msflow.viz import figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Sampler = Callable[..., Tensor]
"""``sampler(n, generator=None) -> (n, 2, 1, 1)`` float32 points."""

RING_RADII = (1.0, 2.0, 3.0, 4.0)
HELD_OUT_SEED = 1_000_003
"""Offset of the held-out stream's seed, so it never replays the training minibatches."""


def _as_points(xy: Tensor) -> Tensor:
    return xy.reshape(-1, 2, 1, 1).float()


def moons(n: int, generator: torch.Generator | None = None, noise: float = 0.1) -> Tensor:
    """Two interleaved half circles (scikit-learn's ``make_moons`` layout), centred and scaled by 2.5.

    The upper moon is ``(cos t, sin t)``, the lower ``(1 - cos t, 1/2 - sin t)``, ``t ~ U(0, pi)``,
    each with probability 1/2, plus ``noise * N(0, I)``; the result spans about [-4, 4] x [-2, 2].
    """
    t = math.pi * torch.rand(n, generator=generator)
    lower = torch.rand(n, generator=generator) < 0.5
    x = torch.where(lower, 1 - t.cos(), t.cos())
    y = torch.where(lower, 0.5 - t.sin(), t.sin())
    xy = torch.stack([x, y], dim=1) + noise * torch.randn(n, 2, generator=generator)
    return _as_points(2.5 * (xy - torch.tensor([0.5, 0.25])))


def rings(n: int, generator: torch.Generator | None = None, noise: float = 0.08) -> Tensor:
    """Concentric circles of radii :data:`RING_RADII`, uniform along their length, radial noise ``noise``."""
    radii = torch.tensor(RING_RADII)
    ring = torch.multinomial(radii / radii.sum(), n, replacement=True, generator=generator)
    theta = 2 * math.pi * torch.rand(n, generator=generator)
    r = radii[ring] + noise * torch.randn(n, generator=generator)
    return _as_points(torch.stack([r * theta.cos(), r * theta.sin()], dim=1))


def checkerboard(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform on the 8 black squares of a 4 x 4 board of 2 x 2 squares covering [-4, 4]^2.

    Square ``(col, row)``, counted from the bottom left, is black when ``col + row`` is even;
    the true density is ``1/32`` there, so the best log-likelihood is ``-log 32 = -3.466`` nats.
    """
    cell = torch.randint(0, 8, (n,), generator=generator)
    row = cell // 2
    col = 2 * (cell % 2) + row % 2
    u = torch.rand(n, 2, generator=generator)
    return _as_points(torch.stack([2 * (col + u[:, 0]), 2 * (row + u[:, 1])], dim=1) - 4)


TOYS: dict[str, Sampler] = {"moons": moons, "rings": rings, "checkerboard": checkerboard}


def get_toy(name: str) -> Sampler:
    """The sampler called ``name``; an unknown name raises :class:`MsflowError` listing the choices."""
    if name not in TOYS:
        raise MsflowError(f"unknown toy {name!r}; choose one of {', '.join(sorted(TOYS))}")
    return TOYS[name]


def toy_flow(blocks: int = 8, hidden: int = 64, beta: float = 0.9, mixtures: int = 3, bins: int = 16) -> FlowSequential:
    """``blocks`` balanced blocks on ``(2, 1, 1)`` points, stride 1, 1x1 coupling nets; the identity at init.

    ``flow[l]`` is block ``l + 1`` (itself a :class:`FlowSequential` of conv, coupling, activation).
    """
    if blocks < 1:
        raise MsflowError(f"a toy flow needs at least one block, got {blocks}")
    subnet = conv_subnet(hidden, kernel_size=1)
    options = {"beta": beta, "mixtures": mixtures, "bins": bins}
    return FlowSequential(*(FlowSequential(*balanced_block(2, 1, subnet, **options)) for _ in range(blocks)))


def toy_log_prob(flow: FlowSequential, x: Tensor) -> Tensor:
    """``log p(x) = log N(f(x); 0, I) + log|det J_f(x)|`` in nats, shape ``(B,)``."""
    z, logdet = flow(x)
    return standard_normal_log_prob(z) + logdet


def intermediates(flow: FlowSequential, x: Tensor) -> list[Tensor]:
    """``[h_0, h_1, ..., h_L]`` as ``(B, 2)`` tensors: ``x`` and its image after each block."""
    hs = [x]
    with torch.no_grad():
        for block in flow:
            hs.append(block(hs[-1])[0])
    return [h.reshape(-1, 2) for h in hs]


def fit_toy(
    name: str,
    blocks: int = 8,
    steps: int = 2000,
    lr: float = 1e-2,
    seed: int = 0,
    batch_size: int = 512,
    hidden: int = 64,
    progress: bool = False,
) -> tuple[FlowSequential, list[float]]:
    """Fit :func:`toy_flow` to the toy ``name`` by maximum likelihood; returns ``(flow, losses)``.

    Every step draws a fresh minibatch, so there is no training set to overfit. Adamax (the
    paper's optimiser) with the learning rate decaying exponentially from ``lr`` to ``lr / 10``;
    gradients are clipped to norm 10 and a step with a non-finite loss is skipped. ``losses``
    holds the minibatch negative log-likelihood (nats) of every step. The parameters start
    from ``seed`` without touching the global random state.
    """
    sampler = get_toy(name)
    if not (lr > 0 and steps >= 0 and batch_size >= 1):
        raise MsflowError(f"need lr > 0, steps >= 0 and batch_size >= 1, got lr={lr}, steps={steps}, {batch_size=}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        flow = toy_flow(blocks, hidden)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adamax(flow.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.1 ** (1 / max(steps, 1)))
    losses: list[float] = []
    for _ in tqdm(range(steps), desc=f"toy {name}", disable=not progress, leave=False):
        loss = -toy_log_prob(flow, sampler(batch_size, generator=generator)).mean()
        optimizer.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
            optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if len(losses) >= 50 and not any(math.isfinite(x) for x in losses[-50:]):
            raise MsflowError(f"toy {name}: 50 steps in a row had a non-finite loss; lower --lr (now {lr:g})")
    return flow.eval(), losses


@torch.no_grad()
def toy_log_likelihood(flow: FlowSequential, name: str, n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Mean and standard error of ``log p`` (nats) over ``n`` fresh samples (seed ``HELD_OUT_SEED + seed``)."""
    x = get_toy(name)(n, generator=torch.Generator().manual_seed(HELD_OUT_SEED + seed))
    log_p = torch.cat([toy_log_prob(flow, chunk) for chunk in x.split(4096)]).double()
    return log_p.mean().item(), (log_p.std() / math.sqrt(n)).item()


@torch.no_grad()
def density_grid(flow: FlowSequential, extent: float, size: int = 200) -> Tensor:
    """``p(x)`` at the centres of a ``size x size`` grid on ``[-extent, extent]^2``; row ``i`` is the ``i``-th ``y``."""
    centres = (torch.arange(size) + 0.5) / size * 2 * extent - extent
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    points = torch.stack([x, y], dim=-1).reshape(-1, 2)
    log_p = torch.cat([toy_log_prob(flow, _as_points(c)) for c in points.split(8192)])
    return log_p.exp().reshape(size, size)


def _extent(h: Tensor) -> float:
    """Half-width of a square view holding the points, ignoring the farthest 0.1 %."""
    return 1.1 * torch.quantile(h.abs().max(dim=1).values, 0.999).item()


def toy_figure(flow: FlowSequential, data: Tensor, path: str | Path, points: int = 2000, grid: int = 200) -> Figure:
    """Figure 7 of paper 004: the data, the data after each block, and the learned density.

    ``L + 2`` square panels in a row. Points are coloured by their angle in the data panel, so
    the deformation can be followed. The data panel's title gives its half-width, each
    intermediate panel's its half-width as a multiple of that one. The density ``exp(log p)``
    is drawn on the data panel's square.

    Args:
        flow: a toy flow (a :class:`FlowSequential` of blocks).
        data: ``(N, 2, 1, 1)`` or ``(N, 2)`` samples; the first ``points`` are drawn.
        path: the PNG to write (atomically).
        points: points per scatter panel.
        grid: density grid resolution per side.

    Returns:
        The matplotlib figure (Agg canvas, no pyplot state), with ``L + 2`` axes.
    """
    hs = intermediates(flow, _as_points(data[:points]))
    base = _extent(hs[0])
    colour = torch.atan2(hs[0][:, 1], hs[0][:, 0]).numpy()
    fig = figure("plotting toy flows", figsize=(1.9 * (len(hs) + 1), 2.1), layout="constrained")
    axes = fig.subplots(1, len(hs) + 1)
    for i, (ax, h) in enumerate(zip(axes[:-1], hs, strict=True)):
        r = max(_extent(h), 1e-6)
        ax.scatter(h[:, 0].numpy(), h[:, 1].numpy(), s=1, c=colour, cmap="hsv", linewidths=0, rasterized=True)
        ax.set(xlim=(-r, r), ylim=(-r, r), aspect="equal", xticks=[], yticks=[])
        ax.set_title(f"data, +-{base:.2g}" if i == 0 else f"block {i}, {r / base:.2g}x", fontsize=8)
    p = density_grid(flow, base, grid).numpy()
    axes[-1].imshow(p, origin="lower", extent=(-base, base, -base, base), cmap="magma", interpolation="nearest")
    axes[-1].set(xticks=[], yticks=[])
    axes[-1].set_title("density", fontsize=8)
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return fig


__all__ = [
    "TOYS",
    "checkerboard",
    "density_grid",
    "fit_toy",
    "get_toy",
    "intermediates",
    "moons",
    "rings",
    "toy_figure",
    "toy_flow",
    "toy_log_likelihood",
    "toy_log_prob",
]

r"""Conditional flow matching: simulation-free training of the vector fields of CNF blocks.

Maximum likelihood trains a :class:`~msflow.transforms.CNF` through its ODE solve (tens of
function evaluations forward and as many again backward). Flow matching (Lipman et al. 2023;
Liu et al., rectified flow) regresses the field onto the velocity of a fixed path between a
data point ``x_0`` and a base sample ``x_1 = \sigma \epsilon``, :math:`\epsilon \sim N(0, I)`:

.. math::

    x_\tau = (1 - \tfrac{\tau}{L})\, x_0 + \tfrac{\tau}{L}\, x_1, \qquad
    u = \frac{d x_\tau}{d\tau} = \frac{x_1 - x_0}{L}, \qquad
    \mathcal{L} = \mathbb{E}_{\tau, \epsilon} \operatorname{mean}_d
        \big(f(x_\tau, \tau \mid c) - u\big)^2

with one network evaluation per block and no solver. Its minimiser is the marginal velocity
field, whose flow carries the data distribution exactly onto ``N(0, \sigma^2 I)``; the density
it defines is still evaluated by the ODE (bits/dim exactly as for a maximum-likelihood model).

A level of ``K`` blocks with end times ``T_1..T_K`` is one ODE on ``[0, L]``, ``L = \sum T_k``:
block ``k`` owns ``[\sum_{j<k} T_j, \sum_{j\le k} T_j)`` and sees its local time. Each block
is trained at one uniform time of its own segment per image (stratified over blocks), so every
field gets a gradient at every step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from msflow.core import require_cond
from msflow.nn.subnets import run_subnet
from msflow.transforms.cnf import CNF


def flow_matching_loss(
    blocks: Sequence[CNF],
    x0: Tensor,
    cond: Tensor | None = None,
    noise_std: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Per-sample flow-matching loss ``(B,)`` of a chain of CNF blocks that maps ``x0`` to ``N(0, noise_std^2 I)``.

    Args:
        blocks: the CNF blocks in forward (data -> latent) order.
        x0: data in the blocks' input space, ``(B, ...)``.
        cond: the condition the blocks' fields take (``None`` for unconditional blocks).
        noise_std: standard deviation ``\sigma`` of the base the chain should reach.
        generator: source of ``\epsilon`` and ``\tau`` (on the CPU; moved to ``x0``'s device).

    Returns:
        The sum over blocks of ``mean_d (f - u)^2``, one value per sample.

    Example:
        >>> import torch
        >>> from msflow.nn.odefunc import ConvVectorField
        >>> blocks = [CNF(ConvVectorField(1, hidden=(4,))) for _ in range(2)]
        >>> flow_matching_loss(blocks, torch.randn(3, 1, 4, 4)).shape
        torch.Size([3])
    """
    if not blocks:
        raise ValueError("flow matching needs at least one CNF block")
    if not all(isinstance(b, CNF) for b in blocks):
        names = sorted({type(b).__name__ for b in blocks if not isinstance(b, CNF)})
        raise TypeError(f"flow matching trains CNF blocks only, got {names}; use a CNF density (density=cnf)")
    batch = x0.shape[0]
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    x1 = noise_std * eps
    length = sum(b.end_time for b in blocks)
    velocity = (x1 - x0) / length
    view = (batch,) + (1,) * (x0.dim() - 1)
    start, loss = 0.0, x0.new_zeros(batch)
    for block in blocks:
        local = torch.rand(batch, generator=generator, dtype=x0.dtype).to(x0.device) * block.end_time
        frac = ((start + local) / length).reshape(view)
        x_t = (1 - frac) * x0 + frac * x1
        c = require_cond(block, cond) if block.conditional else None
        t = local.reshape(view)
        predicted = run_subnet(lambda h, t=t, c=c, b=block: b.field(t, h, c), x_t)
        loss = loss + (predicted - velocity).pow(2).flatten(1).mean(1)
        start += block.end_time
    return loss


__all__ = ["flow_matching_loss"]

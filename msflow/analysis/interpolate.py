r"""Interpolation in the prior's latent space, kept in high-density regions (paper 001, supplement E).

A multi-scale flow with split priors maps an image to latents ``l = (l_1, ..., l_n)``, fine to
coarse: the halves each level factors out, *before* their prior standardises them, i.e. the
space the mAR prior models (multimodal, unlike the N(0, I) ``eps``). A straight line from
``l^A`` to ``l^B`` can cross low-density regions. Our copy of the paper lacks its eq. 11, so
msflow optimises this objective over the interior points ``l^1 .. l^{K-1}`` of a path with
``K + 1`` points, ``l^0 = l^A`` and ``l^K = l^B`` fixed, and linear-path points
``\bar l^k = (1 - t_k) l^A + t_k l^B``, ``t_k = k / K``:

.. math::

    J = \frac{1}{K-1}\sum_{k=1}^{K-1} \frac{-\log p_\phi(l^k)}{D \log 2}
      + \lambda_1 \frac{1}{K-1}\sum_{k=1}^{K-1} \frac{\|l^k - \bar l^k\|^2}{\|l^B - l^A\|^2}
      + \lambda_2 \Big(K \sum_{k=0}^{K-1} \frac{\|l^{k+1} - l^k\|^2}{\|l^B - l^A\|^2} - 1\Big)

The first term is the *latent bits/dim*: the prior's negative log-density
``log p_phi(l) = sum_i log p(l_i | r_i)`` (each level's prior given the kept half ``r_i``
decoded from the coarser latents) in bits per dimension. The first penalty keeps each
interpolant near its point on the line; the second is the path's mean squared step relative to
the straight line's (>= 0, and 0 exactly for the evenly spaced line, by Cauchy-Schwarz), so the
path stays smooth and evenly spaced. Both penalties are 0 on the linear path and dimensionless,
so the lambdas need no rescaling across image sizes (the paper's stable range is
``lambda_1 ~ lambda_2 in [0.2, 0.5]``). Adamax (lr 5e-2, ~100 iterations) as in the paper; the
best iterate is returned, so the optimised path's objective, and therefore its mean interior
latent bits/dim, is never above the linear path's.

Why the prior's density and not the image density ``p(v)`` of the decoded ``v = g(l)``: a
continuous density on [0, 1)^D is unbounded near the edges under logit preprocessing (its
log-det ``-log(s(1 - s))`` grows without limit), so optimising ``p(v)`` saturates pixels
and drives "bits/dim" below zero (seen on MNIST-5k: -5.7 after 30 iterations) while the images
get worse. The result reports, for both paths, the latent bits/dim and the ordinary bits/dim of
the quantized images under the model (uniform dequantization, the same seeded noise for both),
the number to compare.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from msflow.core import pending_initialization
from msflow.distributions import standard_normal_log_prob
from msflow.models.multiscale import MultiScaleFlow, split_kept
from msflow.viz import save_grid


@dataclass
class InterpolationResult:
    """Linear and optimised interpolation paths between two images, endpoints included.

    Attributes:
        t: ``(steps,)`` positions on the path, 0 to 1.
        linear: uint8 ``(steps, C, H, W)`` images decoded from the straight latent line.
        optimised: uint8 ``(steps, C, H, W)`` images of the optimised path.
        bpd_linear: ``(steps,)`` bits/dim of each linear interpolant's uint8 image under the model
            (uniform dequantization with the same seeded noise for both paths).
        bpd_optimised: ``(steps,)`` the same for the optimised path.
        latent_bpd_linear: ``(steps,)`` latent bits/dim (the objective's density term) on the linear path.
        latent_bpd_optimised: ``(steps,)`` the same for the optimised path.
        objective: ``J`` at every iteration (entry 0 is the linear path).
        lambdas: ``(lambda_1, lambda_2)``.
    """

    t: Tensor
    linear: Tensor
    optimised: Tensor
    bpd_linear: Tensor
    bpd_optimised: Tensor
    latent_bpd_linear: Tensor
    latent_bpd_optimised: Tensor
    objective: list[float] = field(default_factory=list)
    lambdas: tuple[float, float] = (0.3, 0.3)

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers: per-point (latent) bits/dim of both paths, interior means, objective start and best."""
        inner = slice(1, -1)
        return {
            "t": self.t.tolist(),
            "bpd_linear": self.bpd_linear.tolist(),
            "bpd_optimised": self.bpd_optimised.tolist(),
            "mean_interior_bpd_linear": float(self.bpd_linear[inner].mean()),
            "mean_interior_bpd_optimised": float(self.bpd_optimised[inner].mean()),
            "latent_bpd_linear": self.latent_bpd_linear.tolist(),
            "latent_bpd_optimised": self.latent_bpd_optimised.tolist(),
            "mean_interior_latent_bpd_linear": float(self.latent_bpd_linear[inner].mean()),
            "mean_interior_latent_bpd_optimised": float(self.latent_bpd_optimised[inner].mean()),
            "objective_start": self.objective[0],
            "objective_best": min(self.objective),
            "iterations": len(self.objective) - 1,
            "lambdas": list(self.lambdas),
        }


def _repeat_cond(cond: Any, n: int) -> Any:
    """One condition ``(1, ...)`` for every point of a batch of ``n``."""
    return cond.expand(n, *cond.shape[1:]) if isinstance(cond, Tensor) and cond.shape[0] == 1 else cond


def _check_ready(model: MultiScaleFlow) -> None:
    module = pending_initialization(model)
    if module is not None:
        raise ValueError(
            f"{type(module).__name__} has not been initialised: run the model on a batch of data "
            "first (ActNorm's data-dependent init) or load a trained model"
        )
    for i, level in enumerate(model.levels):
        if not hasattr(level, "blocks") or len(level.blocks) < 1:
            raise ValueError(f"level {i} is not a FlowSequential ending in its split prior")


def encode_prior_space(model: MultiScaleFlow, v: Tensor, cond: Any = None) -> list[Tensor]:
    """Continuous images ``v`` -> latents ``l_i`` before each level's prior, fine to coarse."""
    _check_ready(model)
    h, _ = model.preprocess(v)
    ls = []
    for level, keep, feat in zip(model.levels, model.keep, model.level_features(cond), strict=True):
        for block in level.blocks[:-1]:
            h, _ = block(h, feat)
        h, latent = split_kept(h, keep)
        ls.append(latent)
    return ls


@dataclass(frozen=True)
class PriorSpaceDecoding:
    """What :func:`decode_prior_space` returns: images and two log-densities, each ``(B,)`` in nats."""

    v: Tensor
    log_prior: Tensor  # sum_i log p(l_i | r_i): the priors' density of the latents
    log_p: Tensor  # log p(v): the model's density of the decoded images, every log-det included


def decode_prior_space(model: MultiScaleFlow, ls: Sequence[Tensor], cond: Any = None) -> PriorSpaceDecoding:
    """Latents ``l_i`` (fine to coarse) -> images and exact densities, in one differentiable pass.

    ``log p(v) = log p_phi(l) - log|det dv/dl|`` with ``log p_phi(l) = sum_i [log N(eps_i; 0, I)
    + log|det d eps_i / d l_i|]``, each prior scoring ``l_i`` given the kept half ``r_i`` decoded
    from the coarser levels.
    """
    feats = model.level_features(cond)
    h, log_prior, log_det = None, 0.0, 0.0
    for i in reversed(range(len(model.levels))):
        level, keep = model.levels[i], model.keep[i]
        h = ls[i] if h is None else torch.cat([h, ls[i]], dim=1)
        eps, ld = level.blocks[-1](h, feats[i])
        log_prior = log_prior + standard_normal_log_prob(eps[:, keep:]) + ld
        for block in reversed(level.blocks[:-1]):
            h, ld = block.inverse(h, feats[i])
            log_det = log_det + ld
    v, ld = model.preprocess.inverse(h)
    return PriorSpaceDecoding(v, log_prior, log_prior - log_det - ld)


def latent_bits_per_dim(model: MultiScaleFlow, log_prior: Tensor) -> Tensor:
    """``-log p_phi(l) / (D log 2)``: the priors' negative log-density of the latents in bits per dimension."""
    return -log_prior / (model.num_dims * math.log(2.0))


def interpolation_objective(
    model: MultiScaleFlow,
    interior: Sequence[Tensor],
    ends: tuple[Sequence[Tensor], Sequence[Tensor]],
    t: Tensor,
    lambdas: tuple[float, float],
    cond: Any = None,
) -> tuple[Tensor, Tensor]:
    """``(J, latent bits/dim of the interior points)`` of the module docstring's objective.

    ``interior[i]`` is level ``i``'s ``(K - 1, C_i, H_i, W_i)`` interior latents; ``ends`` the
    ``(1, ...)`` latents of both endpoints per level; ``t`` the ``K + 1`` path positions.
    """
    lam_prox, lam_smooth = lambdas
    inner_t = t[1:-1].view(-1, 1, 1, 1)
    prox, steps_sq, span = 0.0, 0.0, 0.0
    for l_k, l_a, l_b in zip(interior, *ends, strict=True):
        line = (1 - inner_t) * l_a + inner_t * l_b
        prox = prox + (l_k - line).pow(2).flatten(1).sum(1)
        path = torch.cat([l_a, l_k, l_b])
        steps_sq = steps_sq + (path[1:] - path[:-1]).pow(2).sum()
        span = span + (l_b - l_a).pow(2).sum()
    span = span.clamp_min(torch.finfo(span.dtype).tiny)
    decoded = decode_prior_space(model, interior, _repeat_cond(cond, interior[0].shape[0]))
    bpd = latent_bits_per_dim(model, decoded.log_prior)
    intervals = t.numel() - 1
    objective = bpd.mean() + lam_prox * (prox / span).mean() + lam_smooth * (intervals * steps_sq / span - 1)
    return objective, bpd


def _path_images(model: MultiScaleFlow, path: Sequence[Tensor], cond: Any) -> tuple[Tensor, Tensor, Tensor]:
    """uint8 images of a path, their bits/dim (fixed dequantization noise) and the latent bits/dim."""
    cond = _repeat_cond(cond, path[0].shape[0])
    with torch.no_grad():
        decoded = decode_prior_space(model, path, cond)
        images = model.dequantizer.quantize(decoded.v)
        bpd = model.bits_per_dim(images, cond, generator=torch.Generator(images.device).manual_seed(0))
    return images, bpd, latent_bits_per_dim(model, decoded.log_prior)


@contextmanager
def _frozen(model: MultiScaleFlow) -> Iterator[None]:
    """No weight gradients while optimising latents (half the backward cost); flags restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _optimise(
    model: MultiScaleFlow,
    interior: list[Tensor],
    ends: tuple[list[Tensor], list[Tensor]],
    t: Tensor,
    iters: int,
    lr: float,
    lambdas: tuple[float, float],
    cond: Any,
) -> tuple[list[float], list[Tensor]]:
    """Adamax on the interior latents; returns the objective history and the best iterate."""
    optimiser = torch.optim.Adamax(interior, lr=lr)
    history: list[float] = []
    best = (float("inf"), [l.detach().clone() for l in interior])
    with _frozen(model):
        for it in range(iters + 1):
            optimiser.zero_grad()
            objective, _ = interpolation_objective(model, interior, ends, t, lambdas, cond)
            history.append(float(objective.detach()))
            if history[-1] < best[0]:
                best = (history[-1], [l.detach().clone() for l in interior])
            if it == iters:
                break
            objective.backward()
            optimiser.step()
    return history, best[1]


def interpolate(
    model: MultiScaleFlow,
    x_a: Tensor,
    x_b: Tensor,
    steps: int = 8,
    iters: int = 100,
    lr: float = 5e-2,
    lambdas: tuple[float, float] = (0.3, 0.3),
    cond: Any = None,
) -> InterpolationResult:
    """Interpolate between uint8 images ``x_a`` and ``x_b`` linearly and by optimising ``J`` (module docstring).

    Args:
        model: a trained (or at least ActNorm-initialised) multi-scale flow.
        x_a: uint8 image ``(C, H, W)`` or ``(1, C, H, W)``, the start.
        x_b: the end, same shape.
        steps: images on each path, both endpoints included (>= 3).
        iters: Adamax iterations.
        lr: Adamax learning rate.
        lambdas: ``(lambda_1, lambda_2)``, weights of the line-proximity and smoothness terms.
        cond: condition of a conditional model, ``(1, ...)``, used for every point of the path.

    Example:
        >>> import torch
        >>> from msflow.models.marscf import marscf
        >>> model = marscf((1, 4, 4), levels=2, steps=1, hidden=4, mixtures=2, lstm_hidden=4)
        >>> _ = model.bits_per_dim(torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8))
        >>> x_a, x_b = torch.zeros(1, 4, 4, dtype=torch.uint8), torch.full((1, 4, 4), 255, dtype=torch.uint8)
        >>> result = interpolate(model, x_a, x_b, steps=4, iters=3)
        >>> result.optimised.shape, len(result.objective)
        (torch.Size([4, 1, 4, 4]), 4)
    """
    if steps < 3:
        raise ValueError(f"steps counts both endpoints and needs at least one image between them, got {steps}")
    xs = torch.stack([x.reshape(model.image_shape) for x in (x_a, x_b)])
    p = next(model.parameters())
    v = (xs.to(p.device, torch.float64) + 0.5) / model.dequantizer.levels  # bin centres, as perturb_levels
    with torch.no_grad():
        ls = encode_prior_space(model, v.to(p.dtype), _repeat_cond(cond, 2))
    ends = ([l[:1] for l in ls], [l[1:] for l in ls])
    t64 = torch.linspace(0, 1, steps, dtype=torch.float64)
    t = t64.to(p.device, p.dtype)
    tt = t.view(-1, 1, 1, 1)
    line = [(1 - tt) * l_a + tt * l_b for l_a, l_b in zip(*ends, strict=True)]
    interior = [l[1:-1].clone().requires_grad_(True) for l in line]
    history, best = _optimise(model, interior, ends, t, iters, lr, lambdas, cond)
    optimised = [torch.cat([l_a, l_k, l_b]) for l_a, l_k, l_b in zip(ends[0], best, ends[1], strict=True)]
    lin_images, lin_bpd, lin_latent = (x.cpu() for x in _path_images(model, line, cond))
    opt_images, opt_bpd, opt_latent = (x.cpu() for x in _path_images(model, optimised, cond))
    return InterpolationResult(t64, lin_images, opt_images, lin_bpd, opt_bpd, lin_latent, opt_latent, history, lambdas)


def save_interpolation_grid(result: InterpolationResult, path: str | Path, scale: int = 4) -> Path:
    """Write a PNG with the linear path on the top row and the optimised one below (as Figure 11)."""
    images = torch.cat([result.linear, result.optimised])
    return save_grid(images, path, nrow=result.linear.shape[0], scale=scale)


__all__ = [
    "InterpolationResult",
    "PriorSpaceDecoding",
    "decode_prior_space",
    "encode_prior_space",
    "interpolate",
    "interpolation_objective",
    "latent_bits_per_dim",
    "save_interpolation_grid",
]

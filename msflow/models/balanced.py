"""Liao & He's balanced flow: blocks ``f_act . f_aff . f_conv`` in a multi-scale architecture.

Each block expands volume with a strided invertible convolution and a dual affine coupling
whose scale is bounded by eq. 15, then contracts it with a rational-quadratic activation whose
slope stays in (0, 1] (section 4.1). Every block starts as the identity (blockwise
volume-preserving initialisation, eq. 18):

.. math::

    \\det J_{f_{conv}} \\det J_{f_{aff}} = 1 / \\det J_{f_{act}} = \\beta^{-d}

with ``kappa`` the conv's initial scale, ``s = 1 / (beta kappa)`` the coupling's initial scale
and ``beta`` the activation's initial slope. The first block of each level uses a 2x2 stride
(the squeeze, fused into the conv); a level then factors out ``split`` of its channels (1/2 as
in RealNVP and Glow, 3/4 for very large images) through a learned Gaussian split prior.
"""

from __future__ import annotations

import math
from functools import partial

from msflow.core import FlowSequential, InvertibleModule, Shape
from msflow.models._registry import register_model
from msflow.models.multiscale import MultiScaleFlow, check_squeezable, make_preprocess
from msflow.nn.subnets import SUBNETS, SubnetFactory
from msflow.transforms import DualAffineCoupling, GaussianSplitPrior, RQActivation, StridedInvConv


def balanced_block(
    in_channels: int,
    stride: int,
    subnet: SubnetFactory,
    beta: float = 0.9,
    kappa: float = 1.0,
    mixtures: int = 3,
    bins: int = 16,
    width: float = 3.0,
    cond_channels: int = 0,
) -> list[InvertibleModule]:
    """``[f_conv, f_aff, f_act]`` of one block, initialised to compose to the identity."""
    channels = stride * stride * in_channels
    return [
        StridedInvConv(in_channels, k=stride, kappa=kappa),
        DualAffineCoupling(
            channels, subnet, mixtures, init_log_scale=-math.log(beta * kappa), cond_channels=cond_channels
        ),
        RQActivation(channels, bins=bins, beta=beta, width=width),
    ]


def kept_channels(channels: int, split: float) -> int:
    """Channels a level keeps for the next one when it factors out the fraction ``split``."""
    keep = round(channels * (1 - split))
    if not 1 <= keep < channels:
        raise ValueError(f"split={split} of {channels} channels leaves {keep} for the next level; use 1/2 or 3/4")
    return keep


def balanced(
    image_shape: Shape,
    levels: int = 3,
    steps: int = 16,
    hidden: int = 128,
    subnet: str = "resnet",
    split: float = 0.5,
    beta: float = 0.9,
    kappa: float = 1.0,
    mixtures: int = 3,
    bins: int = 16,
    width: float = 3.0,
    preprocess: str = "center",
    alpha: float = 0.05,
    n_bits: int = 8,
) -> MultiScaleFlow:
    """A balanced flow for ``image_shape`` (Liao & He, sec. 4 and appendix C).

    Args:
        image_shape: ``(C, H, W)``; ``H`` and ``W`` must divide by ``2^levels``.
        levels: levels; each starts with a 2x2-strided block.
        steps: blocks ``f_act . f_aff . f_conv`` per level (``steps``, as in every preset).
        hidden: width of the coupling networks.
        subnet: ``"resnet"`` (with channel attention; CIFAR-10, ImageNet) or ``"convnet"``
            (3x3, 1x1, 3x3; large images).
        split: fraction of a level's channels factored out (1/2, or 3/4 for large images).
        beta: initial slope of the activations, in [0.5, 1) as the paper advises.
        kappa: initial scale of the invertible convolutions.
        mixtures: Mexican hats per coupling scale (eq. 15).
        bins: spline bins per activation.
        width: initial half-width of the spline box.
        preprocess: ``"center"`` (Glow's ``v - 1/2``) or ``"logit"``.
        alpha: logit squeeze when ``preprocess="logit"``.
        n_bits: bits per sub-pixel of the data (5 for the paper's CelebA-HQ).

    Example:
        >>> import torch
        >>> model = balanced((1, 8, 8), levels=2, steps=1, hidden=8)
        >>> x = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
        >>> model.bits_per_dim(x).shape
        torch.Size([2])
    """
    if subnet not in SUBNETS:
        raise ValueError(f"unknown subnet {subnet!r}; choose one of {sorted(SUBNETS)}")
    if levels < 1 or steps < 1:
        raise ValueError(f"need at least one level and one block, got {levels} levels, {steps} steps")
    check_squeezable(tuple(image_shape), levels)
    make_subnet = SUBNETS[subnet](hidden)
    options = {"beta": beta, "kappa": kappa, "mixtures": mixtures, "bins": bins, "width": width}
    block = partial(balanced_block, subnet=make_subnet, **options)
    flows, keep = [], []
    channels = image_shape[0]
    for i in range(levels):
        parts: list[InvertibleModule] = []
        for j in range(steps):
            parts.extend(block(channels, stride=2) if j == 0 else block(4 * channels, stride=1))
        channels *= 4
        kept = 0 if i == levels - 1 else kept_channels(channels, split)
        parts.append(GaussianSplitPrior(channels, keep=kept))
        flows.append(FlowSequential(*parts))
        keep.append(kept)
        channels = kept
    return MultiScaleFlow(image_shape, flows, keep, make_preprocess(preprocess, alpha), n_bits)


# name: (image shape, options, help)
_PRESETS: dict[str, tuple[Shape, dict, str]] = {
    "mnist": ((1, 28, 28), {"levels": 2, "steps": 8, "hidden": 64}, "2 levels x 8 blocks, ResNet 64"),
    "cifar10": ((3, 32, 32), {"levels": 3, "steps": 16, "hidden": 128}, "3 levels x 16 blocks, ResNet 128 (paper)"),
    "imagenet32": ((3, 32, 32), {"levels": 3, "steps": 16, "hidden": 128}, "3 levels x 16 blocks, ResNet 128 (paper)"),
    "patches32": ((3, 32, 32), {"levels": 3, "steps": 8, "hidden": 64}, "3 levels x 8 blocks, ResNet 64"),
    "large": (
        (3, 128, 128),
        {"levels": 6, "steps": 4, "hidden": 64, "subnet": "convnet", "split": 0.75},
        "6 levels x 4 blocks, ConvNet 64, 3/4 split; set image_shape for other sizes",
    ),
    "celeba1024": (
        (3, 1024, 1024),
        {"levels": 8, "steps": 12, "hidden": 256, "subnet": "convnet", "split": 0.75, "n_bits": 5},
        "8 levels x 12 blocks, ConvNet 256, 3/4 split, 5-bit (paper's CelebA-HQ)",
    ),
}


def _register_presets() -> None:
    for data, (shape, options, text) in _PRESETS.items():
        size = "x".join(map(str, shape))
        register_model(f"balanced-{data}", f"Liao & He balanced flow for {data} ({size}): {text}")(
            partial(balanced, image_shape=shape, **options)
        )


_register_presets()

__all__ = ["balanced", "balanced_block", "kept_channels"]

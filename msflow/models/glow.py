"""Glow (Kingma & Dhariwal 2018) and RealNVP (Dinh et al. 2017) presets.

A Glow step is ActNorm -> invertible 1x1 conv (LU) -> affine coupling, the STEPOFFLOW of
mAR-SCF (paper 001, supplement B). The RealNVP preset replaces ActNorm and the 1x1 conv by a
channel reversal and bounds the coupling scale with tanh, on logit-preprocessed data.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from msflow.core import InvertibleModule, Shape
from msflow.models._registry import register_model
from msflow.models.multiscale import MultiScaleFlow, StepFactory, build_multiscale, make_preprocess
from msflow.nn.subnets import SUBNETS, conv_subnet
from msflow.transforms import COUPLINGS, ActNorm, ChannelPermutation, InvConv1x1


def glow_step(
    hidden: int = 512, coupling: str = "affine", scale: str = "sigmoid", lu: bool = True, subnet: str = "convnet"
) -> StepFactory:
    """One Glow step: ActNorm, invertible 1x1 conv, coupling with a ``hidden``-wide ``subnet`` (see SUBNETS)."""
    if coupling not in COUPLINGS:
        raise ValueError(f"unknown coupling {coupling!r}; choose one of {sorted(COUPLINGS)}")
    if subnet not in SUBNETS:
        raise ValueError(f"unknown subnet {subnet!r}; choose one of {sorted(SUBNETS)}")
    coupling_cls, net = COUPLINGS[coupling], SUBNETS[subnet]
    extra = {"scale": scale} if coupling == "affine" else {}

    def step(channels: int, cond_channels: int) -> Sequence[InvertibleModule]:
        return [
            ActNorm(channels),
            InvConv1x1(channels, lu=lu),
            coupling_cls(channels, subnet=net(hidden), cond_channels=cond_channels, **extra),
        ]

    return step


def realnvp_step(hidden: int = 512) -> StepFactory:
    """One RealNVP step: tanh-bounded affine coupling, then reverse the channels."""

    def step(channels: int, cond_channels: int) -> Sequence[InvertibleModule]:
        return [
            COUPLINGS["affine"](channels, subnet=conv_subnet(hidden), scale="tanh", cond_channels=cond_channels),
            ChannelPermutation(channels, "reverse"),
        ]

    return step


def glow(
    image_shape: Shape,
    levels: int = 3,
    steps: int = 32,
    hidden: int = 512,
    coupling: str = "affine",
    scale: str = "sigmoid",
    lu: bool = True,
    preprocess: str = "center",
    alpha: float = 0.05,
    split_prior: str = "conditional",
) -> MultiScaleFlow:
    """A Glow model for ``image_shape``; arguments as in :func:`glow_step` and :func:`build_multiscale`."""
    step = glow_step(hidden, coupling, scale, lu)
    return build_multiscale(
        tuple(image_shape), levels, steps, step, make_preprocess(preprocess, alpha), split_prior=split_prior
    )


def realnvp(
    image_shape: Shape,
    levels: int = 3,
    steps: int = 8,
    hidden: int = 256,
    preprocess: str = "logit",
    alpha: float = 0.05,
) -> MultiScaleFlow:
    """A RealNVP-style model (channel-wise couplings after each squeeze)."""
    return build_multiscale(tuple(image_shape), levels, steps, realnvp_step(hidden), make_preprocess(preprocess, alpha))


# name: (image shape, levels, Glow steps/hidden, RealNVP steps/hidden, logit alpha)
_PRESETS = {
    "mnist": ((1, 28, 28), 2, (16, 256), (8, 128), 1e-6),
    "mnist32": ((1, 32, 32), 3, (16, 256), (8, 128), 1e-6),
    "cifar10": ((3, 32, 32), 3, (32, 512), (8, 256), 0.05),
    "imagenet32": ((3, 32, 32), 3, (32, 512), (8, 256), 0.05),
    "imagenet64": ((3, 64, 64), 4, (32, 512), (8, 256), 0.05),
    "patches32": ((3, 32, 32), 3, (16, 256), (8, 128), 0.05),
    "patches32-grey": ((1, 32, 32), 3, (16, 256), (8, 128), 0.05),
}


def _register_presets() -> None:
    for data, (shape, levels, (g_steps, g_hidden), (r_steps, r_hidden), alpha) in _PRESETS.items():
        size = "x".join(map(str, shape))
        register_model(
            f"glow-{data}", f"Glow for {data} ({size}): {levels} levels x {g_steps} steps, {g_hidden} hidden"
        )(partial(glow, image_shape=shape, levels=levels, steps=g_steps, hidden=g_hidden, alpha=alpha))
        register_model(
            f"realnvp-{data}", f"RealNVP for {data} ({size}): {levels} levels x {r_steps} steps, {r_hidden} hidden"
        )(partial(realnvp, image_shape=shape, levels=levels, steps=r_steps, hidden=r_hidden, alpha=alpha))


_register_presets()

"""What CAFLOW (paper 002, :mod:`msflow.models.caflow`) is assembled from: its tasks and their
conditions, the unconditional flows ``R`` and ``T`` (appendix A.1), the conditional blocks
``f^i_j`` (appendix A.2), and the guess ``b(y)`` each task's target is measured from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from msflow.core import FlowSequential, InvertibleModule, Shape
from msflow.distributions import standard_normal_log_prob
from msflow.errors import DataError, ShapeError
from msflow.models.glow import glow_step
from msflow.models.multiscale import MultiScaleFlow, check_squeezable, make_preprocess
from msflow.nn.subnets import conv_subnet
from msflow.transforms import ActNorm, AffineCoupling, AffineInjector, InvConv1x1, Squeeze, UniformDequantize
from msflow.transforms.shift import ConditionalShift, ImageBase

FACTORIZATIONS = ("autoregressive", "dual-glow")
DEQUANTIZATIONS = ("uniform", "variational")
# task -> (condition channels, what the condition is, how to make one)
TASKS: dict[str, tuple[int, str, str]] = {
    "superres": (3, "low-resolution RGB", "downscale the photo"),
    "colorize": (1, "greyscale", "convert the image to greyscale (mode L)"),
    "inpaint": (3, "masked RGB", "zero the masked pixels of an RGB image"),
    "sketch": (1, "edge-map", "compute edges with msflow.data.translation.sketch_edges"),
}
RESIDUAL_TASKS = ("superres", "colorize")
"""Tasks with a trivial answer to measure the target from: the bicubic upsampling, the grey image."""


def check_options(task: str, factorization: str, dequantization: str, lam: float, scale: int) -> None:
    """Raise a ``ValueError`` naming the choices unless CAFLOW's options fit together."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if factorization not in FACTORIZATIONS:
        raise ValueError(f"unknown factorization {factorization!r}; choose one of {', '.join(FACTORIZATIONS)}")
    if dequantization not in DEQUANTIZATIONS:
        raise ValueError(f"unknown dequantization {dequantization!r}; choose one of {', '.join(DEQUANTIZATIONS)}")
    if not lam >= 0:
        raise ValueError(f"lam weighs log p(y) in the loss and must be >= 0, got {lam}")
    if (scale > 1) != (task == "superres"):
        raise ValueError(f"scale {scale} does not fit task {task!r}: only superres has a scale above 1")


def task_shift(task: str, scale: int, channels: int) -> ConditionalShift:
    """The shift ``v - b(y)`` of a residual task: ``b`` upsamples (super-resolution) or repeats the grey
    channel (colorization) of the condition's pixels, at bin centres (:class:`ImageBase`)."""
    if task not in RESIDUAL_TASKS:
        raise ValueError(
            f"task {task!r} has no trivial answer to model the target relative to (only {', '.join(RESIDUAL_TASKS)} "
            "do); use residual=False"
        )
    return ConditionalShift(ImageBase(scale, channels))


def _transitions(channels: int, count: int) -> list[InvertibleModule]:
    # SRFlow's transition step: a learned linear mix of the pixels a squeeze brought together,
    # against the checkerboard artefacts of pure reordering (appendix A.1).
    return [block for _ in range(count) for block in (ActNorm(channels), InvConv1x1(channels))]


def unconditional_flow(
    image_shape: Shape,
    num_levels: int,
    steps: int,
    hidden: int,
    transitions: int = 2,
    preprocess: InvertibleModule | None = None,
    scale: str = "atan",
) -> MultiScaleFlow:
    """``R`` or ``T`` (appendix A.1): per level squeeze, transition steps, ``steps`` Glow steps, split.

    The split keeps half the channels for the next level; the factored half is a latent of the
    hierarchy (``D_j`` or ``L_j``), returned fine to coarse by ``encode``. No prior is attached:
    CAFLOW scores ``D`` by ``N(0, I)`` and ``L`` by the conditional flows. ``preprocess``
    defaults to centring, ``v - 1/2``; ``scale`` is the couplings' scale function (the paper's
    ``"atan"`` or another of :data:`~msflow.transforms.coupling.LOG_SCALES`).
    """
    check_squeezable(tuple(image_shape), num_levels)
    step = glow_step(hidden, "affine", scale, True, "convnet")
    levels, keep, channels = [], [], image_shape[0]
    for i in range(num_levels):
        channels *= 4
        blocks: list[InvertibleModule] = [Squeeze(), *_transitions(channels, transitions)]
        for _ in range(steps):
            blocks.extend(step(channels, 0))
        levels.append(FlowSequential(*blocks))
        keep.append(0 if i == num_levels - 1 else channels // 2)
        channels //= 2
    return MultiScaleFlow(image_shape, levels, keep, preprocess or make_preprocess("center"))


def conditional_block(
    channels: int,
    cond_channels: int,
    steps: int,
    hidden: int,
    transitions: int,
    squeeze: bool,
    scale: str = "atan",
) -> FlowSequential:
    """One ``f^i_j`` (appendix A.2): [squeeze], transition steps, then ``steps`` conditional steps of
    ActNorm, 1x1 conv, affine injector and conditional affine coupling, all reading the condition.

    ``channels`` is the width after the optional squeeze; ``scale`` the injectors' and couplings'
    scale function.
    """
    net = conv_subnet(hidden)
    blocks: list[InvertibleModule] = [Squeeze()] if squeeze else []
    blocks += _transitions(channels, transitions)
    for _ in range(steps):
        blocks += [
            ActNorm(channels),
            InvConv1x1(channels),
            AffineInjector(channels, cond_channels, net, scale),
            AffineCoupling(channels, subnet=net, scale=scale, cond_channels=cond_channels),
        ]
    return FlowSequential(*blocks)


def component_blocks(
    l_ch: Sequence[int],
    d_ch: Sequence[int],
    steps: int,
    hidden: int,
    transitions: int,
    autoregressive: bool,
    share_weights: bool,
    scale: str = "atan",
) -> tuple[list[FlowSequential], list[list[int]]]:
    """The blocks ``f^i_j`` of every ``F_i`` and ``route[i][j]``, the index of ``f^i_j`` among them.

    ``l_ch[k]``, ``d_ch[k]`` are the channels of ``L_k``, ``D_k`` (0: coarsest). ``F_i`` starts with
    ``f^i_i`` on ``L_i`` given ``D_i``; autoregressive flows go on with ``f^i_j``, ``j < i``, each
    squeezing what was kept and reading ``[L_j, D_j]``; ``share_weights`` builds each ``f_j``
    (``j < i``) once, for every ``i`` (appendix D). ``scale``: their scale function.
    """
    blocks: list[FlowSequential] = []
    routes: list[list[int]] = []
    shared: dict[int, int] = {}
    for i in range(len(l_ch)):
        route = [-1] * (i + 1)
        width = l_ch[i]
        blocks.append(conditional_block(width, d_ch[i], steps, hidden, transitions, False, scale))
        route[i] = len(blocks) - 1
        for j in range(i - 1, -1, -1) if autoregressive else ():
            width = 4 * (width // 2)
            if not (share_weights and j in shared):
                blocks.append(conditional_block(width, l_ch[j] + d_ch[j], steps, hidden, transitions, True, scale))
                shared[j] = len(blocks) - 1
            route[j] = shared[j]
        routes.append(route)
    return blocks, routes


def condition_pixels(
    cond: Any, task: str, cond_shape: Shape, scale: int, num_levels: int, target: Tensor | None
) -> Tensor:
    """``cond`` as float pixel values 0..255 at its own size, or raise naming the expected shape.

    ``cond`` holds ``uint8`` images or floats in [0, 1]; given the ``target`` batch, one condition
    per target, ``scale`` times smaller. Without a target its sides must let the target's squeeze.
    """
    kind, how = TASKS[task][1], TASKS[task][2]
    c = cond_shape[0]
    # Targets divide by 2^n; a super-resolution condition is scale times smaller.
    unit = 2**num_levels // math.gcd(2**num_levels, scale)
    if cond is None:
        raise ValueError(f"CAFLOW models p(target | condition) and needs cond=... ({kind} images (B, {c}, h, w))")
    if not isinstance(cond, Tensor) or cond.dim() != 4:
        got = f"a {cond.dim()}-D tensor" if isinstance(cond, Tensor) else type(cond).__name__
        raise ShapeError(f"CAFLOW ({task}) expects {kind} condition images (B, {c}, H, W), got {got}")
    want = "x".join(map(str, cond_shape))
    got = "x".join(map(str, cond.shape[1:]))
    if cond.shape[1] != c:
        raise ShapeError(
            f"CAFLOW ({task}) expects {kind} condition images of shape {want} (B, {c}, H, W), got {got}: {how}"
        )
    if target is not None:
        if cond.shape[0] != target.shape[0]:
            raise ShapeError(f"got {target.shape[0]} targets but {cond.shape[0]} conditions: give one per target")
        th, tw = target.shape[-2:]
        need = (c, th // scale, tw // scale)
        if tuple(cond.shape[1:]) != need:
            raise ShapeError(
                f"a {th}x{tw} target needs a condition of shape {'x'.join(map(str, need))}, got {got}"
                + (f" (x{scale} super-resolution)" if scale > 1 else "")
            )
    elif cond.shape[-2] % unit or cond.shape[-1] % unit:
        raise ShapeError(
            f"CAFLOW ({task}) conditions must have sides divisible by {unit} (e.g. {want}), got {got}; "
            "pad the image (the msflow task commands pad and crop automatically)"
        )
    if cond.is_floating_point():
        if cond.numel() and not (0 <= float(cond.min()) and float(cond.max()) <= 1):
            raise DataError(
                f"condition images are uint8 (0..255) or floats in [0, 1]; got floats in "
                f"[{float(cond.min()):g}, {float(cond.max()):g}]: pass the uint8 images, or divide by 255"
            )
        return (cond * 255).round()
    return cond.to(torch.float32)


def condition_latents(
    flow: MultiScaleFlow, pixels: Tensor, generator: torch.Generator | None, dtype: torch.dtype
) -> tuple[list[Tensor], Tensor]:
    """``[D_0, .., D_{n-1}]`` (coarse to fine) and ``log p(v_y)`` of condition pixels 0..255 under ``R`` (``flow``).

    With a generator, ``v_y`` is a uniform dequantization draw (training, where ``log p(y)``
    enters the loss); without one it is the bin centres, so conditions are deterministic.
    """
    if generator is None:
        v = (pixels.to(dtype) + 0.5) / 256
    else:
        v, _ = UniformDequantize(8)(pixels.to(torch.uint8), generator=generator, dtype=dtype)
    # Not encode: the flows are convolutional, and any size their levels can squeeze works.
    zs, logdet = flow.encode_with_features(v.contiguous(memory_format=torch.channels_last), [None] * len(flow.levels))
    log_p = logdet + sum(standard_normal_log_prob(z) for z in zs)
    return zs[::-1], log_p


def per_scale(temperature: float | Sequence[float], num_levels: int) -> list[float]:
    """One sampling temperature per scale, coarse to fine, from one value or ``num_levels`` of them."""
    if isinstance(temperature, int | float):
        return [float(temperature)] * num_levels
    temps = [float(t) for t in temperature]
    if len(temps) != num_levels:
        raise ValueError(f"give one temperature or {num_levels} (one per scale, coarse to fine), got {temps}")
    return temps


def upsampled_condition(pixels: Tensor, scale: int) -> Tensor:
    """What ``R`` reads: the paper's bicubically upsampled LR image (Figure 8), rounded, so ``D_j`` and
    ``L_j`` share their resolutions; other tasks' conditions as they are."""
    if scale == 1:
        return pixels
    up = F.interpolate(pixels, scale_factor=scale, mode="bicubic", align_corners=False)
    return up.clamp(0, 255).round()

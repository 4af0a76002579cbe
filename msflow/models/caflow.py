r"""CAFLOW: conditional autoregressive flows for image-to-image translation (paper 002).

Two unconditional multi-scale flows encode the condition image ``y`` and the target ``w`` into
latents of decreasing size, ``R(y) = [D_{n-1}, ..., D_0]`` and ``T(w) = [L_{n-1}, ..., L_0]``
(index 0 is the coarsest, as in the paper). The target's latents are modelled autoregressively
from coarse to fine, each given the coarser target latents and the same-or-coarser condition
latents (eq. 8):

.. math::

    p(\tilde L_n \mid \tilde D_n) = \prod_{i=0}^{n-1} p(L_i \mid \tilde L_i, \tilde D_{i+1}),
    \qquad \tilde L_i = [L_{i-1}, .., L_0],\ \tilde D_{i+1} = [D_i, .., D_0]

Each factor is a multi-scale conditional flow ``F_i`` (section 4.2) made of blocks ``f^i_j``,
``j = i, .., 0``: ``f^i_i`` maps ``L_i`` given ``D_i``, then splits off ``Z^i_i``; each
``f^i_j`` (``j < i``) squeezes what was kept, reads ``[L_j, D_j]``, and splits off ``Z^i_j``; the
last keeps nothing. Every ``Z^i_j`` is scored by ``N(0, I)``, giving eq. 9:

.. math::

    \log p(w \mid y) = \log|\det \partial T(w)/\partial w|
        + \sum_{i} \sum_{j \le i} \big[\log\mathcal N(z^i_j) + \log|\det \partial f^i_j|\big]

Training minimises ``-(log p(w | y) + lambda log p(y))`` (section 4.3), ``p(y)`` from ``R``.
Sampling (section 4.4) encodes ``y``, draws every ``Z`` at temperature ``tau``, generates
``L_0, .., L_{n-1}`` in turn and inverts ``T``.

Options: ``share_weights`` (appendix D) uses one ``f_j`` for every ``i > j``, ``2n - 1`` blocks
instead of ``n(n+1)/2``; ``factorization="dual-glow"`` is the ablation of eq. 6, ``p(L_i | D_i)``
only (each ``F_i`` is the single block ``f^i_i`` with nothing split off).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msflow.core import FlowSequential, InvertibleModule, Shape
from msflow.distributions import standard_normal_log_prob, standard_normal_sample
from msflow.errors import DataError, ShapeError
from msflow.metrics.bpd import bits_per_dim
from msflow.models._image_flow import ImageFlow
from msflow.models._registry import register_model
from msflow.models.glow import glow_step
from msflow.models.multiscale import MultiScaleFlow, check_squeezable, make_preprocess
from msflow.nn.subnets import conv_subnet
from msflow.transforms import (
    ActNorm,
    AffineCoupling,
    AffineInjector,
    InvConv1x1,
    Squeeze,
    UniformDequantize,
    VariationalDequantize,
)

FACTORIZATIONS = ("autoregressive", "dual-glow")
DEQUANTIZATIONS = ("uniform", "variational")
# task -> (condition channels, what the condition is, how to make one)
TASKS: dict[str, tuple[int, str, str]] = {
    "superres": (3, "low-resolution RGB", "downscale the photo"),
    "colorize": (1, "greyscale", "convert the image to greyscale (mode L)"),
    "inpaint": (3, "masked RGB", "zero the masked pixels of an RGB image"),
    "sketch": (1, "edge-map", "compute edges with msflow.data.translation.sketch_edges"),
}


def _transitions(channels: int, count: int) -> list[InvertibleModule]:
    # SRFlow's transition step: a learned linear mix of the pixels a squeeze brought together,
    # against the checkerboard artefacts of pure reordering (appendix A.1).
    return [block for _ in range(count) for block in (ActNorm(channels), InvConv1x1(channels))]


def unconditional_flow(
    image_shape: Shape, num_levels: int, steps: int, hidden: int, transitions: int = 2
) -> MultiScaleFlow:
    """``R`` or ``T`` (appendix A.1): per level squeeze, transition steps, ``steps`` Glow steps, split.

    The split keeps half the channels for the next level; the factored half is a latent of the
    hierarchy (``D_j`` or ``L_j``), returned fine to coarse by ``encode``. No prior is attached:
    CAFLOW scores ``D`` by ``N(0, I)`` and ``L`` by the conditional flows.
    """
    check_squeezable(tuple(image_shape), num_levels)
    step = glow_step(hidden, "affine", "atan", True, "convnet")
    levels, keep, channels = [], [], image_shape[0]
    for i in range(num_levels):
        channels *= 4
        blocks: list[InvertibleModule] = [Squeeze(), *_transitions(channels, transitions)]
        for _ in range(steps):
            blocks.extend(step(channels, 0))
        levels.append(FlowSequential(*blocks))
        keep.append(0 if i == num_levels - 1 else channels // 2)
        channels //= 2
    return MultiScaleFlow(image_shape, levels, keep, make_preprocess("center"))


def conditional_block(
    channels: int, cond_channels: int, steps: int, hidden: int, transitions: int, squeeze: bool
) -> FlowSequential:
    """One ``f^i_j`` (appendix A.2): [squeeze], transition steps, then ``steps`` conditional steps of
    ActNorm, 1x1 conv, affine injector and conditional affine coupling, all reading the condition.

    ``channels`` is the width after the optional squeeze.
    """
    net = conv_subnet(hidden)
    blocks: list[InvertibleModule] = [Squeeze()] if squeeze else []
    blocks += _transitions(channels, transitions)
    for _ in range(steps):
        blocks += [
            ActNorm(channels),
            InvConv1x1(channels),
            AffineInjector(channels, cond_channels, net, "atan"),
            AffineCoupling(channels, subnet=net, scale="atan", cond_channels=cond_channels),
        ]
    return FlowSequential(*blocks)


class CAFlow(ImageFlow):
    r"""``p(w | y)`` by two multi-scale flows and conditional autoregressive flows (eq. 8, 9).

    Args:
        task: ``"superres"``, ``"colorize"``, ``"inpaint"`` or ``"sketch"``; sets the condition's
            channels and, for super-resolution, that it is ``scale`` times smaller than ``w``
            (it is upsampled bicubically to ``w``'s size and rounded before ``R`` reads it).
        image_shape: ``(C, H, W)`` of the targets.
        num_levels: scales ``n``.
        cond_steps, target_steps, flow_steps: Glow steps per level of ``R`` and ``T``, and
            conditional steps per block ``f^i_j``.
        hidden, cond_hidden: hidden channels of the unconditional and conditional networks
            (64 and 32 in the paper).
        transitions: transition steps after each squeeze.
        factorization: ``"autoregressive"`` (eq. 8) or ``"dual-glow"`` (eq. 6).
        share_weights: appendix D's sharing of ``f^i_j`` over ``i > j``.
        lam: weight ``lambda`` of ``log p(y)`` in the training objective.
        dequantization: ``"uniform"`` or ``"variational"`` (Flow++ noise, ``dequant_steps`` steps).
        scale: super-resolution factor (1 for the other tasks).

    Example:
        >>> import torch
        >>> from msflow import create_model
        >>> model = create_model("caflow-colorize", size=16, levels=2, hidden=8, cond_hidden=8,
        ...                      cond_steps=1, target_steps=1, flow_steps=1)
        >>> w = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
        >>> y = torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8)
        >>> model.bits_per_dim(w, y).shape
        torch.Size([2])
        >>> model.sample(3, temperature=0.5, cond=y[:1]).shape
        torch.Size([3, 3, 16, 16])
    """

    def __init__(
        self,
        task: str,
        image_shape: Shape,
        num_levels: int = 3,
        cond_steps: int = 4,
        target_steps: int = 8,
        flow_steps: int = 4,
        hidden: int = 64,
        cond_hidden: int = 32,
        transitions: int = 2,
        factorization: str = "autoregressive",
        share_weights: bool = False,
        lam: float = 0.01,
        dequantization: str = "uniform",
        dequant_steps: int = 4,
        scale: int = 1,
    ) -> None:
        super().__init__()
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
        c, h, w = image_shape
        self.task, self.scale, self.lam = task, scale, float(lam)
        self.image_shape = tuple(image_shape)
        cond_c = TASKS[task][0]
        self.cond_shape = (cond_c, h // scale, w // scale)
        self.num_levels = num_levels
        self.factorization, self.share_weights = factorization, share_weights
        self.num_dims = c * h * w
        self.R = unconditional_flow((cond_c, h, w), num_levels, cond_steps, hidden, transitions)
        self.T = unconditional_flow(self.image_shape, num_levels, target_steps, hidden, transitions)
        self.dequantizer: UniformDequantize = UniformDequantize(8)
        if dequantization == "variational":
            self.dequantizer = VariationalDequantize(c, 8, dequant_steps, cond_hidden)
        # Paper index k = 0 is the coarsest level; the flows list latents fine to coarse.
        l_ch = [s[0] for s in reversed(self.T.latent_shapes())]
        d_ch = [s[0] for s in reversed(self.R.latent_shapes())]
        self.blocks = nn.ModuleList()
        self._route: list[list[int]] = []  # _route[i][j]: index in self.blocks of f^i_j
        shared: dict[int, int] = {}
        for i in range(num_levels):
            route = [-1] * (i + 1)
            width = l_ch[i]
            route[i] = self._add(conditional_block(width, d_ch[i], flow_steps, cond_hidden, transitions, False))
            for j in range(i - 1, -1, -1) if factorization == "autoregressive" else ():
                width = 4 * (width // 2)
                if share_weights and j in shared:
                    route[j] = shared[j]
                    continue
                block = conditional_block(width, l_ch[j] + d_ch[j], flow_steps, cond_hidden, transitions, True)
                route[j] = shared[j] = self._add(block)
            self._route.append(route)
        self.to(memory_format=torch.channels_last)

    @property
    def target_multiple(self) -> int:
        """Target sides must divide by this (one squeeze per level)."""
        return 2**self.num_levels

    def _add(self, block: FlowSequential) -> int:
        self.blocks.append(block)
        return len(self.blocks) - 1

    def block(self, i: int, j: int) -> FlowSequential:
        """The block ``f^i_j`` of the ``i``-th conditional flow at level ``j`` (0: coarsest)."""
        return self.blocks[self._route[i][j]]

    def _levels_of(self, i: int) -> range:
        """Levels ``j`` of ``F_i`` in the density direction (fine to coarse)."""
        return range(i, -1, -1) if self.factorization == "autoregressive" else range(i, i - 1, -1)

    # ---- conditions -------------------------------------------------------------------------
    def check_condition(self, cond: Any, target: Tensor | None = None) -> Tensor:
        """Return ``cond`` as float pixel values 0..255 at the target's size, or raise naming the expected shape."""
        kind, how = TASKS[self.task][1], TASKS[self.task][2]
        c = self.cond_shape[0]
        # Targets divide by 2^n; a super-resolution condition is scale times smaller.
        unit = 2**self.num_levels // math.gcd(2**self.num_levels, self.scale)
        if cond is None:
            raise ValueError(f"CAFLOW models p(target | condition) and needs cond=... ({kind} images (B, {c}, h, w))")
        if not isinstance(cond, Tensor) or cond.dim() != 4:
            got = f"a {cond.dim()}-D tensor" if isinstance(cond, Tensor) else type(cond).__name__
            raise ShapeError(f"CAFLOW ({self.task}) expects {kind} condition images (B, {c}, H, W), got {got}")
        want = "x".join(map(str, self.cond_shape))
        got = "x".join(map(str, cond.shape[1:]))
        if cond.shape[1] != c:
            raise ShapeError(
                f"CAFLOW ({self.task}) expects {kind} condition images of shape {want} (B, {c}, H, W), got {got}: {how}"
            )
        if target is not None:
            if cond.shape[0] != target.shape[0]:
                raise ShapeError(f"got {target.shape[0]} targets but {cond.shape[0]} conditions: give one per target")
            th, tw = target.shape[-2:]
            need = (c, th // self.scale, tw // self.scale)
            if tuple(cond.shape[1:]) != need:
                raise ShapeError(
                    f"a {th}x{tw} target needs a condition of shape {'x'.join(map(str, need))}, got {got}"
                    + (f" (x{self.scale} super-resolution)" if self.scale > 1 else "")
                )
        elif cond.shape[-2] % unit or cond.shape[-1] % unit:
            raise ShapeError(
                f"CAFLOW ({self.task}) conditions must have sides divisible by {unit} (e.g. {want}), got {got}; "
                "pad the image (the msflow task commands pad and crop automatically)"
            )
        if cond.is_floating_point():
            if cond.numel() and not (0 <= float(cond.min()) and float(cond.max()) <= 1):
                raise DataError(
                    f"condition images are uint8 (0..255) or floats in [0, 1]; got floats in "
                    f"[{float(cond.min()):g}, {float(cond.max()):g}]: pass the uint8 images, or divide by 255"
                )
            pixels = (cond * 255).round()
        else:
            pixels = cond.to(torch.float32)
        pixels = pixels.to(next(self.parameters()).device)
        if self.scale > 1:
            # The paper conditions on the bicubically upsampled LR image (Figure 8): R then sees
            # an image of the target's size, so D_j and L_j share their resolutions.
            up = F.interpolate(pixels, scale_factor=self.scale, mode="bicubic", align_corners=False)
            pixels = up.clamp(0, 255).round()
        return pixels

    def _condition_latents(
        self, pixels: Tensor, generator: torch.Generator | None, dtype: torch.dtype
    ) -> tuple[list[Tensor], Tensor]:
        """``[D_0, .., D_{n-1}]`` (coarse to fine) and ``log p(v_y)`` for condition pixels 0..255.

        With a generator, ``v_y`` is a uniform dequantization draw (training, where ``log p(y)``
        enters the loss); without one it is the bin centres, so conditions are deterministic.
        """
        if generator is None:
            v = (pixels.to(dtype) + 0.5) / 256
        else:
            v, _ = UniformDequantize(8)(pixels.to(torch.uint8), generator=generator, dtype=dtype)
        # _encode_with skips the fixed-size check: the flows are convolutional, any squeezable size works.
        zs, logdet = self.R._encode_with(v.contiguous(memory_format=torch.channels_last), [None] * self.num_levels)
        log_p = logdet + sum(standard_normal_log_prob(z) for z in zs)
        return zs[::-1], log_p

    # ---- density ----------------------------------------------------------------------------
    def _check_target(self, x: Tensor) -> None:
        c = self.image_shape[0]
        side = 2**self.num_levels
        if x.dim() != 4 or x.shape[1] != c or x.shape[-2] % side or x.shape[-1] % side:
            got = "x".join(map(str, x.shape[1:])) if x.dim() == 4 else f"a {x.dim()}-D tensor"
            raise ShapeError(
                f"CAFLOW ({self.task}) expects targets (B, {c}, H, W) with H and W divisible by {side} "
                f"(e.g. {'x'.join(map(str, self.image_shape))}), got {got}"
            )

    def _block_condition(self, i: int, j: int, ls: Sequence[Tensor], ds: Sequence[Tensor]) -> Tensor:
        # f^i_i reads D_i alone (L_i is what it models); f^i_j, j < i, reads [L_j, D_j] (eq. 9).
        return ds[j] if j == i else torch.cat([ls[j], ds[j]], dim=1)

    def _keeps_nothing(self, j: int) -> bool:
        return j == 0 or self.factorization == "dual-glow"

    def encode_component(self, i: int, ls: Sequence[Tensor], ds: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
        r"""``F_i``: ``L_i`` given ``L~_i, D~_{i+1}`` -> (``[Z^i_i, .., Z^i_0]``, ``log|det dZ/dL_i|``).

        ``ls`` and ``ds`` are the latents coarse to fine (paper order); ``ls[i:]`` are not read."""
        h, logdet, zs = ls[i], ls[i].new_zeros(ls[i].shape[0]), []
        for j in self._levels_of(i):
            h, ld = self.block(i, j)(h, self._block_condition(i, j, ls, ds))
            logdet = logdet + ld
            keep = 0 if self._keeps_nothing(j) else h.shape[1] // 2
            zs.append(h[:, keep:])
            h = h[:, :keep]
        return zs, logdet

    def decode_component(self, i: int, zs: Sequence[Tensor], ls: Sequence[Tensor], ds: Sequence[Tensor]) -> Tensor:
        """``G_i``, the inverse of :meth:`encode_component`: ``[Z^i_i, .., Z^i_0]`` -> ``L_i``."""
        h = None
        for j, z in zip(reversed(self._levels_of(i)), reversed(zs), strict=True):
            h = z if h is None else torch.cat([h, z], dim=1)
            h, _ = self.block(i, j).inverse(h, self._block_condition(i, j, ls, ds))
        return h

    def component_shapes(self, i: int, height: int, width: int) -> list[Shape]:
        """Shapes of ``[Z^i_i, .., Z^i_0]`` when ``L_i`` is ``height x width``."""
        channels = self.T.latent_shapes()[self.num_levels - 1 - i][0]
        shapes = []
        for j in self._levels_of(i):
            if j != i:
                channels, height, width = 4 * (channels // 2), height // 2, width // 2
            keep = 0 if self._keeps_nothing(j) else channels // 2
            shapes.append((channels - keep, height, width))
        return shapes

    def component_log_prob(self, i: int, ls: Sequence[Tensor], ds: Sequence[Tensor]) -> Tensor:
        r"""``log p(L_i | L~_i, D~_{i+1})`` of eq. 8 through ``F_i``: the ``i``-th bracket sum of eq. 9."""
        zs, logdet = self.encode_component(i, ls, ds)
        return logdet + sum(standard_normal_log_prob(z) for z in zs)

    def _conditional_log_prob(self, v: Tensor, ds: Sequence[Tensor]) -> Tensor:
        """``log p(v | y)`` in nats for continuous targets ``v`` (eq. 9)."""
        zs, logdet = self.T._encode_with(v, [None] * self.num_levels)
        ls = zs[::-1]
        return logdet + sum(self.component_log_prob(i, ls, ds) for i in range(self.num_levels))

    def _terms(
        self, x: Tensor, cond: Any, generator: torch.Generator | None, noisy_cond: bool, same_noise: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        self._check_target(x)
        pixels = self.check_condition(cond, x)
        dtype = next(self.parameters()).dtype
        v, log_q = self.dequantizer(x, generator=generator, dtype=dtype, same_noise=same_noise)
        ds, log_p_y = self._condition_latents(pixels, generator if noisy_cond else None, dtype)
        return self._conditional_log_prob(v.contiguous(memory_format=torch.channels_last), ds), log_q, log_p_y, pixels

    def bits_per_dim(
        self, x: Tensor, cond: Any = None, generator: torch.Generator | None = None, same_noise: bool = False
    ) -> Tensor:
        """``(B,)`` conditional bits/dim ``-log p(x | cond) / (D log 2)`` with one dequantization draw
        (one for the whole batch when ``same_noise``, to rank candidates against each other)."""
        log_p, log_q, _, _ = self._terms(x, cond, generator, noisy_cond=False, same_noise=same_noise)
        return bits_per_dim(log_p, math.prod(x.shape[1:]), 8, log_q)

    def training_bits_per_dim(self, x: Tensor, cond: Any = None, generator: torch.Generator | None = None) -> Tensor:
        r"""The training loss of section 4.3 per target dimension, in bits:
        ``-(log p(w | y) + lambda log p(y)) / (D_w log 2)`` with both images dequantized."""
        log_p, log_q, log_p_y, pixels = self._terms(x, cond, generator, noisy_cond=True)
        dims, cond_dims = math.prod(x.shape[1:]), math.prod(pixels.shape[1:])
        bpd_y = bits_per_dim(log_p_y, cond_dims, 8)
        return bits_per_dim(log_p, dims, 8, log_q) + self.lam * bpd_y * cond_dims / dims

    def log_prob(self, x: Tensor, cond: Any = None, generator: torch.Generator | None = None) -> Tensor:
        r"""``(B,)`` lower bound on ``log P(x | cond)`` in nats."""
        return -self.bits_per_dim(x, cond, generator) * (math.prod(x.shape[1:]) * math.log(2.0))

    def dequantize(self, x: Tensor, cond: Any = None, generator: torch.Generator | None = None) -> Tensor:
        """One continuous ``v`` of integer targets ``x`` (``cond`` is only checked: the noise ignores it)."""
        self._check_target(x)
        self.check_condition(cond, x)
        return self.dequantizer(x, generator=generator, dtype=next(self.parameters()).dtype)[0]

    def encode(self, v: Tensor, cond: Any = None) -> tuple[list[Tensor], Tensor]:
        r"""Continuous targets ``v`` given ``cond`` -> every ``Z^i_j`` (component by component, each fine
        to coarse) and ``log|det dZ/dv|``: the whole bijection whose change of variables is eq. 9."""
        self._check_target(v)
        ds, _ = self._condition_latents(self.check_condition(cond, v), None, v.dtype)
        zs, logdet = self.T._encode_with(v, [None] * self.num_levels)
        ls, out = zs[::-1], []
        for i in range(self.num_levels):
            comp, ld = self.encode_component(i, ls, ds)
            out += comp
            logdet = logdet + ld
        return out, logdet

    def decode(self, zs: Sequence[Tensor], cond: Any = None) -> Tensor:
        """The inverse of :meth:`encode`: generate ``L_0, .., L_{n-1}`` in turn, then invert ``T``."""
        ds, _ = self._condition_latents(self.check_condition(cond), None, zs[0].dtype)
        ls: list[Tensor] = []
        rest = list(zs)
        for i in range(self.num_levels):
            count = len(self._levels_of(i))
            ls.append(self.decode_component(i, rest[:count], ls, ds))
            rest = rest[count:]
        if rest:
            raise ValueError(f"got {len(zs)} latents, {len(zs) - len(rest)} expected (see encode)")
        return self.T._decode_with(ls[::-1], [None] * self.num_levels)

    # ---- sampling ---------------------------------------------------------------------------
    def _temperatures(self, temperature: float | Sequence[float]) -> list[float]:
        if isinstance(temperature, int | float):
            return [float(temperature)] * self.num_levels
        temps = [float(t) for t in temperature]
        if len(temps) != self.num_levels:
            raise ValueError(f"give one temperature or {self.num_levels} (one per scale, coarse to fine), got {temps}")
        return temps

    def generate_component(
        self,
        i: int,
        ls: Sequence[Tensor],
        ds: Sequence[Tensor],
        temps: Sequence[float],
        generator: torch.Generator | None,
    ) -> Tensor:
        """``L_i = G_i(Z~_{i+1}; L~_i, D~_{i+1})`` with each ``Z^i_j`` drawn from ``N(0, temps[j]^2 I)``."""
        d = ds[i]
        shapes = self.component_shapes(i, *d.shape[-2:])
        zs = [
            standard_normal_sample((d.shape[0], *shape), temps[j], generator, d.device, d.dtype)
            for j, shape in zip(self._levels_of(i), shapes, strict=True)
        ]
        return self.decode_component(i, zs, ls, ds)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float | Sequence[float] = 1.0,
        cond: Any = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw ``n`` targets ``(n, C, H, W)`` given ``cond`` of batch 1 (repeated) or ``n`` (section 4.4).

        ``temperature`` is one value or one per scale, coarse to fine."""
        temps = self._temperatures(temperature)
        pixels = self.check_condition(cond)
        if pixels.shape[0] not in (1, n):
            raise ShapeError(f"give one condition image or n={n} of them, got {pixels.shape[0]}")
        dtype = next(self.parameters()).dtype
        ds, _ = self._condition_latents(pixels, None, dtype)
        ds = [d.expand(n, *d.shape[1:]) for d in ds]
        ls: list[Tensor] = []
        for i in range(self.num_levels):
            ls.append(self.generate_component(i, ls, ds, temps, generator))
        v = self.T._decode_with(ls[::-1], [None] * self.num_levels)
        return self.dequantizer.quantize(v)

    def __repr__(self) -> str:
        return (
            f"CAFlow(task={self.task!r}, target={'x'.join(map(str, self.image_shape))}, "
            f"cond={'x'.join(map(str, self.cond_shape))}, levels={self.num_levels}, "
            f"factorization={self.factorization!r}, share_weights={self.share_weights}, "
            f"blocks={len(self.blocks)}, lam={self.lam})"
        )


def caflow(task: str, size: int = 32, levels: int = 3, scale: int | None = None, **options: Any) -> CAFlow:
    """A CAFLOW model for ``size x size`` RGB targets; ``options`` as in :class:`CAFlow`."""
    scale = (4 if task == "superres" else 1) if scale is None else scale
    if size % (2**levels * scale):
        raise ValueError(f"size {size} must divide by 2^levels * scale = {2**levels * scale}")
    return CAFlow(task, (3, size, size), levels, scale=scale, **options)


# preset task -> (what it does, lambda, paper sizes of appendix B: R steps, T steps, F steps)
_PRESETS = {
    "sr4": ("superres", "x4 super-resolution of 32x32 RGB patches", 0.01, (16, 32, 12)),
    "colorize": ("colorize", "colorization of 32x32 greyscale patches", 0.01, (24, 24, 12)),
    "inpaint": ("inpaint", "inpainting of the central 25% of 32x32 RGB patches", 0.05, (30, 30, 16)),
    "sketch": ("sketch", "sketch-to-image: 32x32 RGB patches from their edge maps", 0.01, (16, 16, 12)),
}


def _register_presets() -> None:
    for name, (task, what, lam, (r, t, f)) in _PRESETS.items():
        register_model(f"caflow-{name}", f"CAFLOW {what} (paper 002), CPU-sized: 3 levels, 4/8/4 steps")(
            partial(caflow, task=task, lam=lam)
        )
        register_model(f"caflow-{name}-paper", f"caflow-{name} at the paper's depth (appendix B): {r}/{t}/{f} steps")(
            partial(caflow, task=task, lam=lam, cond_steps=r, target_steps=t, flow_steps=f)
        )


_register_presets()

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

Super-resolution and colorization measure the target from a guess made from the condition, the
bicubic upsampling of ``y`` or ``y`` repeated to RGB (DESIGN.md section 6): ``T`` reads
``w - b(y)``, a shift of log-det 0, so ``log p(w | y) = log p_flow(w - b(y) | y)`` and an untrained
model sampled at temperature 0 returns ``b(y)``.

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
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from msflow.core import Shape
from msflow.metrics.bpd import bits_per_dim
from msflow.models._registry import register_model
from msflow.models.base import ConditionalImageFlow
from msflow.models.caflow_components import ConditionalComponents
from msflow.models.caflow_parts import (
    RESIDUAL_TASKS,
    TASKS,
    check_options,
    component_blocks,
    condition_latents,
    condition_pixels,
    per_scale,
    task_shift,
    unconditional_flow,
    upsampled_condition,
)
from msflow.transforms import Affine, UniformDequantize, VariationalDequantize


class CAFlow(ConditionalComponents, ConditionalImageFlow):
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
        residual: model ``w`` relative to :meth:`base` (``T`` reads ``w - b(y)``); the default,
            ``None``, is on for super-resolution and colorization, the tasks that have such a guess.
            Off, ``T`` centres ``w`` on 1/2, as in runs trained before the option.
        coupling_scale: scale function of the couplings and injectors of ``T`` and the ``f^i_j``,
            the maps inverted when sampling: the paper's soft clamp ``"atan"`` (a factor below
            ``e^2`` per block, either way) or ``"bounded"`` (below 2).

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
        >>> fresh = create_model("caflow-colorize", size=16, levels=2, hidden=8, cond_hidden=8)
        >>> bool((fresh.sample(2, temperature=0.0, cond=y) == y).all())  # the grey image, untrained
        True
    """

    ranks_candidates: ClassVar[bool] = True
    target_hint: ClassVar[str] = "pad the images (the msflow task commands pad and crop automatically)"

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
        residual: bool | None = None,
        coupling_scale: str = "atan",
    ) -> None:
        super().__init__()
        check_options(task, factorization, dequantization, lam, scale)
        c, h, w = image_shape
        self.task, self.scale, self.lam = task, scale, float(lam)
        self.image_shape = tuple(image_shape)
        cond_c = TASKS[task][0]
        self.cond_shape = (cond_c, h // scale, w // scale)
        self.num_levels = num_levels
        self.factorization, self.share_weights = factorization, share_weights
        self.num_dims = c * h * w
        self.R = unconditional_flow((cond_c, h, w), num_levels, cond_steps, hidden, transitions)
        residual = task in RESIDUAL_TASKS if residual is None else residual
        # With a shift, w - b(y) replaces T's centring w - 1/2, and T's preprocessing is the identity.
        self.shift = task_shift(task, scale, c) if residual else None
        centre = Affine(1.0, 0.0) if residual else None
        # R is only ever run forwards; T and the f^i_j are inverted when sampling, so theirs is the
        # scale that must not blow latents up (coupling_scale).
        self.T = unconditional_flow(
            self.image_shape, num_levels, target_steps, hidden, transitions, centre, coupling_scale
        )
        self.dequantizer: UniformDequantize = UniformDequantize(8)
        if dequantization == "variational":
            self.dequantizer = VariationalDequantize(c, 8, dequant_steps, cond_hidden)
        # Paper index k = 0 is the coarsest level; the flows list latents fine to coarse.
        l_ch = [s[0] for s in reversed(self.T.latent_shapes())]
        d_ch = [s[0] for s in reversed(self.R.latent_shapes())]
        blocks, self._route = component_blocks(
            l_ch,
            d_ch,
            flow_steps,
            cond_hidden,
            transitions,
            factorization == "autoregressive",
            share_weights,
            coupling_scale,
        )
        self.blocks = nn.ModuleList(blocks)  # self._route[i][j]: index in self.blocks of f^i_j
        self.to(memory_format=torch.channels_last)

    @property
    def target_multiple(self) -> int:
        """Target sides must divide by this (one squeeze per level)."""
        return 2**self.num_levels

    # ---- conditions -------------------------------------------------------------------------
    def condition_pixels(self, cond: Any, target: Tensor | None = None) -> Tensor:
        """``cond`` as float pixel values 0..255 at its own size, on the model's device, or raise
        naming the expected shape (one condition per ``target`` when given)."""
        pixels = condition_pixels(cond, self.task, self.cond_shape, self.scale, self.num_levels, target)
        return pixels.to(next(self.parameters()).device)

    @property
    def family_name(self) -> str:
        """How messages name the model."""
        return f"CAFLOW ({self.task})"

    def check_condition(self, cond: Any, target: Tensor | None = None) -> Tensor:
        """``cond`` unchanged if it fits (one per ``target`` when given); raises naming the expected shape."""
        self.condition_pixels(cond, target)
        return cond

    def condition_image(self, cond: Any, target: Tensor | None = None) -> Tensor:
        """What ``R`` reads: ``cond`` as float pixels 0..255 at the target's size; raises naming the expected shape."""
        return upsampled_condition(self.condition_pixels(cond, target), self.scale)

    @property
    def residual(self) -> bool:
        """Whether ``T`` reads the target relative to a function of the condition (:meth:`base`)."""
        return self.shift is not None

    def base(self, cond: Any) -> Tensor:
        """``(B, C, H, W)`` continuous targets that a ``T`` input of zero stands for, in the units of ``v``.

        Pillow's bicubic upsampling of the condition (super-resolution) or the grey condition in
        every channel (colorization), at bin centres; 1/2 for a model without a shift.
        """
        pixels = self.condition_pixels(cond)
        shape = (pixels.shape[0], self.image_shape[0], *(d * self.scale for d in pixels.shape[-2:]))
        zero = torch.zeros(shape, device=pixels.device, dtype=next(self.parameters()).dtype)
        return self._out_of_flow(self.T.preprocess.inverse(zero)[0], pixels)

    def _into_flow(self, v: Tensor, pixels: Tensor) -> Tensor:
        """``v - b(y)`` from the condition's pixels (``v`` itself without a shift): what ``T`` reads; log-det 0."""
        return v if self.shift is None else self.shift(v, pixels)[0]

    def _out_of_flow(self, h: Tensor, pixels: Tensor) -> Tensor:
        """The inverse of :meth:`_into_flow`: ``h + b(y)``."""
        return h if self.shift is None else self.shift.inverse(h, pixels)[0]

    def _condition_latents(
        self, pixels: Tensor, generator: torch.Generator | None, dtype: torch.dtype
    ) -> tuple[list[Tensor], Tensor]:
        """``[D_0, .., D_{n-1}]`` (coarse to fine) and ``log p(v_y)``: :func:`condition_latents` by ``R``."""
        return condition_latents(self.R, pixels, generator, dtype)

    # ---- density ----------------------------------------------------------------------------
    def _conditional_log_prob(self, h: Tensor, ds: Sequence[Tensor]) -> Tensor:
        """``log p(v | y)`` in nats (eq. 9) from what ``T`` reads, ``h = v - b(y)`` (the shift's log-det is 0)."""
        zs, logdet = self.T.encode_with_features(h, [None] * self.num_levels)
        ls = zs[::-1]
        return logdet + sum(self.component_log_prob(i, ls, ds) for i in range(self.num_levels))

    def _terms(
        self, x: Tensor, cond: Any, generator: torch.Generator | None, noisy_cond: bool, same_noise: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        self.check_target(x)
        raw = self.condition_pixels(cond, x)
        pixels = upsampled_condition(raw, self.scale)
        dtype = next(self.parameters()).dtype
        v, log_q = self.dequantizer(x, generator=generator, dtype=dtype, same_noise=same_noise)
        ds, log_p_y = self._condition_latents(pixels, generator if noisy_cond else None, dtype)
        h = self._into_flow(v, raw).contiguous(memory_format=torch.channels_last)
        return self._conditional_log_prob(h, ds), log_q, log_p_y, pixels

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

    def dequantize(self, x: Tensor, cond: Any = None, generator: torch.Generator | None = None) -> Tensor:
        """One continuous ``v`` of integer targets ``x`` (``cond`` is only checked: the noise ignores it)."""
        self.check_target(x)
        self.check_condition(cond, x)
        return self.dequantizer(x, generator=generator, dtype=next(self.parameters()).dtype)[0]

    def encode(self, v: Tensor, cond: Any = None) -> tuple[list[Tensor], Tensor]:
        r"""Continuous targets ``v`` given ``cond`` -> every ``Z^i_j`` (component by component, each fine
        to coarse) and ``log|det dZ/dv|``: the whole bijection whose change of variables is eq. 9."""
        self.check_target(v)
        raw = self.condition_pixels(cond, v)
        ds, _ = self._condition_latents(upsampled_condition(raw, self.scale), None, v.dtype)
        zs, logdet = self.T.encode_with_features(self._into_flow(v, raw), [None] * self.num_levels)
        ls, out = zs[::-1], []
        for i in range(self.num_levels):
            comp, ld = self.encode_component(i, ls, ds)
            out += comp
            logdet = logdet + ld
        return out, logdet

    def decode(self, zs: Sequence[Tensor], cond: Any = None) -> Tensor:
        """The inverse of :meth:`encode`: generate ``L_0, .., L_{n-1}`` in turn, then invert ``T``."""
        raw = self.condition_pixels(cond)
        ds, _ = self._condition_latents(upsampled_condition(raw, self.scale), None, zs[0].dtype)
        ls: list[Tensor] = []
        rest = list(zs)
        for i in range(self.num_levels):
            count = len(self._levels_of(i))
            ls.append(self.decode_component(i, rest[:count], ls, ds))
            rest = rest[count:]
        if rest:
            raise ValueError(f"got {len(zs)} latents, {len(zs) - len(rest)} expected (see encode)")
        return self._out_of_flow(self.T.decode_with_features(ls[::-1], [None] * self.num_levels), raw)

    # ---- sampling ---------------------------------------------------------------------------
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
        temps = per_scale(temperature, self.num_levels)
        raw = self.condition_pixels(cond)
        self.check_batch(n, raw)
        dtype = next(self.parameters()).dtype
        ds, _ = self._condition_latents(upsampled_condition(raw, self.scale), None, dtype)
        ds = [d.expand(n, *d.shape[1:]) for d in ds]
        ls: list[Tensor] = []
        for i in range(self.num_levels):
            ls.append(self.generate_component(i, ls, ds, temps, generator))
        v = self.T.decode_with_features(ls[::-1], [None] * self.num_levels)
        return self.dequantizer.quantize(self._out_of_flow(v, raw))

    def __repr__(self) -> str:
        return (
            f"CAFlow(task={self.task!r}, target={'x'.join(map(str, self.image_shape))}, "
            f"cond={'x'.join(map(str, self.cond_shape))}, levels={self.num_levels}, "
            f"factorization={self.factorization!r}, share_weights={self.share_weights}, "
            f"blocks={len(self.blocks)}, lam={self.lam}, residual={self.residual})"
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
        register_model(f"caflow-{name}", f"CAFLOW {what} (paper 002), CPU-sized: 3 levels, 4/8/4 steps", task)(
            partial(caflow, task=task, lam=lam)
        )
        paper = f"caflow-{name} at the paper's depth (appendix B): {r}/{t}/{f} steps"
        register_model(f"caflow-{name}-paper", paper, task)(
            partial(caflow, task=task, lam=lam, cond_steps=r, target_steps=t, flow_steps=f)
        )


_register_presets()

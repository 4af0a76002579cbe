r"""Conditional flows for image-to-image tasks (Winkler et al., "Learning likelihoods with conditional
normalizing flows"): super-resolution and binary segmentation.

A multi-scale flow models ``p(y | x)`` for a target ``y`` given a condition image ``x``
(section 3.1, eq. 7). The condition is encoded once, ``h = g(x)``, into one feature map per
level; the couplings, the split priors and the final prior all read their level's features:

- conditional coupling: ``y_b' = s(y_a, h) * y_b + t(y_a, h)``;
- conditional split prior: ``p(z_1 | z_0, x) = N(mu(z_0, h), sigma(z_0, h))``;
- conditional prior: ``p(z | x) = N(mu(h), sigma(h))`` (the last level's split prior with nothing
  kept).

Super-resolution flows see the target relative to the bicubic upsampling ``b(x)`` of the
condition (DESIGN.md section 6), a shift of log-det 0:

.. math::

    \log p(y \mid x) = \log p_{\mathrm{flow}}(y - b(x) \mid x)

so an untrained model sampled at temperature 0 gives the bicubic image, and training adds detail
to it. Their couplings' scales are bounded both ways (``"bounded"``: within a factor 2, after
Liao & He): Glow's sigmoid scale lies in (0, 1), so a sampling pass, which divides by it, could
expand a region of latents ten-thousandfold and saturate it to black.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from msflow.core import InvertibleModule, Shape
from msflow.distributions import standard_normal_log_prob, standard_normal_sample
from msflow.metrics.bpd import bits_per_dim
from msflow.models._registry import register_model
from msflow.models.base import (  # noqa: F401  (check_condition, condition_to_*: imported from here before)
    ConditionalImageFlow,
    check_condition,
    condition_to_float,
    condition_to_pixels,
)
from msflow.models.glow import glow_step
from msflow.models.multiscale import MultiScaleFlow, make_preprocess, multiscale_levels
from msflow.nn.conditioners import SRConditioner, VGGConditioner
from msflow.nn.subnets import SUBNETS, run_subnet
from msflow.transforms import Affine, UniformDequantize
from msflow.transforms.binary_dequant import BinaryDequantize
from msflow.transforms.shift import ConditionalShift, ImageBase


class ConditionalFlow(MultiScaleFlow, ConditionalImageFlow):
    r"""``p(y | x)`` by a multi-scale flow whose every block reads features ``h = g(x)`` (eq. 7).

    .. math::

        \log p(y \mid x) = \log \mathcal N(f(y; h); 0, I) + \log|\det \partial f(y; h) / \partial y|

    With a ``shift`` (super-resolution), ``f`` reads ``y - b(x)`` where ``b(x)`` is
    :meth:`base`, the bicubic upsampling of ``x``; the shift's log-det is 0. Without one, the
    preprocessing centres ``y`` on a constant.

    The flow is convolutional, so a model trained on 32x32 targets also runs on whole photos
    whose sides divide by ``2^levels`` (the ``msflow superres`` command pads and crops).

    Args:
        image_shape: ``(C, H, W)`` of the targets it is trained on.
        cond_shape: ``(C, h, w)`` of the conditions; ``H / h`` is the super-resolution scale.
        levels, keep, preprocess: as in :class:`MultiScaleFlow`.
        conditioner: network mapping a condition in [-1/2, 1/2] to one feature map per level.
        dequantizer: :class:`UniformDequantize` or :class:`BinaryDequantize` (binary targets).
        shift: a :class:`ConditionalShift` applied before ``preprocess``, reading the condition's
            pixels 0..255; ``None`` for a flow measured from the preprocessing's constant.

    Example:
        >>> import torch
        >>> from msflow import create_model
        >>> model = create_model("cflow-sr2", steps=1, hidden=8, features=8, blocks=1, growth=4)
        >>> hr = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
        >>> lr = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
        >>> bicubic = model.dequantizer.quantize(model.base(lr))  # Pillow's bicubic upsampling
        >>> bool(torch.equal(model.sample(2, temperature=0.0, cond=lr), bicubic))  # untrained
        True
        >>> model.bits_per_dim(hr, lr).shape
        torch.Size([2])
        >>> model.sample(3, temperature=0.5, cond=lr[:1]).shape
        torch.Size([3, 3, 32, 32])
    """

    def __init__(
        self,
        image_shape: Shape,
        cond_shape: Shape,
        levels: Sequence[InvertibleModule],
        keep: Sequence[int],
        preprocess: InvertibleModule,
        conditioner: nn.Module,
        dequantizer: nn.Module,
        shift: ConditionalShift | None = None,
    ) -> None:
        super().__init__(image_shape, levels, keep, preprocess, dequantizer.n_bits, conditioner)
        self.dequantizer = dequantizer
        self.cond_shape = tuple(cond_shape)
        self.scale = image_shape[-1] // cond_shape[-1]
        self.shift = shift
        self.to(memory_format=torch.channels_last)

    @property
    def residual(self) -> bool:
        """Whether the flow models the target relative to a function of the condition (:meth:`base`)."""
        return self.shift is not None

    @property
    def task(self) -> str:
        """``"superres"`` when the condition is smaller than the target, else ``"segment"``."""
        return "superres" if self.scale > 1 else "segment"

    @property
    def target_multiple(self) -> int:
        """Target sides must divide by this (one squeeze per level)."""
        return 2 ** len(self.levels)

    def condition_features(self, cond: Any, target: Tensor | None, dtype: torch.dtype) -> list[Tensor]:
        """Each level's features ``h = g(x)`` of a condition checked against ``target``, under the subnet precision."""
        cond = self.check_condition(cond, target)
        c = condition_to_float(cond.to(next(self.parameters()).device), dtype)
        return list(run_subnet(self.cond_encoder, c.contiguous(memory_format=torch.channels_last)))

    def level_features(self, cond: Any) -> list[Tensor]:
        return self.condition_features(cond, None, next(self.parameters()).dtype)

    def _into_flow(self, v: Tensor, cond: Tensor) -> Tensor:
        """``v - b(x)`` for a checked condition ``x`` (``v`` itself without a shift: log-det 0 either way)."""
        if self.shift is None:
            return v
        return self.shift(v, condition_to_pixels(cond.to(v.device)))[0]

    def _out_of_flow(self, h: Tensor, cond: Tensor) -> Tensor:
        """The inverse of :meth:`_into_flow`: ``h + b(x)``."""
        if self.shift is None:
            return h
        return self.shift.inverse(h, condition_to_pixels(cond.to(h.device)))[0]

    def base(self, cond: Any) -> Tensor:
        """``(B, C, H, W)`` continuous targets that a flow input of zero stands for, in the units of ``v``.

        The bicubic upsampling of the condition at bin centres (``dequantizer.quantize`` of it is
        Pillow's bicubic image) for a super-resolution flow; otherwise the preprocessing's constant.
        """
        cond = self.check_condition(cond)
        p = next(self.parameters())
        size = (cond.shape[0], self.image_shape[0], *(d * self.scale for d in cond.shape[-2:]))
        h, _ = self.preprocess.inverse(torch.zeros(size, device=p.device, dtype=p.dtype))
        return self._out_of_flow(h, cond)

    def encode(self, v: Tensor, cond: Any = None) -> tuple[list[Tensor], Tensor]:
        """Continuous targets ``v`` and conditions -> (latents fine to coarse, log-det)."""
        self.check_target(v)
        feats = self.condition_features(cond, v, v.dtype)
        return self.encode_with_features(self._into_flow(v, cond), feats)

    def decode(self, zs: Sequence[Tensor], cond: Any = None) -> Tensor:
        """Latents fine to coarse and conditions -> continuous targets ``v`` (the inverse of :meth:`encode`)."""
        h = self.decode_with_features(zs, self.level_features(cond))
        return self._out_of_flow(h, cond)

    def _dequantize(
        self, x: Tensor, feats: Sequence[Tensor], generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        dtype = next(self.parameters()).dtype
        if isinstance(self.dequantizer, BinaryDequantize):
            return self.dequantizer(x, feats[0], generator=generator, dtype=dtype)
        return self.dequantizer(x, generator=generator, dtype=dtype)

    def dequantize(self, x: Tensor, cond: Any, generator: torch.Generator | None = None) -> Tensor:
        """One continuous ``v`` of integer targets ``x`` (binary noise depends on the condition)."""
        self.check_target(x)
        feats = self.condition_features(cond, x, next(self.parameters()).dtype)
        return self._dequantize(x, feats, generator)[0]

    def _dequantized_terms(self, x: Tensor, cond: Any, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        self.check_target(x)
        feats = self.condition_features(cond, x, next(self.parameters()).dtype)
        v, log_q = self._dequantize(x, feats, generator)
        zs, logdet = self.encode_with_features(self._into_flow(v, cond), feats)
        return logdet + sum(standard_normal_log_prob(z) for z in zs), log_q

    def bits_per_dim(self, x: Tensor, cond: Any = None, generator: torch.Generator | None = None) -> Tensor:
        """``(B,)`` conditional bits/dim of targets ``x`` given ``cond``, with one dequantization draw."""
        log_p_v, log_q = self._dequantized_terms(x, cond, generator)
        dims = math.prod(x.shape[1:])
        return bits_per_dim(log_p_v, dims, self.dequantizer.scale_bits, log_q)

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, cond: Any = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw ``n`` targets ``(n, C, H, W)`` given ``cond`` of batch 1 (repeated) or ``n``.

        Temperature 0 gives the flow's image of the prior's mean, the "mode" of Figure 3: for an
        untrained super-resolution flow, the bicubic upsampling of ``cond`` (:meth:`base`).
        """
        cond = self.check_condition(cond)
        self.check_batch(n, cond)
        h, w = cond.shape[-2] * self.scale, cond.shape[-1] * self.scale
        p = next(self.parameters())
        feats = [f.expand(n, *f.shape[1:]) for f in self.condition_features(cond, None, p.dtype)]
        shapes = self._trace_shapes((self.image_shape[0], h, w))
        zs = [standard_normal_sample((n, *s), temperature, generator, p.device, p.dtype) for s in shapes]
        return self.dequantizer.quantize(self._out_of_flow(self.decode_with_features(zs, feats), cond))


def _conditional_flow(
    image_shape: Shape,
    cond_shape: Shape,
    conditioner: nn.Module,
    levels: int,
    steps: int,
    hidden: int,
    coupling: str,
    subnet: str,
    dequantizer: nn.Module,
    coupling_scale: str = "sigmoid",
    residual: bool = False,
) -> ConditionalFlow:
    step = glow_step(hidden, coupling, coupling_scale, True, subnet)
    blocks, keep = multiscale_levels(image_shape, levels, steps, step, conditioner.level_channels)
    shift = None
    if residual:
        # v - b(x) replaces v - 1/2: the shift does the centring, so the preprocessing is the identity.
        shift = ConditionalShift(ImageBase(image_shape[-1] // cond_shape[-1], image_shape[0]))
        centre = Affine(1.0, 0.0)
    elif isinstance(dequantizer, BinaryDequantize):
        centre = Affine(1.0, 0.0)  # binary dequantization already returns centred values v - 1/2
    else:
        centre = make_preprocess("center")
    return ConditionalFlow(image_shape, cond_shape, blocks, keep, centre, conditioner, dequantizer, shift)


def cflow_superres(
    scale: int = 2,
    size: int = 32,
    channels: int = 3,
    levels: int = 2,
    steps: int = 8,
    hidden: int = 128,
    features: int = 64,
    blocks: int = 4,
    growth: int = 32,
    residual: bool = True,
    coupling_scale: str | None = None,
) -> ConditionalFlow:
    """Super-resolution flow ``p(HR | LR)`` (section 5.1): Glow steps with conditional affine couplings
    and an RRDB conditioner. The paper's size is ``steps=8, hidden=512, features=128, blocks=16``.

    ``residual`` models the HR image relative to the bicubic upsampling of the LR one (off: relative
    to 1/2); ``coupling_scale`` is the couplings' scale function, by default ``"bounded"`` (within a
    factor 2 both ways) with ``residual`` and Glow's ``"sigmoid"`` without. ``residual=False`` alone
    is thus the model of runs trained before these options.
    """
    if size % scale:
        raise ValueError(f"size {size} is not a multiple of scale {scale}")
    conditioner = SRConditioner(channels, scale, levels, features, blocks, growth)
    shape, cond_shape = (channels, size, size), (channels, size // scale, size // scale)
    return _conditional_flow(
        shape,
        cond_shape,
        conditioner,
        levels,
        steps,
        hidden,
        "affine",
        "convnet",
        UniformDequantize(8),
        coupling_scale or ("bounded" if residual else "sigmoid"),
        residual,
    )


DEQUANTIZERS = ("binary", "uniform")


def cflow_segment(
    size: int = 64,
    channels: int = 3,
    levels: int = 2,
    steps: int = 2,
    hidden: int = 32,
    vgg: Sequence[int] = (32, 64, 128),
    dequantization: str = "binary",
    coupling: str = "additive",
    subnet: str = "instancenorm",
    dequantizer_steps: int = 4,
) -> ConditionalFlow:
    """Binary segmentation flow ``p(mask | image)`` (section 5.2): volume-preserving (additive)
    conditional couplings with instance-norm subnets (Table 7), a VGG-like conditioner (Table 4),
    and binary variational dequantization (eq. 8) or, for the ablation, uniform noise."""
    if dequantization not in DEQUANTIZERS:
        raise ValueError(f"unknown dequantization {dequantization!r}; choose one of {', '.join(DEQUANTIZERS)}")
    if subnet not in SUBNETS:
        raise ValueError(f"unknown subnet {subnet!r}; choose one of {sorted(SUBNETS)}")
    conditioner = VGGConditioner(channels, levels, tuple(vgg))
    if dequantization == "binary":
        deq: nn.Module = BinaryDequantize(1, conditioner.level_channels[0], dequantizer_steps, SUBNETS[subnet](hidden))
    else:
        deq = UniformDequantize(1)
    shape, cond_shape = (1, size, size), (channels, size, size)
    return _conditional_flow(shape, cond_shape, conditioner, levels, steps, hidden, coupling, subnet, deq)


def _register_presets() -> None:
    for scale in (2, 4):
        register_model(
            f"cflow-sr{scale}",
            f"conditional flow for x{scale} super-resolution of 32x32 RGB patches (Winkler et al. 5.1)",
            task="superres",
        )(partial(cflow_superres, scale=scale))
    register_model(
        "cflow-sr2-paper",
        "cflow-sr2 at the paper's size: 8 steps, 512 hidden, RRDB 16 blocks x 128 (Tables 5, 6, 8)",
        task="superres",
    )(partial(cflow_superres, scale=2, steps=8, hidden=512, features=128, blocks=16, growth=32))
    register_model(
        "cflow-seg",
        "conditional flow for binary segmentation of 64x64 RGB images, binary dequantization (5.2)",
        task="segment",
    )(cflow_segment)


_register_presets()

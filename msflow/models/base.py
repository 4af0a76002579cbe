r"""What every model declares: the bases of unconditional and conditional image flows (DESIGN.md section 1).

Generic code (``msflow.train``, ``msflow.cli``, ``msflow.analysis``) reads a model only through
what these classes declare. A family states its optional capabilities as class attributes
(``independent_levels``, ``flow_matching``, ...) and overrides the matching methods; the
defaults here are those of a model without the capability, so nobody has to ask a model
``hasattr``. What one training step minimises is the model's :meth:`ImageFlow.training_loss`.

``log_prob`` follows from ``bits_per_dim`` by the one convention of section 6:

.. math::

    \log P(x) = -\mathrm{bpd}(x) \cdot D \ln 2

Example:
    >>> import torch
    >>> from msflow import create_model
    >>> model = create_model("glow-mnist", hidden=8, steps=1)
    >>> model.conditional, model.task, model.n_bits, model.independent_levels
    (False, None, 8, False)
    >>> x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    >>> loss, logged = model.training_loss(x, torch.Generator().manual_seed(0))
    >>> sorted(logged), loss.shape
    (['loss_bpd'], torch.Size([]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from msflow.core import Shape
from msflow.errors import ConfigError, DataError, ShapeError


class StepLoss(NamedTuple):
    """The loss one step minimises and the scalars it logs (``loss_bpd`` when it has bits/dim)."""

    loss: Tensor
    logged: dict[str, Tensor]


class ImageFlow(nn.Module):
    """Base of every model of integer images: ``p(x)``, or ``p(x | cond)`` for a conditional one.

    A subclass provides ``image_shape``, ``num_dims``, ``dequantizer`` and
    ``bits_per_dim(x, cond, generator)``; an invertible one also ``sample_latents(n, temperature,
    generator)``, ``encode(v, cond)`` and ``decode(zs, cond)``, which :meth:`sample` uses.

    Capabilities (class attributes; a family that has one sets it and overrides the methods
    named):

    - ``conditional``: models ``p(target | cond)`` (:class:`ConditionalImageFlow`).
    - ``task``: the image-to-image task (``"superres"``, ``"segment"``, ``"colorize"``, ...), or
      ``None`` for a density of images.
    - ``invertible``: ``encode``/``decode`` exist (False for factorized baselines).
    - ``multiscale``: latents fine to coarse out of ``preprocess`` and ``levels`` ending in split
      priors (Glow-like; per-level terms, interpolation in prior space).
    - ``independent_levels``: one likelihood term per resolution (``num_resolutions``,
      ``level_bits_per_dim``, ``level_dims``, ``sample_resolutions``, ``train.level``).
    - ``flow_matching``: ``level_flow_matching_terms`` (levels made of CNF blocks).
    - ``pyramid_superres``: ``superres`` through its own image pyramid.
    - ``ranks_candidates``: ``bits_per_dim(..., same_noise=True)`` ranks samples against each other.
    - ``probability_map``: ``probability(cond)``, a per-pixel soft map of a binary target.
    """

    conditional: ClassVar[bool] = False
    task: str | None = None
    invertible: ClassVar[bool] = True
    multiscale: ClassVar[bool] = False
    independent_levels: ClassVar[bool] = False
    flow_matching: ClassVar[bool] = False
    pyramid_superres: ClassVar[bool] = False
    ranks_candidates: ClassVar[bool] = False
    probability_map: ClassVar[bool] = False
    cond_shape: Shape | None = None
    density_needs_autograd: bool = False

    image_shape: Shape
    num_dims: int
    dequantizer: nn.Module

    @property
    def n_bits(self) -> int:
        """Bits per sub-pixel of the integer data (1 for binary masks)."""
        return self.dequantizer.n_bits

    # ---- density ----------------------------------------------------------------------------
    def bits_per_dim(self, x: Tensor, cond: Any = None, generator: torch.Generator | None = None) -> Tensor:
        """``(B,)`` bits/dim of integer images ``x`` with one dequantization draw."""
        raise NotImplementedError

    def log_prob(self, x: Tensor, cond: Any = None, generator: torch.Generator | None = None) -> Tensor:
        r"""``(B,)`` lower bound on ``log P(x)`` (or ``log P(x | cond)``) of integer images, in nats."""
        return -self.bits_per_dim(x, cond, generator) * (math.prod(x.shape[1:]) * math.log(2.0))

    def training_bits_per_dim(self, x: Tensor, cond: Any = None, generator: torch.Generator | None = None) -> Tensor:
        """``(B,)`` what training minimises per dimension, in bits: :meth:`bits_per_dim` unless a
        family trains a surrogate (a weighted cross-entropy, CAFLOW's ``+ lambda log p(y)``)."""
        return self.bits_per_dim(x, cond, generator)

    def regularization_loss(self) -> Tensor | float:
        """The regulariser of the last density evaluation (RNODE's terms); 0 without one."""
        return 0.0

    def nfe(self) -> dict[str, int] | None:
        """ODE function evaluations ``{"last", "total"}`` of a continuous flow; ``None`` for others."""
        return None

    def training_loss(
        self, x: Tensor, generator: torch.Generator | None = None, cond: Any = None, level: int | None = None
    ) -> StepLoss:
        """The likelihood loss of one batch (mean :meth:`training_bits_per_dim` plus any
        regulariser) and the scalars to log; ``level`` trains one level of a model with
        ``independent_levels``."""
        if level is not None:
            self.check_level(level)
        return self._with_regularizer(self.training_bits_per_dim(x, cond, generator).mean(), {})

    def _with_regularizer(self, bpd: Tensor, logged: dict[str, Tensor]) -> StepLoss:
        reg = self.regularization_loss()
        if isinstance(reg, Tensor):
            logged["reg"] = reg.detach()
        return StepLoss(bpd + reg, {"loss_bpd": bpd.detach(), **logged})

    # ---- levels -----------------------------------------------------------------------------
    @property
    def num_resolutions(self) -> int:
        """Independent likelihood terms (resolutions); 1 for a model without ``independent_levels``."""
        return 1

    def check_level(self, level: int) -> None:
        """Refuse training or scoring level ``level`` alone unless the model has such a level."""
        if not self.independent_levels:
            raise ConfigError(
                f"train.level={level} needs a multi-resolution model (an mrcnf-* preset); "
                f"{type(self).__name__} has no independent levels"
            )
        if not 0 <= level < self.num_resolutions:
            raise ConfigError(f"train.level must be in 0..{self.num_resolutions - 1} for this model, got {level}")

    def level_bits_per_dim(
        self, x: Tensor, cond: Any = None, generator: torch.Generator | None = None, levels: Sequence[int] | None = None
    ) -> list[Tensor]:
        """Bits/dim of each independent level over its own dimensions (``independent_levels``)."""
        self.check_level(0 if levels is None else levels[0])
        raise NotImplementedError

    def check_flow_matching(self, level: int | None = None) -> None:
        """Refuse, naming the fix, unless flow matching can train the model (or its level ``level``)."""
        raise ConfigError(
            f"train.objective=flow_matching trains continuous flows (an mrcnf-* preset with density=cnf); "
            f"{type(self).__name__} has no vector fields: use train.objective=likelihood"
        )

    def level_flow_matching_terms(
        self, x: Tensor, generator: torch.Generator | None = None, levels: Sequence[int] | None = None
    ) -> list[dict[str, Tensor]]:
        """Per-level simulation-free losses ``{"fm": (B,), ...}`` (``flow_matching``)."""
        self.check_flow_matching(None if levels is None else levels[0])
        raise NotImplementedError

    # ---- sampling ---------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, cond: Any = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw ``n`` uint8 images ``(n, C, H, W)`` at ``temperature``."""
        zs = self.sample_latents(n, temperature, generator)
        return self.dequantizer.quantize(self.decode(zs, cond))

    def sample_resolutions(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> list[Tensor]:
        """``n`` samples at each resolution they are generated through, coarse to fine; the last is
        :meth:`sample`'s (only that one for a model without ``independent_levels``)."""
        return [self.sample(n, temperature=temperature, generator=generator)]


def check_condition(cond: Any, cond_shape: Shape, scale: int, target: Tensor | None, who: str) -> Tensor:
    """Raise :class:`ShapeError` naming the expected shape unless ``cond`` fits a model.

    ``cond`` must be ``(B, C_cond, h, w)`` with the model's channel count; given the ``target``
    batch, one condition per target, with ``h, w`` the target's sides divided by ``scale``.
    """
    if cond is None:
        raise ValueError(f"{who} models p(target | condition) and needs cond=... (a (B, {cond_shape[0]}, h, w) image)")
    if not isinstance(cond, Tensor) or cond.dim() != 4:
        got = f"a {cond.dim()}-D tensor" if isinstance(cond, Tensor) else type(cond).__name__
        raise ShapeError(f"{who} expects condition images (B, {cond_shape[0]}, h, w), got {got}")
    c, h, w = cond.shape[1:]
    if c != cond_shape[0]:
        kinds = {1: "greyscale", 3: "RGB"}
        want = kinds.get(cond_shape[0], f"{cond_shape[0]}-channel")
        raise ShapeError(f"{who} expects {want} condition images ({cond_shape[0]} channels), got {c} channels")
    if target is not None and cond.shape[0] != target.shape[0]:
        raise ShapeError(f"{who} got {target.shape[0]} targets but {cond.shape[0]} conditions: give one per target")
    if target is not None and (h * scale, w * scale) != tuple(target.shape[-2:]):
        th, tw = target.shape[-2:]
        what = f"x{scale} super-resolution" if scale > 1 else "segmentation"
        raise ShapeError(
            f"{who} does {what}: a {th}x{tw} target needs a {th // scale}x{tw // scale} condition "
            f"({cond_shape[0]}x{th // scale}x{tw // scale}), got {c}x{h}x{w}"
        )
    return cond


def condition_to_pixels(cond: Tensor) -> Tensor:
    """A checked ``uint8`` condition (or floats in [0, 1]) as float32 pixel values, integers 0..255."""
    return (cond * 255).round().float() if cond.is_floating_point() else cond.float()


def condition_to_float(cond: Tensor, dtype: torch.dtype) -> Tensor:
    """A ``uint8`` condition image (or floats in [0, 1]) as floats centred on 0, in [-1/2, 1/2]."""
    if cond.is_floating_point():
        if cond.numel() and not (0 <= float(cond.min()) and float(cond.max()) <= 1):
            raise DataError(
                f"condition images are uint8 (0..255) or floats in [0, 1]; got floats in "
                f"[{float(cond.min()):g}, {float(cond.max()):g}]: pass the uint8 images, or divide by 255"
            )
        return cond.to(dtype) - 0.5
    return cond.to(dtype) / 255.0 - 0.5


class ConditionalImageFlow(ImageFlow):
    """Base of the models of ``p(target | cond)`` for an image condition: its checks, written once.

    A subclass sets ``task``, ``image_shape``, ``cond_shape`` and ``scale`` (target side over
    condition side) and gives ``target_multiple`` (what target sides must divide by). Being
    convolutional, a conditional model runs on targets of any such size, so bits/dim and
    ``log_prob`` count the dimensions of the batch given.
    """

    conditional: ClassVar[bool] = True
    cond_shape: Shape
    scale: int
    target_hint: ClassVar[str] = "pad the images (msflow superres pads and crops automatically)"
    """What a shape error on targets suggests."""

    target_multiple: int = 1
    """Target sides must divide by this (a family may make it a property)."""

    def check_target(self, x: Tensor) -> None:
        """Raise a :class:`ShapeError` naming the expected shape unless ``x`` holds targets this model reads."""
        c, side = self.image_shape[0], self.target_multiple
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != c or x.shape[-2] % side or x.shape[-1] % side:
            got = type(x).__name__
            if isinstance(x, Tensor):
                got = "x".join(map(str, x.shape[1:])) if x.dim() == 4 else f"a {x.dim()}-D tensor"
            raise ShapeError(
                f"{self.family_name} expects targets (B, {c}, H, W) with H and W divisible by {side} "
                f"(e.g. {'x'.join(map(str, self.image_shape))}), got {got}; {self.target_hint}"
            )

    @property
    def family_name(self) -> str:
        """How messages name the model."""
        return type(self).__name__

    def check_condition(self, cond: Any, target: Tensor | None = None) -> Tensor:
        """``cond`` unchanged if it fits (one per ``target`` when given, ``scale`` times smaller), else raise."""
        return check_condition(cond, self.cond_shape, self.scale, target, self.family_name)

    def check_batch(self, n: int, cond: Tensor) -> None:
        """Refuse conditions for ``n`` samples unless there is one, or one per sample."""
        if cond.shape[0] not in (1, n):
            raise ShapeError(f"give one condition image or n={n} of them, got {cond.shape[0]}")

    def sample(
        self, n: int, temperature: float = 1.0, cond: Any = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw ``n`` targets ``(n, C, H, W)`` given ``cond`` of batch 1 (repeated) or ``n``."""
        raise NotImplementedError

    def probability(self, cond: Any) -> Tensor:
        """``P(y = 1 | cond)`` per pixel of a binary target (``probability_map``)."""
        raise ConfigError(f"{type(self).__name__} gives no per-pixel probability map")


__all__ = [
    "ConditionalImageFlow",
    "ImageFlow",
    "StepLoss",
    "check_condition",
    "condition_to_float",
    "condition_to_pixels",
]

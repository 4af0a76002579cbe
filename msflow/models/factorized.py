"""Factorized likelihood baselines of Winkler et al.: the same conditioners, independent pixels.

``p(y | x) = prod_d p(y_d | x)`` (eq. 6): each target dimension is independent given the
condition. Section 5.1 compares the conditional flow with a product of discretized logistics
(super-resolution), section 5.2 with a class-weighted Bernoulli (segmentation, eq. 9). Both are
exact discrete likelihoods, so their bits/dim compare directly with a flow's dequantized bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msflow.metrics.bpd import bits_per_dim
from msflow.models._registry import register_model
from msflow.models.base import ConditionalImageFlow, condition_to_float
from msflow.nn.conditioners import RRDBNet, VGGConditioner
from msflow.nn.subnets import run_subnet
from msflow.transforms import UniformDequantize
from msflow.transforms.binary_dequant import BinaryDequantize
from msflow.transforms.preprocess import check_finite_samples


def discretized_logistic_log_prob(k: Tensor, mean: Tensor, log_scale: Tensor, levels: int = 256) -> Tensor:
    r"""``log P(k)`` of integers ``k`` in ``[0, levels)`` under a logistic discretized to bins of width ``1/levels``.

    With bin edges ``a = (k + 1) / levels`` and ``b = k / levels``,
    ``P(k) = sigma((a - mu)/s) - sigma((b - mu)/s)``, evaluated stably as

    .. math::

        \log P(k) = \log\sigma(\alpha) + \log\sigma(-\beta) + \log(1 - e^{\beta - \alpha}),
        \quad \alpha = (a - \mu)/s,\ \beta = (b - \mu)/s

    and the outer bins reach to infinity: ``log P(0) = log sigma(alpha)``,
    ``log P(levels - 1) = log sigma(-beta)``.

    Example:
        >>> import torch
        >>> p = discretized_logistic_log_prob(torch.arange(256.0), torch.tensor(0.5), torch.tensor(-2.0)).exp()
        >>> round(p.sum().item(), 6)
        1.0
    """
    k = k.to(mean.dtype)
    inv_s = torch.exp(-log_scale)
    alpha, beta = ((k + 1) / levels - mean) * inv_s, (k / levels - mean) * inv_s
    middle = F.logsigmoid(alpha) + F.logsigmoid(-beta) + torch.log(-torch.expm1(beta - alpha))
    # The outer bins reach to -inf and +inf; selecting finite branches keeps every gradient finite.
    return torch.where(k <= 0, F.logsigmoid(alpha), torch.where(k >= levels - 1, F.logsigmoid(-beta), middle))


class _Factorized(ConditionalImageFlow):
    """What both baselines share: target values checked, bits/dim from an exact ``log P``."""

    invertible: ClassVar[bool] = False
    check_values: Callable[[Tensor], None]  # raises DataError unless the targets are valid integers

    def check_target(self, x: Tensor) -> None:
        """Refuse targets of the wrong shape or with values outside the model's integers."""
        super().check_target(x)
        self.check_values(x)

    def _bits(self, log_p: Tensor, x: Tensor) -> Tensor:
        # Exact discrete likelihoods: no dequantization noise and no bin-width term.
        return bits_per_dim(log_p.flatten(1).sum(1), math.prod(x.shape[1:]), 0)


class FactorizedSuperRes(_Factorized):
    r"""``p(HR | LR) = prod_d DLogistic(y_d; mu_d, s_d)`` with an RRDB backbone (section 5.1).

    ``mu`` is the bilinearly upsampled LR image plus a learned correction and ``log s`` a learned
    map, both from the RRDB features upsampled to the target size. Table 8 widens the RRDB's
    growth (55 instead of 32) so the baseline has the flow's parameter count.

    Example:
        >>> import torch
        >>> model = FactorizedSuperRes(features=8, blocks=1, growth=4)
        >>> lr = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
        >>> model.sample(2, 0.0, cond=lr).shape
        torch.Size([2, 3, 32, 32])
    """

    task = "superres"
    n_bits = 8

    def __init__(
        self, channels: int = 3, size: int = 32, scale: int = 2, features: int = 64, blocks: int = 4, growth: int = 50
    ) -> None:
        super().__init__()
        self.image_shape = (channels, size, size)
        self.cond_shape = (channels, size // scale, size // scale)
        self.scale = scale
        self.num_dims = channels * size * size
        self.backbone = RRDBNet(channels, features, blocks, growth)
        self.target_multiple = scale
        self.check_values = UniformDequantize(8).check
        self.head = nn.Conv2d(features, 2 * channels, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():  # start at mu = upsampled LR, s = 0.02 (about 5 grey levels)
            self.head.bias.copy_(torch.cat([torch.zeros(channels), torch.full((channels,), math.log(0.02))]))

    def params(self, cond: Any, target: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(mu, log s)`` in [0, 1] units at the target size."""
        cond = self.check_condition(cond, target)
        dtype = self.head.weight.dtype
        c = condition_to_float(cond.to(self.head.weight.device), dtype)
        up = partial(F.interpolate, scale_factor=self.scale, mode="bilinear", align_corners=False)
        out = self.head(up(run_subnet(self.backbone, c)))
        delta, log_s = out.chunk(2, dim=1)
        return up(c) + 0.5 + delta, log_s.clamp(min=-9.0)

    def bits_per_dim(self, x: Tensor, cond: Any = None, generator: torch.Generator | None = None) -> Tensor:
        """``(B,)`` exact bits/dim ``-log2 P(x | cond) / D`` (no dequantization: ``generator`` is unused)."""
        self.check_target(x)
        mean, log_s = self.params(cond, x)
        return self._bits(discretized_logistic_log_prob(x, mean, log_s), x)

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, cond: Any = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """``n`` independent-pixel samples; temperature scales ``s``, and 0 gives the bin of ``mu`` (the mode)."""
        mean, log_s = self.params(cond)
        self.check_batch(n, mean)
        mean, log_s = mean.expand(n, *mean.shape[1:]), log_s.expand(n, *log_s.shape[1:])
        where = generator.device if generator is not None else mean.device
        u = torch.rand(mean.shape, generator=generator, device=where, dtype=mean.dtype).to(mean.device)
        u = u.clamp(1e-6, 1 - 1e-6)
        v = mean + temperature * log_s.exp() * (torch.log(u) - torch.log1p(-u))
        return UniformDequantize(8).quantize(v)  # refuses NaN, as every sampler's quantization does


class FactorizedSegmenter(_Factorized):
    r"""Class-weighted Bernoulli ``p(y | x)`` of eq. 9 with the flow's VGG backbone (section 5.2).

    .. math::

        P(y_j \mid x) = \frac{p_j^{\beta y_j} (1 - p_j)^{(1-\beta)(1 - y_j)}}{p_j^{\beta} + (1 - p_j)^{1-\beta}}

    Training minimises the numerator only (the weighted cross-entropy of the literature,
    :meth:`training_bits_per_dim`); :meth:`bits_per_dim` includes the normaliser, as the paper
    reports. ``P(y_j = 1 | x)`` is the soft map for precision-recall curves and for samples.
    The paper sets beta "to about 10%" without saying which class it weights; the default here
    is 0.9 on vessels, HED's choice (the negatives' share), so the rare class counts more.

    Example:
        >>> import torch
        >>> model = FactorizedSegmenter(size=16, vgg=(4, 4, 4))
        >>> image = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
        >>> model.probability(image).shape
        torch.Size([2, 1, 16, 16])
    """

    task = "segment"
    n_bits = 1
    probability_map: ClassVar[bool] = True

    def __init__(
        self,
        channels: int = 3,
        size: int = 64,
        levels: int = 2,
        vgg: tuple[int, ...] = (32, 64, 128),
        beta: float = 0.9,
    ) -> None:
        super().__init__()
        if not 0 < beta < 1:
            raise ValueError(f"beta must be in (0, 1), got {beta}")
        self.image_shape = (1, size, size)
        self.cond_shape = (channels, size, size)
        self.scale = 1
        self.num_dims = size * size
        self.beta = beta
        self.backbone = VGGConditioner(channels, levels, tuple(vgg))
        self.target_multiple = 2**levels
        self.check_values = BinaryDequantize.check
        self.head = nn.Conv2d(sum(self.backbone.level_channels), 1, 3, padding=1)

    def logits(self, cond: Any, target: Tensor | None = None) -> Tensor:
        """The per-pixel ``logit p_j`` from every level's features upsampled to full size."""
        cond = self.check_condition(cond, target)
        c = condition_to_float(cond.to(self.head.weight.device), self.head.weight.dtype)
        size = c.shape[-2:]
        feats = [
            F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in run_subnet(self.backbone, c)
        ]
        return self.head(torch.cat(feats, dim=1))

    def _terms(self, x: Tensor, cond: Any) -> tuple[Tensor, Tensor]:
        self.check_target(x)
        logit = self.logits(cond, x)
        log_p, log_1mp = F.logsigmoid(logit), F.logsigmoid(-logit)
        y = x.to(logit.dtype)
        numerator = self.beta * y * log_p + (1 - self.beta) * (1 - y) * log_1mp
        normaliser = torch.logaddexp(self.beta * log_p, (1 - self.beta) * log_1mp)
        return numerator, normaliser

    def bits_per_dim(self, x: Tensor, cond: Any = None, generator: torch.Generator | None = None) -> Tensor:
        """``(B,)`` exact bits/dim of binary masks under the normalised eq. 9."""
        numerator, normaliser = self._terms(x, cond)
        return self._bits(numerator - normaliser, x)

    def training_bits_per_dim(self, x: Tensor, cond: Any = None, generator: torch.Generator | None = None) -> Tensor:
        """The weighted cross-entropy (eq. 9's numerator) in bits/dim: what training minimises."""
        numerator, _ = self._terms(x, cond)
        return self._bits(numerator, x)

    def probability(self, cond: Any) -> Tensor:
        """``P(y_j = 1 | x)`` of the normalised eq. 9: the soft segmentation."""
        logit = self.logits(cond)
        a, b = self.beta * F.logsigmoid(logit), (1 - self.beta) * F.logsigmoid(-logit)
        return torch.sigmoid(a - b)

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, cond: Any = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """``n`` factored Bernoulli masks; temperature 0 thresholds the soft map at 1/2."""
        prob = self.probability(cond)
        check_finite_samples(prob)  # a NaN probability would otherwise draw 0 everywhere
        self.check_batch(n, prob)
        prob = prob.expand(n, *prob.shape[1:])
        if temperature == 0:
            return (prob > 0.5).to(torch.uint8)
        where = generator.device if generator is not None else prob.device
        u = torch.rand(prob.shape, generator=generator, device=where, dtype=prob.dtype).to(prob.device)
        return (u < prob).to(torch.uint8)


def _register_presets() -> None:
    for scale in (2, 4):
        register_model(
            f"factorized-sr{scale}",
            f"factorized discretized-logistic baseline for x{scale} super-resolution (Winkler et al. 5.1, Table 8)",
            task="superres",
        )(partial(FactorizedSuperRes, scale=scale))
    register_model(
        "factorized-seg", "factorized weighted-Bernoulli segmentation baseline (Winkler et al. eq. 9)", task="segment"
    )(FactorizedSegmenter)


_register_presets()

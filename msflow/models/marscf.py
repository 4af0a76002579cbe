"""mAR-SCF (Bhattacharyya, Mahajan et al. 2020): a multi-scale flow with multi-scale autoregressive priors.

Each level is Glow's ``squeeze -> K x STEPOFFLOW -> split``, where STEPOFFLOW is ActNorm, an
LU 1x1 conv and a coupling: affine (32 per level in the paper) or MixLogCDF (4 per level;
supplement B). The split half ``l_i`` goes to a prior: ``"mar"``, the channel-autoregressive
ConvLSTM prior ``p(l_i^j | l_i^{<j}, r_i)`` (:class:`MARSplitPrior`; the top level without
``r``), or ``"gaussian"``, Glow's conditional Gaussian split prior, for ablations. Both are
invertible standardisations, so the rest of :class:`MultiScaleFlow` is unchanged and sampling
with temperature scales the N(0, I) latents.

Sampling (MARPS) draws the levels coarse to fine, and within a level with the mAR prior the
channels one at a time: with ``C_i`` the factored channels of level ``i`` (Lemma A.1,
``C_i = 2^i C`` and ``C_n = 2^{n+1} C`` at the last level for ``C x N x N`` images), the number of
sequential steps is ``sum_i C_i``, which grows like ``N`` when the number of levels grows
like ``log2 N`` (supplement C).

Preset decisions where the papers are silent (IMPLEMENTATION_NOTES, paper 001): the ConvLSTM
has kernel 5 and dilation 2 at the first level (reference), kernel 3 and dilation 1 elsewhere;
MixLogCDF couplings use msflow's residual subnet with channel attention in place of Flow++'s
gated convolutions with self-attention.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from msflow.core import FlowSequential, InvertibleModule, Shape
from msflow.models._registry import register_model
from msflow.models.multiscale import MultiScaleFlow, StepFactory, check_squeezable, make_preprocess
from msflow.nn.subnets import SUBNETS
from msflow.transforms import ActNorm, AffineCoupling, GaussianSplitPrior, InvConv1x1, Squeeze
from msflow.transforms.mar_prior import MARSplitPrior
from msflow.transforms.mixlogcdf import MixLogCDFCoupling

PriorFactory = Callable[[int, int, int, int], InvertibleModule]
"""``prior(num_channels, keep, cond_channels, level) -> split prior`` of one level."""

COUPLINGS: dict[str, type[InvertibleModule]] = {"affine": AffineCoupling, "mixlogcdf": MixLogCDFCoupling}
DEFAULT_STEPS = {"affine": 32, "mixlogcdf": 4}  # couplings per level, supplement B
DEFAULT_SUBNET = {"affine": "convnet", "mixlogcdf": "resnet"}


def marscf_step(hidden: int, coupling: str = "affine", subnet: str | None = None, mixtures: int = 32) -> StepFactory:
    """STEPOFFLOW: ActNorm, LU 1x1 conv, then an affine (Glow's sigmoid scale) or MixLogCDF coupling."""
    if coupling not in COUPLINGS:
        raise ValueError(f"unknown coupling {coupling!r}; choose one of {sorted(COUPLINGS)}")
    subnet = subnet or DEFAULT_SUBNET[coupling]
    if subnet not in SUBNETS:
        raise ValueError(f"unknown subnet {subnet!r}; choose one of {sorted(SUBNETS)}")
    make_subnet, coupling_cls = SUBNETS[subnet](hidden), COUPLINGS[coupling]
    extra = {"mixtures": mixtures} if coupling == "mixlogcdf" else {}

    def step(channels: int, cond_channels: int) -> Sequence[InvertibleModule]:
        return [
            ActNorm(channels),
            InvConv1x1(channels, lu=True),
            coupling_cls(channels, subnet=make_subnet, cond_channels=cond_channels, **extra),
        ]

    return step


def mar_prior(hidden: int = 32, layers: int = 3) -> PriorFactory:
    """The mAR prior of each level: kernel 5, dilation 2 at the first (finest) level, 3 and 1 above."""

    def prior(channels: int, keep: int, cond_channels: int, level: int) -> InvertibleModule:
        kernel, dilation = (5, 2) if level == 0 else (3, 1)
        return MARSplitPrior(channels, keep, cond_channels, hidden, layers, kernel, dilation)

    return prior


def gaussian_prior() -> PriorFactory:
    """Glow's learned Gaussian split prior, conditioned on the kept half (the ``"gaussian"`` ablation)."""
    return lambda channels, keep, cond_channels, level: GaussianSplitPrior(channels, keep, cond_channels)


def lemma_a1_channels(channels: int, levels: int) -> list[int]:
    """Factored channels per level of Lemma A.1: ``2^i C`` for ``i < n``, ``2^{n+1} C`` at the last level ``n``.

    Example:
        >>> lemma_a1_channels(3, 3)  # CIFAR-10: 6 + 12 + 48 sequential sampling steps
        [6, 12, 48]
    """
    if levels < 1:
        raise ValueError(f"need at least one level, got {levels}")
    return [2**i * channels for i in range(1, levels)] + [2 ** (levels + 1) * channels]


def sequential_sampling_steps(model: MultiScaleFlow) -> list[int]:
    """Sequential prior evaluations per level when sampling, fine to coarse.

    A level's split prior is its last block; an mAR prior takes one step per factored channel,
    a Gaussian prior one parallel draw.
    """
    last_blocks = (getattr(level, "blocks", [level])[-1] for level in model.levels)
    return [int(getattr(block, "num_sequential_steps", 1)) for block in last_blocks]


class MARSCF(MultiScaleFlow):
    """A :class:`MultiScaleFlow` that reports its sequential sampling cost (Lemma A.1, MARPS).

    Example:
        >>> import torch
        >>> model = marscf((1, 8, 8), levels=2, steps=1, hidden=8, mixtures=2, lstm_hidden=4)
        >>> model.sequential_steps_per_level(), model.num_sequential_steps()
        ([2, 8], 10)
        >>> model.sample(2, temperature=0.7).shape
        torch.Size([2, 1, 8, 8])
    """

    def sequential_steps_per_level(self) -> list[int]:
        """Sequential prior steps of each level when sampling, fine to coarse."""
        return sequential_sampling_steps(self)

    def num_sequential_steps(self) -> int:
        """Total sequential prior steps to sample (levels are drawn one after another)."""
        return sum(self.sequential_steps_per_level())


def marscf(
    image_shape: Shape,
    levels: int = 3,
    steps: int | None = None,
    hidden: int = 96,
    coupling: str = "mixlogcdf",
    prior: str = "mar",
    mixtures: int = 32,
    subnet: str | None = None,
    lstm_hidden: int = 32,
    lstm_layers: int = 3,
    preprocess: str = "center",
    alpha: float = 0.05,
    n_bits: int = 8,
    cond_channels: Sequence[int] | None = None,
) -> MARSCF:
    """An mAR-SCF model for ``image_shape``.

    Args:
        image_shape: ``(C, H, W)``; ``H`` and ``W`` must divide by ``2^levels``.
        levels: levels (squeezes); the last has no split.
        steps: STEPOFFLOWs per level (default 32 for affine, 4 for MixLogCDF couplings).
        hidden: width of the coupling networks.
        coupling: ``"affine"`` or ``"mixlogcdf"``.
        prior: ``"mar"`` (ConvLSTM, channel-autoregressive) or ``"gaussian"`` (Glow's split prior).
        mixtures: logistic components of each MixLogCDF coupling.
        subnet: coupling-network family (``"convnet"`` or ``"resnet"``; default by coupling).
        lstm_hidden: ConvLSTM state channels of the mAR prior.
        lstm_layers: ConvLSTM layers of the mAR prior.
        preprocess: ``"center"`` or ``"logit"``.
        alpha: logit squeeze when ``preprocess="logit"``.
        n_bits: bits per sub-pixel of the data.
        cond_channels: channels of condition features per level (default none).

    Example:
        >>> model = marscf((1, 28, 28), levels=2, steps=1, hidden=8, mixtures=2, lstm_hidden=4)
        >>> [tuple(s) for s in model.latent_shapes()], model.num_sequential_steps()
        ([(2, 14, 14), (8, 7, 7)], 10)
    """
    priors: dict[str, Callable[[], PriorFactory]] = {
        "mar": lambda: mar_prior(lstm_hidden, lstm_layers),
        "gaussian": gaussian_prior,
    }
    if prior not in priors:
        raise ValueError(f"unknown prior {prior!r}; choose one of {sorted(priors)}")
    step = marscf_step(hidden, coupling, subnet, mixtures)
    steps = DEFAULT_STEPS[coupling] if steps is None else steps
    if levels < 1 or steps < 1:
        raise ValueError(f"need at least one level and one step, got {levels} levels, {steps} steps")
    check_squeezable(tuple(image_shape), levels)
    make_prior = priors[prior]()
    cond = list(cond_channels or [0] * levels)
    flows, keep, channels = [], [], image_shape[0]
    for i in range(levels):
        channels *= 4
        kept = 0 if i == levels - 1 else channels // 2
        blocks: list[InvertibleModule] = [Squeeze()]
        for _ in range(steps):
            blocks.extend(step(channels, cond[i]))
        blocks.append(make_prior(channels, kept, cond[i], i))
        flows.append(FlowSequential(*blocks))
        keep.append(kept)
        channels = kept
    return MARSCF(tuple(image_shape), flows, keep, make_preprocess(preprocess, alpha), n_bits)


# data: (image shape, levels, coupling width {coupling: hidden}, logit alpha). 28x28 takes 2 levels
# (28 -> 14 -> 7) with no padding, like glow-mnist; the 32x32 sets take the paper's 3.
_PRESETS: dict[str, tuple[Shape, int, dict[str, int], float]] = {
    "mnist5k": ((1, 28, 28), 2, {"affine": 256, "mixlogcdf": 64}, 1e-6),
    "mnist": ((1, 28, 28), 2, {"affine": 256, "mixlogcdf": 64}, 1e-6),
    "cifar10": ((3, 32, 32), 3, {"affine": 512, "mixlogcdf": 96}, 0.05),
    "imagenet32": ((3, 32, 32), 3, {"affine": 512, "mixlogcdf": 96}, 0.05),
    "patches32": ((3, 32, 32), 3, {"affine": 256, "mixlogcdf": 64}, 0.05),
}


def _preset(shape: Shape, levels: int, widths: dict[str, int], alpha: float) -> Callable[..., MARSCF]:
    def build(coupling: str = "mixlogcdf", hidden: int | None = None, **overrides: Any) -> MARSCF:
        if hidden is None:
            if coupling not in widths:
                raise ValueError(f"unknown coupling {coupling!r}; choose one of {sorted(widths)}")
            hidden = widths[coupling]
        options = {"image_shape": shape, "levels": levels, "alpha": alpha, **overrides}
        return marscf(coupling=coupling, hidden=hidden, **options)

    return build


def _register_presets() -> None:
    for data, (shape, levels, widths, alpha) in _PRESETS.items():
        size = "x".join(map(str, shape))
        register_model(
            f"marscf-{data}",
            f"mAR-SCF for {data} ({size}): {levels} levels; prior=mar|gaussian, coupling=mixlogcdf "
            f"(4 steps, {widths['mixlogcdf']} hidden)|affine (32 steps, {widths['affine']} hidden)",
        )(_preset(shape, levels, widths, alpha))


_register_presets()

__all__ = [
    "COUPLINGS",
    "MARSCF",
    "gaussian_prior",
    "lemma_a1_channels",
    "mar_prior",
    "marscf",
    "marscf_step",
    "sequential_sampling_steps",
]

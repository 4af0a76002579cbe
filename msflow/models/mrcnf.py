"""Multi-Resolution Continuous Normalizing Flow presets (Voleti et al., paper 000).

Each level is a stack of ``steps`` CNF blocks (``bl`` in Table 4) whose vector fields are four
3x3 convolutions with 64 hidden channels, softplus, time as an extra channel and, below the
top, the coarser image concatenated to the input (appendix 8.3); each block integrates over
[0, 1]. ``density="coupling"`` swaps every level for a conditional Glow stack (ActNorm, 1x1
conv, affine coupling fed the coarser image), the Wavelet-Flow-like variant.

Defaults follow the reference CIFAR-10 script: Hutchinson trace with a Gaussian probe, RNODE
weights 0.01, adjoint gradients, ``bosh3`` at 1e-3 for training and ``dopri5`` at 1e-5 for
evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from msflow.core import FlowSequential, Inverse, InvertibleModule, Shape
from msflow.errors import ShapeError
from msflow.models._registry import register_model
from msflow.models.multires import LevelFactory, MultiResolutionFlow, build_multires
from msflow.models.multiscale import make_preprocess
from msflow.models.tarflow_levels import tarflow_density
from msflow.nn.odefunc import conv_vector_field
from msflow.nn.subnets import conv_subnet
from msflow.transforms import CNF, ActNorm, AffineCoupling, AffineInjector, InvConv1x1, Squeeze
from msflow.transforms.ode_solver import ODESolverConfig, as_solver_config

DEFAULT_SOLVER = {
    "train": {"method": "bosh3", "rtol": 1e-3, "atol": 1e-3},
    "eval": {"method": "dopri5", "rtol": 1e-5, "atol": 1e-5},
}
"""MRCNF's CIFAR-10 script: a cheap solver in training, a tight one for test bits/dim."""

BLOCKS_PER_LEVEL = {1: 4, 2: 8, 3: 6, 4: 8}
"""Table 4: CNF blocks per resolution by number of resolutions (its middle 1-resolution row)."""


def cnf_density(
    steps: int = 6,
    hidden: int = 64,
    layers: int = 3,
    end_time: float = 1.0,
    divergence: str = "hutchinson",
    probe: str = "gaussian",
    solver: ODESolverConfig | Mapping[str, Any] | None = None,
    adjoint: bool = True,
    kinetic_weight: float = 0.01,
    jacobian_weight: float = 0.01,
    steer: float = 0.0,
    normalize_details: bool = False,
) -> LevelFactory:
    r"""Levels of ``steps`` :class:`~msflow.transforms.CNF` blocks; arguments as in the block.

    ``normalize_details`` puts an exact affine normaliser in front of the CNF blocks of every
    conditional (detail) level: an :class:`~msflow.transforms.ActNorm` of the detail channels,
    then an :class:`~msflow.transforms.AffineInjector` whose shift and log-scale are a network of
    the coarser image only,

    .. math::

        h = \big(a(y) \, e^{s(c)} + t(c)\big), \qquad
        \log\left|\det \frac{\partial h}{\partial y}\right| = \textstyle\sum (\log|a'| + s(c)),

    with ``|s| < 6`` (the ``"wide"`` scale). The coarse image says where the picture is flat,
    where detail coefficients are only dequantization noise (~0.0014 on MNIST) and elsewhere up
    to ~0.3; the normaliser brings both to unit scale, so the CNF that follows never has to
    expand a near-constant input several hundred times (what made flow matching's detail level
    diverge). Both maps start as the identity after ActNorm's data-dependent initialisation.

    Example:
        >>> level = cnf_density(steps=2, hidden=8)(3, 1, (3, 4, 4))
        >>> len(level), level[0].field.cond_channels
        (2, 1)
        >>> [type(b).__name__ for b in cnf_density(steps=1, hidden=8, normalize_details=True)(3, 1, (3, 4, 4))]
        ['ActNorm', 'AffineInjector', 'CNF']
    """
    if steps < 1:
        raise ValueError(f"a CNF level needs at least one block, got steps={steps}")
    field = conv_vector_field(hidden, layers)
    solver = as_solver_config(DEFAULT_SOLVER if solver is None else solver)
    options = {
        "divergence": divergence,
        "probe": probe,
        "solver": solver,
        "adjoint": adjoint,
        "kinetic_weight": kinetic_weight,
        "jacobian_weight": jacobian_weight,
        "steer": steer,
    }

    def build(channels: int, cond_channels: int, shape: Shape) -> InvertibleModule:
        blocks: list[InvertibleModule] = []
        if normalize_details and cond_channels > 0:
            injector = AffineInjector(channels, cond_channels, conv_subnet(hidden), scale="wide")
            blocks += [ActNorm(channels), injector]
        blocks += [CNF(field(channels, cond_channels), end_time, **options) for _ in range(steps)]
        return FlowSequential(*blocks)

    return build


def coupling_density(steps: int = 8, hidden: int = 64, scale: str = "sigmoid") -> LevelFactory:
    """Levels of ``steps`` Glow steps (ActNorm, LU 1x1 conv, affine coupling given the condition).

    A one-channel level (a grey top image) is squeezed to four channels inside the level, so
    its latent keeps the image's shape.

    Example:
        >>> level = coupling_density(steps=1, hidden=8)(1, 0, (1, 4, 4))
        >>> [type(b).__name__ for b in level]
        ['Squeeze', 'ActNorm', 'InvConv1x1', 'AffineCoupling', 'Inverse']
    """
    if steps < 1:
        raise ValueError(f"a coupling level needs at least one step, got steps={steps}")

    def build(channels: int, cond_channels: int, shape: Shape) -> InvertibleModule:
        _, h, w = shape
        squeeze = channels < 2
        if squeeze and (h % 2 or w % 2):
            raise ShapeError(
                f"the coupling density needs 2+ channels, and a {channels}x{h}x{w} top level cannot be squeezed; "
                "use density='cnf', one resolution fewer, or pad the images"
            )
        inner = 4 * channels if squeeze else channels
        blocks: list[InvertibleModule] = []
        for _ in range(steps):
            coupling = AffineCoupling(inner, subnet=conv_subnet(hidden), scale=scale, cond_channels=cond_channels)
            blocks += [ActNorm(inner), InvConv1x1(inner), coupling]
        return FlowSequential(*([Squeeze(), *blocks, Inverse(Squeeze())] if squeeze else blocks))

    return build


DENSITIES = {"cnf": cnf_density, "coupling": coupling_density, "tarflow": tarflow_density}
"""Level densities by name: each maps ``(steps, hidden, ...)`` to a level factory."""


def mrcnf(
    image_shape: Shape,
    resolutions: int = 3,
    density: str = "cnf",
    steps: int | None = None,
    hidden: int = 64,
    pyramid: str = "unimodular",
    preprocess: str = "logit",
    alpha: float = 0.05,
    multires_noise: bool = False,
    end_time: float = 1.0,
    divergence: str = "hutchinson",
    probe: str = "gaussian",
    solver: Mapping[str, Any] | None = None,
    adjoint: bool = True,
    kinetic_weight: float = 0.01,
    jacobian_weight: float = 0.01,
    steer: float = 0.0,
    normalize_details: bool = False,
    blocks_per_level: Mapping[int, int] | None = None,
) -> MultiResolutionFlow:
    """An MRCNF for ``image_shape`` with ``resolutions`` levels.

    Args:
        image_shape: ``(C, H, W)``.
        resolutions: ``S`` (1: a single-resolution CNF, the RNODE baseline).
        density: ``"cnf"``, ``"coupling"`` or ``"tarflow"`` (Transformer autoregressive levels,
            :mod:`msflow.models.tarflow_levels`; the options from ``end_time`` to ``steer`` apply
            to ``"cnf"`` only).
        steps: blocks per level (default: :data:`BLOCKS_PER_LEVEL`, Table 4).
        hidden: hidden channels of the vector fields (or coupling nets).
        pyramid: ``"unimodular"`` (eq. 7), ``"haar"`` (eq. 6) or ``"orthogonal"``.
        preprocess: ``"logit"`` (with ``alpha``) or ``"center"``, applied to the top image only.
        alpha: logit margin.
        multires_noise: per-level base standard deviations of one decomposed noise image.
        end_time: integration time of each CNF block.
        divergence: ``"hutchinson"`` or ``"exact"`` trace.
        probe: ``"gaussian"`` or ``"rademacher"`` Hutchinson probe.
        solver: ``{"train": {...}, "eval": {...}}`` solver settings (default :data:`DEFAULT_SOLVER`).
        adjoint: adjoint gradients (else back-propagation through the solver).
        kinetic_weight: RNODE kinetic-energy weight.
        jacobian_weight: RNODE Jacobian-norm weight.
        steer: STEER's half-width ``b`` of the end-time distribution (0: off).
        normalize_details: an exact conditional affine normaliser before each detail level's
            CNF blocks (see :func:`cnf_density`; not in the paper, off by default).
        blocks_per_level: the preset's Table 4 column (resolutions -> blocks).
    """
    if density not in DENSITIES:
        raise ValueError(f"unknown density {density!r}; choose one of {sorted(DENSITIES)}")
    table = {**BLOCKS_PER_LEVEL, **(blocks_per_level or {})}
    options: dict[str, Any] = {"steps": steps or table.get(resolutions, 6), "hidden": hidden}
    if density == "cnf":
        options.update(end_time=end_time, divergence=divergence, probe=probe, solver=solver, adjoint=adjoint)
        options.update(kinetic_weight=kinetic_weight, jacobian_weight=jacobian_weight, steer=steer)
        options.update(normalize_details=normalize_details)
    elif normalize_details:
        raise ValueError("normalize_details applies to density='cnf' (coupling levels normalise with ActNorm already)")
    factory = DENSITIES[density](**options)
    return build_multires(
        tuple(image_shape), resolutions, factory, pyramid, make_preprocess(preprocess, alpha), 8, multires_noise
    )


# name: (image shape, default resolutions, Table 4 overrides, logit alpha)
_PRESETS: dict[str, tuple[Shape, int, dict[int, int], float]] = {
    "mnist5k": ((1, 28, 28), 3, {}, 1e-6),
    "mnist": ((1, 28, 28), 3, {}, 1e-6),
    "cifar10": ((3, 32, 32), 3, {}, 0.05),
    "imagenet32": ((3, 32, 32), 3, {}, 0.05),
    "imagenet64": ((3, 64, 64), 3, {3: 8}, 0.05),
    "imagenet128": ((3, 128, 128), 4, {4: 8}, 0.05),
    "patches32": ((3, 32, 32), 3, {}, 0.05),
}


def _register_presets() -> None:
    for data, (shape, resolutions, table, alpha) in _PRESETS.items():
        size = "x".join(map(str, shape))
        blocks = {**BLOCKS_PER_LEVEL, **table}[resolutions]
        most = 1
        while most < 4 and shape[1] % 2**most == 0 and shape[2] % 2**most == 0:
            most += 1
        register_model(
            f"mrcnf-{data}",
            f"MRCNF for {data} ({size}): {resolutions} resolutions x {blocks} CNF blocks, 64 hidden "
            f"(resolutions=1..{most}, density=cnf|coupling|tarflow)",
            cnf=True,
        )(partial(mrcnf, image_shape=shape, resolutions=resolutions, alpha=alpha, blocks_per_level=table))


_register_presets()

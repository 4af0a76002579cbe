"""TarFlow as a level density of the multi-resolution container (``mrcnf-* density=tarflow``).

Level ``s`` of :class:`~msflow.models.multires.MultiResolutionFlow` models the details
``y_s`` given the coarser image ``x_{s+1}`` (paper 000, eq. 11). Here that is a stack of
:class:`~msflow.transforms.tarflow.TarFlowBlock` s whose tokens are patches of ``y_s`` and whose
condition is the coarser image, patchified alike (each patch of the coarse image conditions the
detail token at the same place, through adaptive layer norm); the top level is an unconditional
TarFlow of the coarsest image. Like every level density, each is trainable alone
(``train.level``) and the levels are assembled as MRCNF's are.

Example:
    >>> level = tarflow_density(steps=2, hidden=16)(3, 1, (3, 14, 14))
    >>> [(type(b).__name__, b.patch, b.reverse, b.cond_channels) for b in level]
    [('TarFlowBlock', 2, False, 1), ('TarFlowBlock', 2, True, 1)]
    >>> tarflow_density(steps=1, hidden=16)(1, 0, (1, 7, 7))[0].patch  # 7 is odd: pixels as tokens
    1
"""

from __future__ import annotations

from msflow.core import FlowSequential, InvertibleModule, Shape
from msflow.models.multires import LevelFactory
from msflow.transforms.tarflow import TarFlowBlock


def level_patch(shape: Shape, patch: int) -> int:
    """The largest side ``<= patch`` that divides both sides of ``shape`` (1 always does)."""
    _, h, w = shape
    return next(p for p in range(patch, 0, -1) if h % p == 0 and w % p == 0)


def tarflow_density(steps: int = 4, hidden: int = 64, layers: int = 2, patch: int = 2) -> LevelFactory:
    """Levels of ``steps`` TarFlow blocks (alternating token order) of ``layers`` Transformer
    layers, width ``hidden``, on patches of side ``patch`` (smaller where a level's sides need)."""
    if steps < 1:
        raise ValueError(f"a TarFlow level needs at least one block, got steps={steps}")

    def build(channels: int, cond_channels: int, shape: Shape) -> InvertibleModule:
        p = level_patch(shape, patch)
        return FlowSequential(
            *(
                TarFlowBlock(tuple(shape), p, hidden, layers, cond_channels=cond_channels, reverse=i % 2 == 1)
                for i in range(steps)
            )
        )

    return build

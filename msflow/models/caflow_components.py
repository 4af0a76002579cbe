r"""CAFLOW's conditional autoregressive flows ``F_i`` and their inverses ``G_i`` (paper 002, section 4.2).

``F_i`` models the target latent ``L_i`` given the coarser target latents ``L~_i = [L_{i-1}, ..,
L_0]`` and the condition latents ``D~_{i+1} = [D_i, .., D_0]`` (eq. 8). It is made of blocks
``f^i_j``, ``j = i, .., 0`` (coarse is 0): ``f^i_i`` maps ``L_i`` given ``D_i`` and splits off
``Z^i_i``; each ``f^i_j``, ``j < i``, squeezes what was kept, reads ``[L_j, D_j]`` and splits off
``Z^i_j``; the last keeps nothing. With ``factorization="dual-glow"`` (eq. 6) ``F_i`` is ``f^i_i``
alone. Every ``Z^i_j`` is scored by ``N(0, I)``: the bracket of eq. 9.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from msflow.core import FlowSequential, Shape
from msflow.distributions import standard_normal_log_prob, standard_normal_sample
from msflow.models.multiscale import MultiScaleFlow, split_kept


class ConditionalComponents:
    """The flows ``F_i`` of :class:`~msflow.models.caflow.CAFlow`, as methods of the model.

    A mixin without state of its own: the model holds the blocks (``blocks``, and ``_route`` from
    :func:`~msflow.models.caflow_parts.component_blocks`), so checkpoints keep their keys.
    Latent lists ``ls`` and ``ds`` are coarse to fine (the paper's order).
    """

    blocks: nn.ModuleList
    _route: list[list[int]]
    factorization: str
    num_levels: int
    T: MultiScaleFlow

    def block(self, i: int, j: int) -> FlowSequential:
        """The block ``f^i_j`` of the ``i``-th conditional flow at level ``j`` (0: coarsest)."""
        return self.blocks[self._route[i][j]]

    def _levels_of(self, i: int) -> range:
        """Levels ``j`` of ``F_i`` in the density direction (fine to coarse)."""
        return range(i, -1, -1) if self.factorization == "autoregressive" else range(i, i - 1, -1)

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
            h, z = split_kept(h, 0 if self._keeps_nothing(j) else h.shape[1] // 2)
            zs.append(z)
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


__all__ = ["ConditionalComponents"]

r"""What trains the CNF levels of a multi-resolution flow: flow matching and RNODE's hooks.

A mixin of :class:`~msflow.models.multires.MultiResolutionFlow`, kept apart from the density so
each file holds one concept. It needs the container's ``levels``, ``decompose``, ``_condition``,
``top_preprocess``, ``prior_stds`` and ``_dequantize``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from msflow.core import FlowSequential, InvertibleModule
from msflow.distributions import standard_normal_log_prob
from msflow.errors import ConfigError
from msflow.transforms.cnf import CNF, cnf_blocks
from msflow.transforms.flow_matching import flow_matching_loss


class CNFLevelTraining:
    """Flow-matching losses per level and the RNODE regulariser / NFE hooks of CNF levels."""

    def level_cnf_blocks(self, s: int) -> tuple[list[InvertibleModule], list[CNF]]:
        """Level ``s`` as ``(exact prefix blocks, CNF blocks)`` in forward order.

        The prefix (e.g. the detail normaliser of ``normalize_details``) holds no CNF; every
        block after it is a CNF. Any other layout raises a :class:`ConfigError` naming the fix.
        """
        level = self.levels[s]
        blocks = list(level.blocks) if isinstance(level, FlowSequential) else [level]
        first = next((i for i, b in enumerate(blocks) if isinstance(b, CNF)), len(blocks))
        prefix, chain = blocks[:first], blocks[first:]
        if not chain or not all(isinstance(b, CNF) for b in chain) or any(cnf_blocks(b) for b in prefix):
            kinds = sorted({type(b).__name__ for b in chain if not isinstance(b, CNF)} or {"no CNF"})
            raise ConfigError(
                f"flow matching trains levels made of CNF blocks (after an optional exact prefix); level {s} "
                f"has {', '.join(kinds)}: use model.options.density=cnf or train.objective=likelihood"
            )
        return prefix, chain

    def check_flow_matching(self, level: int | None = None) -> None:
        """Refuse, naming the fix, unless every level trained (or level ``level``) is made of CNF blocks."""
        for s in range(self.num_resolutions) if level is None else [level]:
            self.level_cnf_blocks(s)

    def level_flow_matching_terms(
        self, x: Tensor, generator: torch.Generator | None = None, levels: Sequence[int] | None = None
    ) -> list[dict[str, Tensor]]:
        r"""Per-level simulation-free training losses: ``{"fm": (B,), "prefix_nll": (B,)}`` per level
        (``prefix_nll`` only for a level with an exact prefix).

        Level ``s``'s CNF blocks regress the velocity of the straight path from their input to
        the base ``N(0, \sigma_s^2 I)`` (:func:`~msflow.transforms.flow_matching.flow_matching_loss`).
        Their input is the level's data (the details ``y_s`` given ``x_{s+1}``, or the
        preprocessed top image) after the level's exact prefix ``h = g(y)``, if it has one; the
        prefix is fitted by its own maximum likelihood with the CNF taken as the identity,

        .. math::

            \mathcal{L}_{	ext{prefix}} = \operatorname{mean}_d ig(	frac12 (h / \sigma_s)^2
                + \log \sigma_s + 	frac12 \log 2\piig) - \log|\det \partial h / \partial y| / d,

        and the flow-matching regression sees ``h`` detached (otherwise shrinking ``h`` would
        shrink its loss). The density is unchanged: bits/dim is still computed by the ODE.
        """
        which = range(self.num_resolutions) if levels is None else levels
        chains = {s: self.level_cnf_blocks(s) for s in which}
        v, _ = self._dequantize(x, generator)
        images, details, _ = self.decompose(v)
        terms = []
        for s, (prefix, chain) in chains.items():
            if s < self.num_resolutions - 1:
                x0, cond = details[s], self._condition(images[s + 1], s)
            else:
                (x0, _), cond = self.top_preprocess(images[-1]), None
            std = self.prior_stds[s]
            level: dict[str, Tensor] = {}
            if prefix:
                logdet = x0.new_zeros(x0.shape[0])
                for block in prefix:  # the exact prefix, block by block (no container built per step)
                    x0, ld = block(x0, cond)
                    logdet = logdet + ld
                dims = math.prod(x0.shape[1:])
                log_p = standard_normal_log_prob(x0 / std) - dims * math.log(std)
                level["prefix_nll"] = -(log_p + logdet) / dims
                x0 = x0.detach()
            level["fm"] = flow_matching_loss(chain, x0, cond, std, generator)
            terms.append(level)
        return terms

    def level_flow_matching_losses(
        self, x: Tensor, generator: torch.Generator | None = None, levels: Sequence[int] | None = None
    ) -> list[Tensor]:
        """Per-level training losses ``(B,)``: the sums of :meth:`level_flow_matching_terms`."""
        return [sum(level.values()) for level in self.level_flow_matching_terms(x, generator, levels)]

    def _clear_regularizers(self) -> None:
        for block in cnf_blocks(self):
            block.last_regularizers = {}

    @property
    def density_needs_autograd(self) -> bool:
        """True with CNF levels: their trace needs autograd, so evaluate under no_grad, not inference_mode."""
        return bool(cnf_blocks(self))

    def regularization_loss(self) -> Tensor | float:
        """RNODE loss of the last density evaluation: ``sum`` over CNF blocks of ``sum_k w_k mean(r_k)``.

        Add it to the bits/dim loss (MRCNF: weights 0.01). Blocks of levels that did not run in
        the last call contribute nothing.
        """
        return sum((block.regularization_loss() for block in cnf_blocks(self)), 0.0)

    def nfe(self) -> dict[str, int]:
        """Function evaluations: ``last`` (of every block's most recent solve) and ``total`` (cumulative)."""
        blocks = cnf_blocks(self)
        return {"last": sum(b.last_nfe for b in blocks), "total": sum(b.total_nfe for b in blocks)}


__all__ = ["CNFLevelTraining"]

r"""Image-to-image translation with CAFLOW (paper 002): inference, best-of selection and its evaluation.

One import for the pieces, each in a module of its own:

- :mod:`msflow.analysis.ranking`: samples at the paper's :data:`TEMPERATURES` and the best ``n``
  of ``m`` by conditional likelihood under one shared noise draw (:func:`best_of`);
- :mod:`msflow.analysis.conditions`: the condition made from a user's image
  (:func:`prepare_condition`);
- :mod:`msflow.analysis.translate_eval`: scores on held-out pairs (:func:`evaluate_translation`);
- here: the figures of the paper (:func:`likelihood_grid`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from msflow.analysis.conditions import prepare_condition
from msflow.analysis.ranking import TEMPERATURES, best_of, can_rank
from msflow.analysis.translate_eval import (
    TranslationResult,
    evaluate_translation,
    fidelity,
    format_translation_table,
)
from msflow.viz import save_grid


def show_condition(model: nn.Module, cond: Tensor) -> Tensor:
    """A condition ``(Cc, h, w)`` as an RGB picture at the target's size (nearest neighbours)."""
    s = model.scale
    shown = cond.repeat_interleave(s, -1).repeat_interleave(s, -2) if s > 1 else cond
    return shown.expand(3, -1, -1) if shown.shape[0] == 1 else shown


def likelihood_grid(
    model: nn.Module,
    conds: Tensor,
    n: int,
    m: int,
    temperature: float | list[float],
    path: str | Path,
    truths: Tensor | None = None,
    seed: int = 0,
) -> Path:
    """Figures 3, 8-16: per condition a row of the condition, the ``n`` best of ``m`` samples in
    decreasing conditional log-likelihood, and the truth when ``truths`` is given.

    Args:
        model: a CAFLOW model.
        conds: uint8 ``(K, Cc, h, w)``; greyscale and edge maps are shown as RGB.
        n: samples shown per row, the best of ``m``.
        m: samples drawn per row.
        temperature: one value, or one per scale (coarse to fine).
        path: the PNG to write.
        truths: uint8 ``(K, C, H, W)`` or ``None``.
        seed: row ``k`` draws with ``seed + k`` and every row is scored with noise seed ``seed``.
    """
    rows = []
    for k, cond in enumerate(conds):
        samples, _ = best_of(model, cond[None], n, m, temperature, torch.Generator().manual_seed(seed + k), seed)
        panels = [show_condition(model, cond)[None], samples]
        if truths is not None:
            panels.append(truths[k][None])
        rows.append(torch.cat(panels))
    per_row = len(rows[0])
    return save_grid(torch.cat(rows), path, nrow=per_row, scale=max(1, 96 // rows[0].shape[-1]))


__all__ = [
    "TEMPERATURES",
    "TranslationResult",
    "best_of",
    "can_rank",
    "evaluate_translation",
    "fidelity",
    "format_translation_table",
    "likelihood_grid",
    "prepare_condition",
    "show_condition",
]

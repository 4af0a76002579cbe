"""What one training step minimises (``train.objective``, ``train.level``) and what it logs.

- ``likelihood`` (every model): bits/dim, of the whole model or of one level, plus any
  regularizer: a continuous flow adds its RNODE terms (kinetic energy and Jacobian norm, MRCNF
  eq. 15) through ``model.regularization_loss()``. A multi-resolution model also logs each
  level's bits/dim (``bpd_level<s>``), the per-level curves of MRCNF's Figure 5b.
- ``flow_matching`` (models whose levels are CNF blocks): the conditional flow-matching loss of
  :mod:`msflow.transforms.flow_matching`, simulation-free; bits/dim is still evaluated by the ODE.
- ``flow_matching_then_likelihood``: flow matching, then maximum likelihood for the last
  ``train.finetune_fraction`` of the run (of ``train.max_seconds`` when it is set, else of
  ``train.steps``): the cheap regression gets the fields close, the likelihood tunes the very
  solve the model is scored by.

A multi-resolution model can train a single level (``train.level``): its likelihood is a sum of
independent per-level terms (eq. 11), so level ``s`` is fitted alone by minimising its own
term, and levels trained in separate processes are assembled afterwards (``msflow assemble``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from msflow.errors import ConfigError
from msflow.models.base import ImageFlow, StepLoss

Score = Callable[..., Tensor]
"""``score(model, x, generator, cond=None) -> (B,)`` per-image bits/dim."""

Objective = Callable[..., StepLoss]
"""``objective(model, x, generator, cond=None) -> StepLoss``; ``cond`` is a conditional model's condition batch."""


def check_level(model: ImageFlow, level: int | None) -> None:
    """Refuse ``train.level`` for models without independent levels, or out of range."""
    if level is not None:
        model.check_level(level)


def bpd_score(level: int | None) -> Score:
    """Per-image bits/dim of the whole model, or of level ``level`` over its own dimensions."""
    if level is None:
        return lambda model, x, generator, cond=None: model.bits_per_dim(x, cond, generator=generator)
    return lambda model, x, generator, cond=None: model.level_bits_per_dim(x, generator=generator, levels=[level])[0]


def regularization(model: ImageFlow) -> Tensor | float:
    """The regularizer of the model's last forward pass (0 for models without one)."""
    return model.regularization_loss()


def _likelihood(level: int | None) -> Objective:
    def objective(
        model: ImageFlow, x: Tensor, generator: torch.Generator | None, cond: Tensor | None = None
    ) -> StepLoss:
        return model.training_loss(x, generator, cond, level)

    return objective


def _flow_matching(level: int | None) -> Objective:
    def objective(
        model: ImageFlow, x: Tensor, generator: torch.Generator | None, cond: Tensor | None = None
    ) -> StepLoss:
        terms = model.level_flow_matching_terms(x, generator, None if level is None else [level])
        first = 0 if level is None else level
        logged = {}
        for i, parts in enumerate(terms):
            logged[f"fm_level{first + i}"] = parts["fm"].detach().mean()
            if "prefix_nll" in parts:  # the exact normaliser's own likelihood (nats/dim)
                logged[f"nll_level{first + i}"] = parts["prefix_nll"].detach().mean()
        fm = sum(parts["fm"].mean() for parts in terms)
        loss = sum(sum(parts.values()).mean() for parts in terms)
        return StepLoss(loss, {"loss_fm": fm.detach(), **logged})

    return objective


def objective_schedule(
    model: ImageFlow, name: str, level: int | None, finetune_fraction: float = 0.0
) -> Callable[[float], Objective]:
    """``progress -> objective`` for ``progress`` in [0, 1], the share of the run done.

    Example:
        >>> from msflow import create_model
        >>> model = create_model("mrcnf-mnist", image_shape=(1, 8, 8), resolutions=2, steps=1, hidden=4)
        >>> pick = objective_schedule(model, "flow_matching_then_likelihood", None, finetune_fraction=0.25)
        >>> pick(0.5) is pick(0.7), pick(0.5) is pick(0.8)
        (True, False)
    """
    if name != "flow_matching_then_likelihood":
        single = make_objective(model, name, level)
        return lambda progress: single
    first, then = make_objective(model, "flow_matching", level), make_objective(model, "likelihood", level)
    switch = 1.0 - finetune_fraction
    return lambda progress: first if progress < switch else then


def _flow_matching_checked(model: ImageFlow, level: int | None) -> Objective:
    model.check_flow_matching(level)
    return _flow_matching(level)


_SINGLE: dict[str, Callable[[ImageFlow, int | None], Objective]] = {
    "likelihood": lambda model, level: _likelihood(level),
    "flow_matching": _flow_matching_checked,
}
"""A single objective's name -> ``maker(model, level)``, which checks the model can train by it."""

OBJECTIVES = (*_SINGLE, "flow_matching_then_likelihood")
"""The names ``train.objective`` may take: the single objectives and the flow-matching-then-likelihood
schedule of :func:`objective_schedule`."""


def make_objective(model: ImageFlow, name: str, level: int | None) -> Objective:
    """The step objective ``name`` for ``model`` (optionally one ``level``), after checking they fit."""
    check_level(model, level)
    if name not in _SINGLE:
        raise ConfigError(f"train.objective must be one of {', '.join(_SINGLE)} here, got {name!r}")
    return _SINGLE[name](model, level)


def function_evaluations(model: ImageFlow) -> int | None:
    """Cumulative ODE function evaluations of a continuous model, else ``None``."""
    nfe = model.nfe()
    return nfe["total"] if nfe is not None else None

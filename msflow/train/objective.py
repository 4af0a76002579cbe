"""What one training step minimises: bits/dim (of the whole model or one level) plus any regularizer.

Every model trains on its bits/dim. A continuous flow adds its RNODE terms (kinetic energy and
Jacobian norm, MRCNF eq. 15) through ``model.regularization_loss()``. A multi-resolution model
can train a single level (``train.level``): its likelihood is a sum of independent per-level
terms (eq. 11), so level ``s`` is fitted alone by minimising its own bits/dim, and levels
trained in separate processes are assembled afterwards (``msflow assemble``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from msflow.errors import ConfigError

Score = Callable[[nn.Module, Tensor, torch.Generator | None], Tensor]


def check_level(model: nn.Module, level: int | None) -> None:
    """Refuse ``train.level`` for models without independent levels, or out of range."""
    if level is None:
        return
    if not hasattr(model, "level_bits_per_dim"):
        raise ConfigError(
            f"train.level={level} needs a multi-resolution model (an mrcnf-* preset); "
            f"{type(model).__name__} has no independent levels"
        )
    if not 0 <= level < model.num_resolutions:
        raise ConfigError(f"train.level must be in 0..{model.num_resolutions - 1} for this model, got {level}")


def bpd_score(level: int | None) -> Score:
    """Per-image bits/dim of the whole model, or of level ``level`` over its own dimensions."""
    if level is None:
        return lambda model, x, generator: model.bits_per_dim(x, generator=generator)
    return lambda model, x, generator: model.level_bits_per_dim(x, generator=generator, levels=[level])[0]


def regularization(model: nn.Module) -> Tensor | float:
    """The regularizer of the model's last forward pass (0 for models without one)."""
    reg = getattr(model, "regularization_loss", None)
    return reg() if reg is not None else 0.0


def function_evaluations(model: nn.Module) -> int | None:
    """Cumulative ODE function evaluations of a continuous model, else ``None``."""
    nfe = getattr(model, "nfe", None)
    return nfe()["total"] if nfe is not None else None

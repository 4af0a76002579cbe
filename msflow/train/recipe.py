"""What a config's ``optim`` and ``train`` sections build: the model, the optimiser and the
learning-rate schedule, plus deterministic kernels.

The choices a config may name are the keys of :data:`OPTIMIZERS`, :data:`SCHEDULES` and
:data:`BUDGET_CLOCKS`;
:mod:`msflow.train.config` reads its rules from them, so a new optimiser or schedule is one
entry here.

Example:
    >>> sorted(OPTIMIZERS), sorted(SCHEDULES), sorted(BUDGET_CLOCKS)
    (['adam', 'adamax'], ['constant', 'cosine', 'exponential', 'step'], ['cpu', 'wall'])
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from msflow.core import set_gradient_checkpointing
from msflow.models import create_model

if TYPE_CHECKING:  # config imports this module for its choices
    from msflow.train.config import Config, OptimConfig

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"adam": torch.optim.Adam, "adamax": torch.optim.Adamax}
"""``optim.optimizer`` -> its class."""

BUDGET_CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
"""``train.budget_clock`` -> the clock the time budget counts: wall seconds, or the process's CPU
seconds over all threads (fair between runs that share a machine)."""


def _constant(o: OptimConfig, u: int, total: int) -> float:
    return o.lr


def _cosine(o: OptimConfig, u: int, total: int) -> float:
    return o.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, u / max(1, total))))


def _exponential(o: OptimConfig, u: int, total: int) -> float:
    return max(o.min_lr, o.lr * o.decay_rate ** (u / o.decay_steps))


def _step(o: OptimConfig, u: int, total: int) -> float:
    return max(o.min_lr, o.lr * o.decay_rate ** (u // o.decay_steps))


SCHEDULES: dict[str, Callable[[OptimConfig, int, int], float]] = {
    "constant": _constant,
    "cosine": _cosine,
    "exponential": _exponential,
    "step": _step,
}
"""``optim.schedule`` -> ``f(optim, u, total)``: the rate ``u`` steps after the warm-up of ``total``."""


def learning_rate(cfg: Config, step: int) -> float:
    """The scheduled learning rate of step ``step`` (counted from 0), before the plateau drop and
    the roll-back scale.

    Linear warm-up ``lr * (step + 1) / warmup_steps`` over the first ``warmup_steps`` steps; after
    it, with ``u = step - warmup_steps``: ``constant`` keeps ``lr``; ``cosine`` decays to 0 at
    ``train.steps``; ``exponential`` is ``lr * decay_rate^(u / decay_steps)`` and ``step``
    (PyTorch's ``StepLR``) is ``lr * decay_rate^floor(u / decay_steps)``, both floored at ``min_lr``.

    Example:
        >>> from msflow.train.config import config_from_dict
        >>> cfg = config_from_dict({"optim": {"schedule": "step", "lr": 1.0, "warmup_steps": 2,
        ...                                   "decay_rate": 0.5, "decay_steps": 3}})
        >>> [learning_rate(cfg, s) for s in range(9)]
        [0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
    """
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * min(1.0, (step + 1) / o.warmup_steps)
    return SCHEDULES[o.schedule](o, step - o.warmup_steps, cfg.train.steps - o.warmup_steps)


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimiser over ``model``'s parameters (its rate is set every step)."""
    o = cfg.optim
    return OPTIMIZERS[o.optimizer](model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)


def build_model(cfg: Config, device: torch.device) -> nn.Module:
    """The configured model, seeded by ``train.seed``, on ``device``."""
    torch.manual_seed(cfg.train.seed)
    model = create_model(cfg.model.name, **cfg.model.options).to(device)
    return set_gradient_checkpointing(model, cfg.train.gradient_checkpointing)


def make_deterministic() -> None:
    """Ask PyTorch for deterministic kernels (bit-for-bit repeatable runs on one device).

    CPU runs with a fixed thread count already repeat exactly; on CUDA this turns off cuDNN's
    autotuner and makes cuBLAS use a fixed workspace, at some speed cost.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)

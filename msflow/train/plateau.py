"""A one-time learning-rate drop when the training loss levels off (CAFLOW, appendix B)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from msflow.errors import CheckpointError

SMOOTHING = 0.98  # about 50 steps of memory: one batch's noise does not count as progress


@dataclass
class Plateau:
    r"""Watches the per-step training loss :math:`\ell_t` and drops the learning rate once when it stalls.

    The loss is smoothed by an exponential moving average,

    .. math::

        s_1 = \ell_1, \qquad s_t = 0.98\, s_{t-1} + 0.02\, \ell_t,

    and a step improves on the best smoothed value :math:`b` when
    :math:`b - s_t > \text{threshold} \cdot |b|`; then :math:`b \leftarrow s_t`. After ``patience``
    steps in a row without improvement the learning rate is multiplied by ``factor`` for the rest
    of training, exactly once; ``drop_step`` records the step, and tracking stops there.
    ``patience=0`` turns the drop off.

    The loop calls :meth:`update` after every optimiser step with a finite loss, with the loss
    averaged over all ranks, so every rank decides alike. The state (:meth:`state_dict`) lives in
    every checkpoint, so a resumed run drops at the same step as an uninterrupted one.

    Example:
        >>> plateau = Plateau(patience=3, factor=0.1)
        >>> [plateau.update(1.0, step) for step in range(1, 7)]
        [False, False, False, True, False, False]
        >>> plateau.drop_step, plateau.scale
        (4, 0.1)
    """

    patience: int = 0
    factor: float = 0.1
    threshold: float = 1e-3
    smoothed: float | None = None
    best: float | None = None
    since: int = 0  # steps since the smoothed loss last improved on ``best``
    drop_step: int | None = None

    @property
    def active(self) -> bool:
        """True while the loss is still watched: the drop is on and has not happened yet."""
        return self.patience > 0 and self.drop_step is None

    @property
    def scale(self) -> float:
        """The factor on the scheduled learning rate: ``factor`` after the drop, else 1."""
        return self.factor if self.drop_step is not None else 1.0

    def update(self, loss: float, step: int) -> bool:
        """Take step ``step``'s (finite) loss; True when the learning rate drops at this step."""
        if not self.active:
            return False
        if self.smoothed is None or self.best is None:
            self.smoothed = self.best = loss
            return False
        self.smoothed = SMOOTHING * self.smoothed + (1 - SMOOTHING) * loss
        if self.best - self.smoothed > self.threshold * abs(self.best):
            self.best, self.since = self.smoothed, 0
            return False
        self.since += 1
        if self.since < self.patience:
            return False
        self.drop_step = step
        return True

    def state_dict(self) -> dict[str, Any]:
        """The tracking state, JSON-ready (the hyperparameters come from the config)."""
        return {"smoothed": self.smoothed, "best": self.best, "since": self.since, "drop_step": self.drop_step}

    def load_state_dict(self, state: Any, source: str) -> None:
        """Restore :meth:`state_dict`'s output, read from the checkpoint ``source``; checked first."""
        fix = "the file is corrupt or was not written by msflow; use an earlier checkpoint or retrain"

        def number(v: Any) -> bool:
            return v is None or isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        def count(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= 0

        checks = {"smoothed": number, "best": number, "since": count, "drop_step": lambda v: v is None or count(v)}
        if not isinstance(state, dict) or set(state) != set(checks):
            raise CheckpointError(
                f"{source} has metadata plateau={state!r:.60}, expected a mapping of {sorted(checks)}; {fix}"
            )
        for key, ok in checks.items():
            if not ok(state[key]):
                raise CheckpointError(f"{source} has metadata plateau.{key}={state[key]!r:.60}; {fix}")
        self.since, self.drop_step = state["since"], state["drop_step"]
        self.smoothed = None if state["smoothed"] is None else float(state["smoothed"])
        self.best = None if state["best"] is None else float(state["best"])

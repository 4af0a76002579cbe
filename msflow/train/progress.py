"""The training progress bar: steps, or for a run bounded by time, the time budget.

A run with ``train.max_seconds`` stops when its budget is spent, usually long before
``train.steps`` (the shipped CNF configs set a million steps they never reach). A bar over steps
would then read "66/1000000 [2500:00:00 left]"; this one counts budget seconds instead, so its
percentage, elapsed and remaining times are true, and shows the step count beside the loss.

Example:
    >>> bar = TrainingBar(total_steps=10**6, step=0, max_seconds=60.0, spent=0.0, desc="demo", enabled=False)
    >>> bar.advance(step=5, spent=30.0)
    >>> bar.fraction_done
    0.5
    >>> bar.close()
"""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

_TIME_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} {unit} [{elapsed}<{remaining}{postfix}]"


class TrainingBar:
    """tqdm over steps, or over the budget's seconds when ``max_seconds > 0``.

    Args:
        total_steps: ``train.steps``.
        step: the step the run starts (or resumes) at.
        max_seconds: ``train.max_seconds`` (0: the run is bounded by steps only).
        spent: budget seconds already spent (by earlier attempts of a resumed run).
        desc: the bar's label.
        enabled: False draws nothing (``train.progress=false``, or ranks other than 0).
        clock: ``"cpu"`` or ``"wall"``, the budget's clock, shown as the unit.
    """

    def __init__(
        self,
        total_steps: int,
        step: int,
        max_seconds: float,
        spent: float,
        desc: str,
        enabled: bool,
        clock: str = "wall",
    ) -> None:
        self.by_time = max_seconds > 0
        self.step = step
        self.total_steps = total_steps
        common: dict[str, Any] = {"desc": desc, "disable": not enabled, "dynamic_ncols": True}
        if self.by_time:
            unit = f"{clock} s budget"
            start = min(spent, max_seconds)
            self._bar = tqdm(total=max_seconds, initial=start, unit=unit, bar_format=_TIME_FORMAT, **common)
        else:
            self._bar = tqdm(total=total_steps, initial=step, **common)
        self._postfix: dict[str, str] = {}
        self._show_step()

    @property
    def fraction_done(self) -> float:
        """The share of the budget (or of the steps) done."""
        return float(self._bar.n) / float(self._bar.total) if self._bar.total else 1.0

    def advance(self, step: int, spent: float) -> None:
        """Record that ``step`` steps are done and ``spent`` budget seconds used."""
        self.step = step
        if self.by_time:
            self._bar.n = min(spent, float(self._bar.total))
        else:
            self._bar.n = step
        self._show_step()

    def rewind(self, step: int, spent: float) -> None:
        """Go back to ``step`` (a roll-back to a checkpoint); the budget spent never goes back."""
        self.advance(step, spent)

    def set_loss(self, name: str, value: float) -> None:
        """Show the latest logged loss."""
        self._postfix[name] = f"{value:.3f}"
        self._show_step()

    def _show_step(self) -> None:
        shown = {**self._postfix, "step": str(self.step)} if self.by_time else dict(self._postfix)
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(0)  # redraws at most every tqdm.mininterval seconds

    def write(self, message: str) -> None:
        """Print a line above the bar."""
        self._bar.write(message)

    def close(self) -> None:
        """Finish the bar."""
        self._bar.close()

"""Exponential moving average of a model's floating-point state."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


class EMA:
    r"""Shadow weights ``w_ema <- d w_ema + (1 - d) w`` over parameters and float buffers.

    Buffers that are not floating point (ActNorm's ``initialized`` flag) are copied as they are.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 2)
        >>> ema = EMA(net, decay=0.9)
        >>> ema.update(net)
        >>> with ema.applied(net):
        ...     pass  # net holds the averaged weights here
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        """Move the shadow weights towards ``model``'s.

        With ``step`` given the decay warms up as ``min(d, (1 + step) / (10 + step))``, so early
        averages are not dominated by the random initialisation.
        """
        decay = self.decay if step is None else min(self.decay, (1 + step) / (10 + step))
        for name, value in model.state_dict().items():
            shadow = self.shadow[name]
            if value.is_floating_point():
                shadow.lerp_(value.detach(), 1.0 - decay)
            else:
                shadow.copy_(value)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Temporarily load the shadow weights into ``model``."""
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield
        finally:
            model.load_state_dict(saved)

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Restart the average at ``model``'s current weights."""
        for name, value in model.state_dict().items():
            self.shadow[name].copy_(value)

    def state_dict(self) -> dict[str, Tensor]:
        """The shadow weights (for checkpoints)."""
        return self.shadow

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore the shadow weights."""
        for name, value in state.items():
            self.shadow[name].copy_(value)

"""Which device a run uses: ``train.device`` / ``--device`` (``auto``, ``cpu`` or ``cuda``).

Example:
    >>> resolve_device("cpu")
    device(type='cpu')
"""

from __future__ import annotations

import torch

from msflow.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
"""The device names a config or ``--device`` may give."""


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)

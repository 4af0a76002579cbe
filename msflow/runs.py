"""Finished runs, devices and data, for code that uses trained models (``cli/``, ``analysis/``).

One import for what a command needs around a run folder: the model, config and metadata of a
run (:func:`load_run`, :func:`load`), the device a name means (:func:`resolve_device`) and a
config's data (:func:`load_data`). Training itself lives in :mod:`msflow.train`, which never
imports this module.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from msflow.errors import BudgetError, CheckpointError, MsflowError
from msflow.models import create_model
from msflow.train.checkpoint import checkpoint_path, load_checkpoint, load_weights, prefixed
from msflow.train.checkpoint_checks import require
from msflow.train.config import Config, config_from_dict
from msflow.train.data import load_data
from msflow.train.device import resolve_device

__all__ = ["load", "load_data", "load_run", "resolve_device"]

LEGACY_BASE = "shift.residual"
"""The buffer that marks a model with a base (msflow.transforms.shift); runs older than it have none."""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else f"{text[:117]}..."


def _build(path: Path, name: str, overrides: dict[str, Any]) -> nn.Module:
    # The stored spec is user input like the rest of the file: options that no model takes
    # (a string where a size belongs, a size no memory holds) must end as one clear error.
    try:
        return create_model(name, **overrides)
    except BudgetError as err:  # a size over the limits: checked before anything was built
        raise CheckpointError(f"{path} stores a model too large to build: {err}") from None
    except (MsflowError, TypeError, ValueError, RuntimeError, OverflowError, MemoryError) as err:
        raise CheckpointError(
            f"{path} stores model {name!r} with options {_short(overrides)}, which cannot be built "
            f"({str(err).splitlines()[0][:160]}); it is corrupt or from another msflow version"
        ) from None


def load_run(
    run: str | Path, device: torch.device | str = "cpu", ema: bool = True
) -> tuple[nn.Module, Config, dict[str, Any]]:
    """``(model, config, metadata)`` of a run; the model holds the EMA weights when it has them.

    The config stored in the checkpoint is all that is needed: the model is rebuilt from its
    registered preset and options, then its weights are loaded (nothing is unpickled).
    """
    path = checkpoint_path(run)
    tensors, meta = load_checkpoint(path)
    require(tensors, meta, ("config", "model_spec"), str(path))
    try:
        cfg = config_from_dict(meta["config"])
        name, overrides = meta["model_spec"]["name"], dict(meta["model_spec"]["overrides"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{path} has an unreadable stored config ({err}); it was not written by this msflow version"
        ) from None
    # Training stores the spec of the model it built from config.model: a file where they differ was edited.
    if (name, overrides) != (cfg.model.name, cfg.model.options):
        raise CheckpointError(
            f"{path} has model_spec {name!r} {_short(overrides)}, but its stored config has model "
            f"{cfg.model.name!r} {_short(cfg.model.options)}: expected the same; the file was altered"
        )
    model = _build(path, name, overrides)
    weights = (
        prefixed(tensors, "ema") if ema and any(k.startswith("ema/") for k in tensors) else prefixed(tensors, "model")
    )
    if LEGACY_BASE in model.state_dict() and LEGACY_BASE not in weights and "residual" not in overrides:
        # Trained before super-resolution and colorization flows had their bicubic (grey) base:
        # that is the same preset with residual=False, so the run loads as it was trained.
        overrides = {**overrides, "residual": False}
        model = _build(path, name, overrides)
        cfg = replace(cfg, model=replace(cfg.model, options=overrides))
    load_weights(model, weights, str(path))
    model.to(device).eval()
    return model, cfg, meta


def load(run: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The trained model of a run folder or checkpoint file, ready for ``log_prob``/``sample``.

    Example (needs a trained run, so not run as a doctest)::

        import msflow
        model = msflow.load("runs/mnist5k-glow")
        images = model.sample(16, temperature=0.7)
    """
    return load_run(run, device)[0]

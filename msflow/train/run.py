"""Reopen a finished or running training run from its folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from msflow.errors import CheckpointError
from msflow.models import create_model
from msflow.train.checkpoint import load_checkpoint, load_weights, prefixed
from msflow.train.config import Config, config_from_dict

CHECKPOINT = "checkpoint.safetensors"


def checkpoint_path(run: str | Path) -> Path:
    """The checkpoint file of a run folder (or ``run`` itself if it is a file)."""
    run = Path(run)
    if run.is_dir():
        return run / CHECKPOINT
    if run.exists() or run.suffix:
        return run
    raise CheckpointError(
        f"no run folder or checkpoint at {run}; give the folder `msflow train` wrote (e.g. runs/NAME)"
    )


def load_run(
    run: str | Path, device: torch.device | str = "cpu", ema: bool = True
) -> tuple[nn.Module, Config, dict[str, Any]]:
    """``(model, config, metadata)`` of a run; the model holds the EMA weights when it has them.

    The config stored in the checkpoint is all that is needed: the model is rebuilt from its
    registered preset and options, then its weights are loaded (nothing is unpickled).
    """
    path = checkpoint_path(run)
    tensors, meta = load_checkpoint(path)
    try:
        cfg = config_from_dict(meta["config"])
        name, overrides = meta["model_spec"]["name"], dict(meta["model_spec"]["overrides"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{path} has an unreadable stored config ({err}); it was not written by this msflow version"
        ) from None
    model = create_model(name, **overrides)
    weights = (
        prefixed(tensors, "ema") if ema and any(k.startswith("ema/") for k in tensors) else prefixed(tensors, "model")
    )
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

"""Checkpoints: one safetensors file of tensors plus JSON metadata, written atomically.

Nothing here unpickles: tensors come from safetensors and everything else (config, optimizer
hyperparameters, counters, metrics) is JSON in the safetensors header. A write goes to a
temporary file in the same folder, is fsynced and then renamed over the old checkpoint, so a
crash or a full disk leaves either the old or the new checkpoint, never a partial one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from msflow._io import atomic_write
from msflow.errors import CheckpointError
from msflow.train.checkpoint_checks import check_meta, check_optimizer_state, check_tensors, check_weights

CHECKPOINT = "checkpoint.safetensors"
"""The file name of a run folder's checkpoint."""


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


FORMAT = "msflow-checkpoint-1"


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer's state into tensors and JSON-able metadata."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim/{idx}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}/{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any], source: str = "the checkpoint"
) -> None:
    """Inverse of :func:`optimizer_tensors`.

    Raises:
        CheckpointError: the saved state does not fit ``optimizer`` (``source`` names the file).
    """
    check_meta({"optimizer": meta}, source)
    state: dict[int, dict[str, Any]] = {}
    entries = [(k.removeprefix("optim/"), v) for k, v in tensors.items() if k.startswith("optim/")]
    for name, value in [*entries, *meta["scalars"].items()]:
        idx, _, key = name.partition("/")
        if not (idx.isascii() and idx.isdigit() and key):
            raise CheckpointError(f"{source} has optimizer entry {name!r}, expected PARAMETER_INDEX/NAME")
        state.setdefault(int(idx), {})[key] = value
    check_optimizer_state(optimizer, state, meta["param_groups"], source)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(path: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Atomically write ``tensors`` and JSON ``meta`` to ``path``; refuse non-finite weights."""
    for name, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"refusing to write a checkpoint with non-finite values in {name}")
    header = {"format": FORMAT, "meta": json.dumps(meta)}
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(Path(path), lambda tmp: save_file(flat, tmp, metadata=header))


def load_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(tensors, meta)``.

    Raises:
        CheckpointError: the file is missing, not safetensors (a pickle, say), not msflow's, or
            holds metadata or tensors msflow never writes (see :mod:`msflow.train.checkpoint_checks`).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}; give a run folder written by `msflow train` or its .safetensors file"
        )
    try:
        # One handle for tensors and metadata, so both come from the same file version.
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"{path} is not a safetensors checkpoint ({str(err).splitlines()[0][:80]}); msflow never unpickles "
            "files: give a checkpoint written by `msflow train`"
        ) from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not an msflow checkpoint (no {FORMAT!r} metadata)")
    try:
        meta = json.loads(header["meta"])
    except (KeyError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path} has corrupt msflow metadata (not JSON); use an earlier checkpoint") from None
    check_meta(meta, str(path))
    check_tensors(tensors, str(path))
    return tensors, meta


def prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries under ``prefix/`` with the prefix removed."""
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}


def load_weights(model: nn.Module, weights: dict[str, Tensor], source: str) -> None:
    """Load a state dict, turning key, shape or dtype mismatches and non-finite values into a
    :class:`CheckpointError`."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or unexpected or wrong:
        detail = (missing or unexpected or wrong)[0]
        raise CheckpointError(
            f"{source} was written for a different model ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(wrong)} mis-shaped tensors, e.g. {detail!r}); use the model and options it was trained with"
        )
    check_weights(own, weights, source)
    model.load_state_dict(weights)

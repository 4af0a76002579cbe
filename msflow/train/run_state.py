"""What a checkpoint holds besides the weights, and how a run resumes from it.

The guard counters (non-finite steps, roll-backs, learning-rate scale, time spent, the plateau
drop), the metadata every checkpoint stores (config, model spec, seed, versions), and the resume
that restores all of it, refusing a checkpoint of another data, model, optimizer or seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from msflow.errors import CheckpointError
from msflow.train.checkpoint import load_checkpoint, load_weights, optimizer_tensors, prefixed, restore_optimizer
from msflow.train.checkpoint_checks import require
from msflow.train.config import Config, config_to_dict
from msflow.train.ema import EMA
from msflow.train.plateau import Plateau


def _state_tensors(
    model: nn.Module, opt: torch.optim.Optimizer, ema: EMA | None, noise: torch.Generator
) -> tuple[dict, dict]:
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema/{k}": v for k, v in ema.state_dict().items()})
    optim, optim_meta = optimizer_tensors(opt)
    tensors.update(optim)
    tensors["rng/noise"] = noise.get_state()
    tensors["rng/torch"] = torch.get_rng_state()
    return tensors, optim_meta


def versions() -> dict[str, str]:
    """Versions of what decides a run's numbers, stored in every checkpoint."""
    import platform

    import numpy
    import safetensors

    from msflow import __version__

    return {
        "msflow": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


@dataclass
class _Guard:
    """Counters of the non-finite step guard, the time budget and the plateau drop; stored in
    every checkpoint."""

    bad_in_a_row: int = 0
    lr_scale: float = 1.0
    rollbacks: int = 0
    train_seconds: float = 0.0  # seconds of training so far on train.budget_clock, over every resume
    plateau: Plateau = field(default_factory=Plateau)


def _meta(cfg: Config, model: nn.Module, step: int, guard: _Guard, optim_meta: dict, results: dict | None) -> dict:
    return {
        "config": config_to_dict(cfg),
        "model_spec": model.spec,
        "step": step,
        "seed": cfg.train.seed,
        "bad_in_a_row": guard.bad_in_a_row,
        "lr_scale": guard.lr_scale,
        "rollbacks": guard.rollbacks,
        "train_seconds": guard.train_seconds,
        "plateau": guard.plateau.state_dict(),
        "optimizer": optim_meta,
        "results": results,
        "versions": versions(),
    }


def _resume(
    path: Path, cfg: Config, model: nn.Module, opt: torch.optim.Optimizer, ema: EMA | None, noise: torch.Generator
) -> tuple[int, _Guard]:
    """Restore the run's state from ``path``; returns ``(step, guard counters)``."""
    tensors, meta = load_checkpoint(path)
    require(tensors, meta, ("config", "optimizer", "step", "rng/noise", "rng/torch"), str(path))
    saved = meta["config"]
    mine = config_to_dict(cfg)
    # What must match for the saved state to mean the same thing in this run.
    pairs = [(s, saved.get(s), mine[s]) for s in ("data", "model")]
    pairs.append(("optim.optimizer", saved.get("optim", {}).get("optimizer"), cfg.optim.optimizer))
    # The seed drew the weights, the data order and the noise so far: another one would mix two runs.
    pairs.append(("train.seed", saved.get("train", {}).get("seed"), cfg.train.seed))
    for what, theirs, ours in pairs:
        if theirs != ours:
            raise CheckpointError(
                f"{path} holds a run with a different {what} config ({theirs}); "
                "resume with the same config or set train.out to a new folder"
            )
    load_weights(model, prefixed(tensors, "model"), str(path))
    if ema is not None:
        saved_ema = prefixed(tensors, "ema")
        # A run that had EMA off has none saved: start averaging from the loaded weights.
        if saved_ema:
            ema.load_state_dict(saved_ema)
        else:
            ema.reset(model)
    restore_optimizer(opt, tensors, meta["optimizer"], str(path))
    # The config is the source of truth: hyperparameters changed for the resumed run apply.
    for group in opt.param_groups:
        group.update(betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
    noise.set_state(tensors["rng/noise"])
    torch.set_rng_state(tensors["rng/torch"])
    plateau = _plateau(cfg)
    if "plateau" in meta:  # older runs have none: the loss is watched from here on
        plateau.load_state_dict(meta["plateau"], str(path))
    guard = _Guard(
        int(meta.get("bad_in_a_row", 0)),
        float(meta.get("lr_scale", 1.0)),
        int(meta.get("rollbacks", 0)),
        float(meta.get("train_seconds", 0.0)),
        plateau,
    )
    return int(meta["step"]), guard


def _plateau(cfg: Config) -> Plateau:
    """A fresh plateau tracker with the config's hyperparameters."""
    o = cfg.optim
    return Plateau(o.plateau_patience, o.plateau_factor, o.plateau_threshold)


def periodic_checkpoint(write: Callable[[], None], path: Path, step: int, log: Any, bar: Any) -> None:
    """Write a periodic checkpoint; a failed write (full disk, say) warns and training goes on.

    The write is atomic, so the previous checkpoint stays whole and a later one may succeed;
    stopping would throw away the steps since then for nothing.
    """
    try:
        write()
    except OSError as err:
        log.write({"step": step, "event": "checkpoint_failed", "error": str(err)})
        bar.write(f"step {step}: could not write {path} ({err.strerror or err}); keeping the previous checkpoint")

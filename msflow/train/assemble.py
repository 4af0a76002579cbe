"""Assemble a multi-resolution model from levels trained in separate runs (MRCNF section 5).

The log-likelihood of a multi-resolution flow is a sum of per-level terms that share no
parameters (eq. 11), so each level can be trained alone (``train.level=s``), in its own
process or on its own machine, and the trained levels put together afterwards:

.. math::

    \\text{bpd}(x) = \\sum_s \\frac{D_s}{D}\\, \\text{bpd}_s(x),

where ``bpd_s`` is level ``s``'s bits/dim over its own ``D_s`` dimensions. The assembled run is
an ordinary run folder: ``msflow eval``, ``sample`` and ``superres`` take it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from msflow.errors import CheckpointError, ConfigError
from msflow.models import create_model
from msflow.train.checkpoint import load_checkpoint, prefixed, save_checkpoint
from msflow.train.config import config_from_dict, config_to_dict, replace
from msflow.train.run import CHECKPOINT, checkpoint_path


def _level_of(key: str) -> int | None:
    parts = key.split(".")
    return int(parts[1]) if parts[0] == "levels" and len(parts) > 1 and parts[1].isdigit() else None


def assemble(runs: Sequence[str | Path], out: str | Path) -> Path:
    """Write a run folder ``out`` whose level ``s`` comes from the run trained with ``train.level=s``.

    Every run must hold the same model (preset and options) trained on the same data, one level
    each, together covering every level once. EMA weights are used where a run has them.

    Returns:
        The path of the assembled checkpoint.
    """
    sources: dict[int, tuple[Path, dict[str, Tensor]]] = {}
    steps: list[int] = []
    first: dict[str, Any] | None = None
    for run in runs:
        path = checkpoint_path(run)
        tensors, meta = load_checkpoint(path)
        cfg = config_from_dict(meta["config"])
        if cfg.train.level is None:
            raise ConfigError(f"{run} trained every level at once; assemble takes runs trained with train.level=s")
        if first is None:
            first = meta
        elif (meta["config"]["model"], meta["config"]["data"]) != (first["config"]["model"], first["config"]["data"]):
            raise ConfigError(f"{run} holds another model or dataset than {runs[0]}; assemble levels of one model")
        if cfg.train.level in sources:
            raise ConfigError(f"level {cfg.train.level} comes from both {sources[cfg.train.level][0]} and {path}")
        weights = prefixed(tensors, "ema") or prefixed(tensors, "model")
        sources[cfg.train.level] = (path, weights)
        steps.append(int(meta["step"]))
    if first is None:
        raise ConfigError("give the run folders of the levels to assemble")
    spec = first["model_spec"]
    model = create_model(spec["name"], **spec["overrides"])
    levels = getattr(model, "num_resolutions", None)
    if levels is None or sorted(sources) != list(range(levels)):
        raise ConfigError(f"the runs cover levels {sorted(sources)}; this model needs each of 0..{(levels or 1) - 1}")
    state = model.state_dict()
    for key in state:
        level = _level_of(key)
        path, weights = sources[0 if level is None else level]
        if key not in weights or weights[key].shape != state[key].shape:
            raise CheckpointError(f"{path} has no matching {key!r}; was it trained with another msflow version?")
        state[key] = weights[key]
    cfg = config_from_dict(first["config"])
    cfg = replace(cfg, train=replace(cfg.train, level=None, out=str(out)))
    meta = {
        "config": config_to_dict(cfg),
        "model_spec": spec,
        "step": max(steps),
        "assembled_from": {str(s): str(p) for s, (p, _) in sorted(sources.items())},
        "results": None,
    }
    target = Path(out) / CHECKPOINT
    if target.exists():
        raise ConfigError(f"{target} exists; assemble into a new folder")
    save_checkpoint(target, {f"model/{k}": v for k, v in state.items()}, meta)
    return target

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

from torch import Tensor, nn

from msflow.errors import CheckpointError, ConfigError
from msflow.models import create_model
from msflow.train.checkpoint import CHECKPOINT, checkpoint_path, load_checkpoint, prefixed, save_checkpoint
from msflow.train.config import config_from_dict, config_to_dict, replace


def _level_of(key: str) -> int | None:
    parts = key.split(".")
    return int(parts[1]) if parts[0] == "levels" and len(parts) > 1 and parts[1].isdigit() else None


def _shift_levels(weights: dict[str, Tensor], offset: int) -> dict[str, Tensor]:
    """Rename ``levels.j.*`` to ``levels.{j + offset}.*`` (a coarser model's levels in a finer one)."""
    out = {}
    for key, value in weights.items():
        level = _level_of(key)
        if level is not None:
            out[".".join(["levels", str(level + offset), *key.split(".")[2:]])] = value
    return out


def coarser_offset(fine: nn.Module, coarse: nn.Module, where: str) -> int:
    """How many levels finer ``fine`` is than ``coarse``: ``coarse.levels[j]`` becomes ``fine.levels[j + k]``.

    The coarse model must be the same kind of multi-resolution flow on images ``2^k`` times
    smaller, with ``k`` fewer resolutions, a pyramid whose coarse image is the plain 2x2
    average (then the images and details its levels see are exactly those that levels
    ``k..S-1`` of the fine model see) and the same base distribution for those levels.
    """
    kind = type(fine).__name__
    if type(coarse) is not type(fine):
        raise ConfigError(f"{where} holds a {type(coarse).__name__}, not a {kind} like the level runs")
    (c, h, w), (cc, ch, cw) = fine.image_shape, coarse.image_shape
    k = fine.num_resolutions - coarse.num_resolutions
    if cc != c or k < 1 or (ch << k, cw << k) != (h, w):
        raise ConfigError(
            f"{where} models {cc}x{ch}x{cw} images with {coarse.num_resolutions} resolution(s); to serve as the "
            f"coarse part of this {c}x{h}x{w} model with {fine.num_resolutions} it needs {c}x{h >> max(k, 1)}x"
            f"{w >> max(k, 1)} images (data.downsample) and one resolution fewer per halving"
        )
    if type(coarse.pyramid) is not type(fine.pyramid) or fine.pyramid.coarse_factor != 1:
        raise ConfigError(
            f"{where}: progressive training needs both models on a pyramid whose coarse image is the 2x2 average "
            "(pyramid=unimodular or haar)"
        )
    if any(abs(a - b) > 1e-12 for a, b in zip(coarse.prior_stds, fine.prior_stds[k:], strict=True)):
        raise ConfigError(
            f"{where}: multires_noise gives its levels other base scales; train both with multires_noise=false"
        )
    return k


def assemble(runs: Sequence[str | Path], out: str | Path) -> Path:
    """Write a run folder ``out`` whose level ``s`` comes from the run trained with ``train.level=s``.

    Every level run must hold the same model (preset and options) trained on the same data, one
    level each. Together they cover every level once, or the finest levels while one run of a
    coarser whole model (``train.level`` unset, on images downsampled ``2^k`` times with ``k``
    fewer resolutions) supplies the rest: MRCNF's progressive training, where a finer level
    trained later is attached to an existing lower-resolution model. EMA weights are used
    where a run has them.

    Returns:
        The path of the assembled checkpoint.
    """
    sources: dict[int, tuple[Path, dict[str, Tensor]]] = {}
    coarse_runs: list[tuple[Path, dict[str, Any], dict[str, Tensor]]] = []
    steps: list[int] = []
    first: dict[str, Any] | None = None
    for run in runs:
        path = checkpoint_path(run)
        tensors, meta = load_checkpoint(path)
        cfg = config_from_dict(meta["config"])
        weights = prefixed(tensors, "ema") or prefixed(tensors, "model")
        steps.append(int(meta["step"]))
        if cfg.train.level is None:
            coarse_runs.append((path, meta, weights))
            continue
        if first is None:
            first, first_run = meta, run
        elif (meta["config"]["model"], meta["config"]["data"]) != (first["config"]["model"], first["config"]["data"]):
            raise ConfigError(f"{run} holds another model or dataset than {first_run}; assemble levels of one model")
        if cfg.train.level in sources:
            raise ConfigError(f"level {cfg.train.level} comes from both {sources[cfg.train.level][0]} and {path}")
        sources[cfg.train.level] = (path, weights)
    if first is None:
        hint = " (a run of a whole coarser model also needs the level runs it is attached to)" if coarse_runs else ""
        raise ConfigError(f"give the run folders of the levels to assemble, trained with train.level=s{hint}")
    if len(coarse_runs) > 1:
        raise ConfigError("give at most one run of a whole (coarser) model; the others must be train.level=s runs")
    spec = first["model_spec"]
    model = create_model(spec["name"], **spec["overrides"])
    levels = model.num_resolutions if model.independent_levels else None
    for path, meta, weights in coarse_runs:
        coarse_spec = meta["model_spec"]
        offset = coarser_offset(model, create_model(coarse_spec["name"], **coarse_spec["overrides"]), str(path))
        for j in range(levels - offset):
            if j + offset in sources:
                raise ConfigError(f"level {j + offset} comes from both {sources[j + offset][0]} and {path}")
            sources[j + offset] = (path, _shift_levels(weights, offset))
    if levels is None or sorted(sources) != list(range(levels)):
        raise ConfigError(f"the runs cover levels {sorted(sources)}; this model needs each of 0..{(levels or 1) - 1}")
    state = model.state_dict()
    for key in state:
        level = _level_of(key)
        path, weights = sources[0 if level is None else level]
        if key not in weights or weights[key].shape != state[key].shape:
            raise CheckpointError(
                f"{path} has no matching {key!r}: was it trained with other model options (hidden, steps) "
                "or another msflow version?"
            )
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

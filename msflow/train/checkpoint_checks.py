"""Checks of what a checkpoint file holds, before any of it reaches a model or an optimizer.

A checkpoint is user input: it may be truncated, hand-edited, from another version or
hostile. Torch checks little when a state dict is loaded (an int tensor is cast to float, a
mis-shaped optimizer moment fails only at the next step, deep inside ``Adam``), so every
check here runs first and raises :class:`CheckpointError` naming the file, the entry and
what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import chain
from typing import Any

import torch
from torch import Tensor

from msflow.errors import CheckpointError

# Every tensor an msflow checkpoint holds lives under one of these.
PREFIXES = ("model/", "ema/", "optim/", "rng/")
_RNG_STATES = ("rng/noise", "rng/torch")
_SECTIONS = ("data", "model", "optim", "train")
_FIX = "the file is corrupt or was not written by msflow; use an earlier checkpoint or retrain"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _count(v: Any) -> bool:
    # JSON integers have no bound; 2**63 keeps every count a 64-bit integer (steps reach torch).
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# Metadata key -> (check, what a valid value is). Keys are checked when present: the same
# container also holds other caches (the feature classifier's), and older runs lack newer keys.
_META: dict[str, tuple[Callable[[Any], bool], str]] = {
    "config": (lambda v: isinstance(v, dict), "a mapping"),
    "model_spec": (
        lambda v: isinstance(v, dict) and isinstance(v.get("name"), str) and isinstance(v.get("overrides"), dict),
        'a mapping {"name": string, "overrides": mapping}',
    ),
    "step": (_count, "an integer in [0, 2**63)"),
    "seed": (lambda v: _count(v) and v < 2**32, "an integer in [0, 2**32)"),
    "bad_in_a_row": (_count, "an integer in [0, 2**63)"),
    "rollbacks": (_count, "an integer in [0, 2**63)"),
    "lr_scale": (lambda v: _number(v) and v > 0, "a finite number > 0"),
    "train_seconds": (lambda v: _number(v) and v >= 0, "a finite number of seconds >= 0"),
    "assembled_from": (
        lambda v: isinstance(v, dict) and all(isinstance(p, str) for p in v.values()),
        "a mapping of levels to checkpoint paths",
    ),
    "optimizer": (
        lambda v: (
            isinstance(v, dict) and isinstance(v.get("param_groups"), list) and isinstance(v.get("scalars"), dict)
        ),
        'a mapping {"param_groups": list, "scalars": mapping}',
    ),
    "results": (lambda v: v is None or isinstance(v, dict), "a mapping or null"),
    "versions": (lambda v: isinstance(v, dict), "a mapping"),
}


def check_meta(meta: Any, source: str) -> None:
    """The JSON metadata is an object and its known entries have the types msflow writes."""
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{source} has msflow metadata that is a JSON {type(meta).__name__}, expected an object; {_FIX}"
        )
    for key, (ok, expected) in _META.items():
        if key in meta and not ok(meta[key]):
            raise CheckpointError(f"{source} has metadata {key}={_short(meta[key])}, expected {expected}; {_FIX}")
    for section in _SECTIONS:
        value = meta.get("config", {}).get(section, {})
        if not isinstance(value, dict):
            raise CheckpointError(f"{source} has metadata config.{section}={_short(value)}, expected a mapping; {_FIX}")


def require(tensors: dict[str, Tensor], meta: dict[str, Any], names: tuple[str, ...], source: str) -> None:
    """Each of ``names`` is in the metadata or, when it contains a "/", among the tensors."""
    for name in names:
        if name not in (tensors if "/" in name else meta):
            what = "tensor" if "/" in name else "metadata entry"
            raise CheckpointError(f"{source} has no {what} {name!r}, which msflow needs here; {_FIX}")


def check_tensors(tensors: dict[str, Tensor], source: str) -> None:
    """Tensor names are msflow's, EMA weights mirror the model's, random states are valid."""
    for name in tensors:
        if not name.startswith(PREFIXES):
            raise CheckpointError(
                f"{source} holds a tensor named {_short(name)}, expected names under {', '.join(PREFIXES)}; {_FIX}"
            )
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema/")}
    if model and ema:
        for name in sorted(set(model) ^ set(ema)):
            where, other = ("model/", "ema/") if name in model else ("ema/", "model/")
            raise CheckpointError(f"{source} has {where}{name} but no {other}{name}; {_FIX}")
        for name in sorted(model):
            a, b = model[name], ema[name]
            if (a.shape, a.dtype) != (b.shape, b.dtype):
                raise CheckpointError(
                    f"{source} has model/{name} of {a.dtype} {tuple(a.shape)} but ema/{name} of {b.dtype} "
                    f"{tuple(b.shape)}, expected the same dtype and shape; {_FIX}"
                )
    # save_checkpoint never writes NaN or infinity, so a file that holds one was altered.
    for name, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{source} has NaN or infinite values in {name}; use an earlier checkpoint")
    for name in _RNG_STATES:
        if name in tensors:
            try:
                torch.Generator().set_state(tensors[name])
            except (RuntimeError, TypeError) as err:
                raise CheckpointError(
                    f"{source} has {name} that is not a CPU random-generator state ({err}); {_FIX}"
                ) from None


def check_weights(own: dict[str, Tensor], weights: dict[str, Tensor], source: str) -> None:
    """Same dtypes as the model's tensors (no silent casts) and finite floating-point values."""
    for name in sorted(own):
        mine, theirs = own[name], weights[name]
        if theirs.dtype != mine.dtype:
            raise CheckpointError(
                f"{source} has tensor {name!r} of dtype {theirs.dtype}, expected {mine.dtype}; {_FIX}"
            )
        if theirs.is_floating_point() and not torch.isfinite(theirs).all():
            raise CheckpointError(f"{source} has NaN or infinite values in {name!r}; use an earlier checkpoint")


def _same_kind(mine: Any, theirs: Any) -> bool:
    """Whether a saved optimizer hyperparameter can stand in for the optimizer's own value."""
    if mine is None or isinstance(mine, bool):
        return theirs is None or isinstance(theirs, bool)
    if isinstance(mine, (int, float)):
        return _number(theirs)
    if isinstance(mine, (tuple, list)):
        return (
            isinstance(theirs, (tuple, list))
            and len(theirs) == len(mine)
            and all(_same_kind(a, b) for a, b in zip(mine, theirs, strict=True))
        )
    return type(theirs) is type(mine)


# Per-parameter state of the optimizers training uses: key -> (is a tensor, has the parameter's
# shape). Adam's and Adamax's step counters are float scalar tensors.
_STATE_LAYOUTS: dict[type, dict[str, tuple[bool, bool]]] = {
    torch.optim.Adam: {"step": (True, False), "exp_avg": (True, True), "exp_avg_sq": (True, True)},
    torch.optim.Adamax: {"step": (True, False), "exp_avg": (True, True), "exp_inf": (True, True)},
}


def _state_layout(optimizer: torch.optim.Optimizer, state: dict[int, dict[str, Any]]) -> dict[str, tuple[bool, bool]]:
    """The state every parameter must have; for an optimizer not in the table, that of the first
    saved parameter (then only consistency, shapes and values can be checked)."""
    layout = dict(_STATE_LAYOUTS.get(type(optimizer), {}))
    if layout and optimizer.param_groups[0].get("amsgrad"):
        layout["max_exp_avg_sq"] = (True, True)
    if not layout and state:
        first = state[min(state)]
        layout = {k: (torch.is_tensor(v), torch.is_tensor(v) and v.dim() > 0) for k, v in first.items()}
    return layout


def _check_groups(optimizer: torch.optim.Optimizer, groups: list, where: str) -> list[int]:
    if len(groups) != len(optimizer.param_groups):
        raise CheckpointError(f"{where} has {len(groups)} parameter groups, expected {len(optimizer.param_groups)}")
    ids: list[int] = []
    for saved, own in zip(groups, optimizer.param_groups, strict=True):
        if not isinstance(saved, dict) or set(saved) != set(own):
            keys = sorted(saved) if isinstance(saved, dict) else _short(saved)
            raise CheckpointError(f"{where} has a parameter group with keys {keys}, expected {sorted(own)}")
        params = saved["params"]
        if not (isinstance(params, list) and len(params) == len(own["params"]) and all(map(_count, params))):
            raise CheckpointError(f"{where} has params={_short(params)}, expected {len(own['params'])} indices")
        for key, value in saved.items():
            if key != "params" and not _same_kind(own[key], value):
                raise CheckpointError(f"{where} has {key}={_short(value)}, expected a value like {own[key]!r}")
        ids += params
    if len(set(ids)) != len(ids):
        raise CheckpointError(f"{where} lists a parameter index twice")
    return ids


def check_optimizer_state(
    optimizer: torch.optim.Optimizer, state: dict[int, dict[str, Any]], groups: Any, source: str
) -> None:
    """The saved state fits ``optimizer``: same groups and hyperparameter types, one state entry
    per parameter with the keys, shapes and dtypes this optimizer keeps."""
    where = f"{source} (optimizer state)"
    if not isinstance(groups, list):
        raise CheckpointError(f"{where} has param_groups={_short(groups)}, expected a list; {_FIX}")
    ids = _check_groups(optimizer, groups, where)
    params = dict(zip(ids, chain.from_iterable(g["params"] for g in optimizer.param_groups), strict=True))
    layout = _state_layout(optimizer, state)
    for idx, entry in sorted(state.items()):
        if idx not in params:
            raise CheckpointError(f"{where} has state for parameter {idx}, which no parameter group lists; {_FIX}")
        if set(entry) != set(layout):
            raise CheckpointError(
                f"{where} has entries {sorted(entry)} for parameter {idx}, expected {sorted(layout)}; {_FIX}"
            )
        for key, value in entry.items():
            is_tensor, param_shaped = layout[key]
            # Moments are the parameter's dtype and shape; counters (Adam's step) are float scalars.
            shape, dtype = (params[idx].shape, params[idx].dtype) if param_shaped else (torch.Size([]), None)
            if is_tensor:
                ok = torch.is_tensor(value) and value.is_floating_point() and value.shape == shape
                ok = ok and value.dtype == (dtype or value.dtype) and bool(torch.isfinite(value).all())
            else:
                ok = _number(value)
            if not ok:
                got = f"{value.dtype} {tuple(value.shape)}" if torch.is_tensor(value) else _short(value)
                want = f"finite {dtype or 'floats'} of shape {tuple(shape)}" if is_tensor else "a finite number"
                raise CheckpointError(f"{where} has {key} of parameter {idx} = {got}, expected {want}; {_FIX}")

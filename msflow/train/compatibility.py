"""Whether a dataset fits a model: shapes, and conditions for a conditional model only."""

from __future__ import annotations

from msflow.data import ImageDataset
from msflow.data.registry import PAIRED_DATASETS
from msflow.errors import ShapeError
from msflow.models.base import ImageFlow
from msflow.train.config import Config


def check_compatible(model: ImageFlow, data: ImageDataset, cfg: Config) -> None:
    """Raise a :class:`ShapeError` naming the fix when data and model shapes differ.

    A conditional model needs a paired dataset (targets with conditions) of its condition
    shape, and an unconditional model refuses one.
    """
    model_cond, data_cond = model.cond_shape, getattr(data, "cond_shape", None)
    if model_cond is not None and data_cond is None:
        raise ShapeError(
            f"model {cfg.model.name!r} is conditional and needs a paired dataset "
            f"({', '.join(sorted(PAIRED_DATASETS))}); {cfg.data.name!r} has no conditions"
        )
    if model_cond is None and data_cond is not None:
        raise ShapeError(
            f"dataset {cfg.data.name!r} pairs targets with conditions; train a conditional model on it "
            "(cflow-*, factorized-*; `msflow list`)"
        )
    if model_cond is not None and tuple(data_cond) != tuple(model_cond):
        got, want = ("x".join(map(str, s)) for s in (data_cond, model_cond))
        raise ShapeError(
            f"dataset {cfg.data.name!r} has {got} conditions but model {cfg.model.name!r} expects {want}; "
            "choose the preset for this task (e.g. cflow-sr4 for photos-sr4)"
        )
    if tuple(data.image_shape) != tuple(model.image_shape):
        got, want = ("x".join(map(str, s)) for s in (data.image_shape, model.image_shape))
        smaller = data.image_shape[0] == model.image_shape[0] and data.image_shape[-1] < model.image_shape[-1]
        hint = f"set data.pad_to={model.image_shape[-1]}" if smaller else "choose a model preset for this data"
        raise ShapeError(
            f"dataset {cfg.data.name!r} has {got} images but model {cfg.model.name!r} expects {want}; {hint}"
        )

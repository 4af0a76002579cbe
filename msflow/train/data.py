"""The data of a config: a plain dataset, or a task's streamed training crops and fixed test crops.

Example:
    >>> from msflow.train.config import load_config
    >>> cfg = load_config("photos-sr4-caflow")
    >>> data_task(cfg), load_data(cfg, "train").image_shape, loader_workers(cfg)
    ('sr4', (3, 32, 32), 0)
"""

from __future__ import annotations

from dataclasses import replace

from msflow._budget import check_dataset_bytes
from msflow.data import ImageDataset, get_dataset
from msflow.data.stream import CropStream
from msflow.data.tasks import TASK_ALIASES, task_data
from msflow.errors import ConfigError
from msflow.train.config import Config


def data_task(cfg: Config) -> str | None:
    """The image-to-image task of ``cfg`` (``data.task``, or the one an older dataset name stands for)."""
    return cfg.data.task or TASK_ALIASES.get(cfg.data.name)


def load_data(cfg: Config, split: str) -> ImageDataset | CropStream:
    """The configured dataset split: for a task or a ``data.crop``, random crops (train) or fixed crops (test).

    ``data.crop`` without a task streams plain crops of photos of any size for unconditional models.
    """
    d, task = cfg.data, data_task(cfg)
    if task is None and d.crop is None:
        return padded_dataset(d.name, split, d.root, d.pad_to, d.downsample)
    if d.pad_to is not None or d.downsample is not None:
        raise ConfigError("data.pad_to and data.downsample resize whole images; with data.crop, choose the crop side")
    if task is None and d.name not in ("photos", "folder"):
        raise ConfigError(f"data.crop draws random crops from photos: use data.name=photos or folder, not {d.name}")
    if d.name in TASK_ALIASES and d.task not in (None, TASK_ALIASES[d.name]):
        raise ConfigError(
            f"data.name={d.name} means data.task={TASK_ALIASES[d.name]}, but data.task is {d.task}: "
            "set data.name=photos and the task you want"
        )
    source = "photos" if d.name in TASK_ALIASES else d.name
    return task_data(source, task, split, cfg.train.seed, d.root, d.crop, d.holes, d.masks, d.test_crops)


def padded_dataset(
    name: str,
    split: str,
    root: str | None,
    pad_to: int | None,
    downsample: int | None = None,
    option: str = "data.pad_to",
) -> ImageDataset:
    """``get_dataset(name, split, root=root, pad_to=pad_to, downsample=downsample)``, refused in one
    :class:`~msflow.errors.BudgetError` line when the padded set would not fit the in-memory
    budget (:func:`msflow._budget.check_dataset_bytes`), before it is padded; the message names
    ``option``.

    With ``pad_to``, the split is first read unpadded to learn its size (bundled sets are cached,
    so that costs nothing twice).
    """
    if pad_to is not None:
        plain = get_dataset(name, split, root=root)
        copies = 2 if getattr(plain, "conds", None) is not None else 1  # pairs pad their conditions too
        what = f"{option}={pad_to} ({name} {split})"
        check_dataset_bytes(what, len(plain), (plain.image_shape[0], pad_to, pad_to), copies)
    return get_dataset(name, split, root=root, pad_to=pad_to, downsample=downsample)


def with_crop_size(cfg: Config) -> Config:
    """``cfg`` with the model built for ``data.crop``-sided targets when a task sets a crop (``size`` option)."""
    if data_task(cfg) is None or cfg.data.crop is None or "size" in cfg.model.options:
        return cfg
    return replace(cfg, model=replace(cfg.model, options={**cfg.model.options, "size": cfg.data.crop}))


def loader_workers(cfg: Config) -> int:
    """``data.workers``, or when unset: 2 loader processes for a folder of photos, none otherwise."""
    if cfg.data.workers is not None:
        return cfg.data.workers
    return 2 if cfg.data.name == "folder" and (data_task(cfg) is not None or cfg.data.crop is not None) else 0

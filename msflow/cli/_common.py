"""Argument types and helpers shared by the ``msflow`` subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def temperature_arg(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 10:
        raise argparse.ArgumentTypeError(f"temperature must be in [0, 10], got {text}")
    return value


def bpd_line(split: str, result: dict, data: str, seed: int) -> str:
    mean, stderr, n = result["bpd"], result["bpd_stderr"], result["n"]
    return f"{split} bits/dim: {mean:.6f} +- {stderr:.6f} ({n} {split} images of {data}, dequantization seed {seed})"


def bpd_fn(model: torch.nn.Module, batch_size: int, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    from msflow.data import ImageDataset
    from msflow.train.evaluate import dataset_bits_per_dim

    # The one evaluation loop of `msflow eval`, with the same seeded dequantization draw for every set.
    return lambda images: dataset_bits_per_dim(model, ImageDataset(images), batch_size, seed)


def in_distribution(args: argparse.Namespace, cfg: Any, model: torch.nn.Module, split: str) -> torch.Tensor:
    from msflow.data import get_dataset
    from msflow.data.convert import to_shape
    from msflow.train.loop import load_data

    if getattr(args, "in_data", None) in (None, cfg.data.name):
        return load_data(cfg, split).images
    images = get_dataset(args.in_data, split, root=args.root).images
    return to_shape(images, tuple(model.image_shape), args.fit)[0]


def write_json(path: str, payload: dict) -> None:
    import json
    from pathlib import Path

    from msflow._io import atomic_write

    text = json.dumps(payload, indent=1)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))
    print(f"wrote every number to {path}")

"""Size budgets, checked from the numbers alone before anything is built or allocated.

A size in a config, a dotted override or a checkpoint header is user input. ``steps=1000000000``
would build modules until the memory runs out, ``hidden=1e12`` or an image side of ``2**20`` would
ask the allocator for terabytes, and ``data.pad_to=4096`` pads MNIST to 67 GB. So every size a
model spec holds is checked here against a limit, then so are the total parameters and the
activation memory the spec implies, estimated with formulas that err large; an in-memory dataset
is checked before it is padded. Each refusal is one :class:`~msflow.errors.BudgetError` line
that names the option, its limit and how to go past it.

The limits are far above every preset (the largest, ``glow-imagenet64``, has 74 M parameters).
Setting the environment variable ``MSFLOW_ALLOW_LARGE=1`` lifts them for a model or dataset that
really is that large; the type and sign checks stay (a width of 0, -1 or ``"1e20"`` is never a
size).

Example:
    >>> e = estimate({"image_shape": (3, 32, 32), "levels": 3, "steps": 32, "hidden": 512})  # glow-cifar10: 44 M
    >>> e.blocks, f"{e.parameters:.2g}", f"{e.activation_bytes:.2g}"
    (96, '5.6e+07', '8.9e+07')
    >>> check_model_spec("glow-mnist", {"steps": 16}, {"hidden": 8})
    >>> try:
    ...     check_model_spec("glow-mnist", {"steps": 16}, {"hidden": 0})
    ... except ValueError as err:
    ...     print(err)
    model 'glow-mnist': option hidden must be an integer >= 1, got 0
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from msflow.errors import BudgetError, ConfigError

ALLOW_LARGE = "MSFLOW_ALLOW_LARGE"
"""The environment variable that lifts the size limits (``1``; unset, empty or ``0``: they hold)."""

MAX_INT = 2**31 - 1  # no size needs more, with or without the switch: beyond, torch overflows

# Option names of every model family, by what they count; (least value, limit).
LEVELS = {"levels": (1, 16), "resolutions": (1, 16), "num_levels": (1, 16)}
BLOCKS = dict.fromkeys(
    (
        "steps",
        "cond_steps",
        "target_steps",
        "flow_steps",
        "blocks",
        "transitions",
        "dequant_steps",
        "dequantizer_steps",
        "layers",
        "lstm_layers",
    ),
    (0, 1024),
)
WIDTHS = dict.fromkeys(("hidden", "cond_hidden", "features", "growth", "lstm_hidden"), (1, 65536))
MULTIPLIERS = dict.fromkeys(("mixtures", "bins"), (1, 1024))
SIDES = {"size": (1, 65536), "channels": (1, 256), "scale": (1, 64), "patch": (1, 4096)}
SEQUENCES = dict.fromkeys(("vgg", "cond_channels"), (1, 65536))
_WHAT = (
    [(k, "levels") for k in LEVELS]
    + [(k, "blocks per level") for k in BLOCKS]
    + [(k, "channels") for k in [*WIDTHS, *SEQUENCES, "channels"]]
    + [(k, "components") for k in MULTIPLIERS]
    + [("size", "pixels a side"), ("scale", "times"), ("patch", "pixels a side")]
)
WHAT = dict(_WHAT)

MAX_BLOCKS = 4096
"""Blocks in all (levels x blocks per level): each is a few modules, built one by one in Python."""
MAX_PARAMETERS = 2e9
"""Estimated parameters: 8 GB of float32 weights, 32 GB with their gradients and Adam's moments."""
MAX_ACTIVATION_BYTES = 64e9
"""Estimated activation memory that training keeps for the backward pass, per image."""
MAX_DATASET_BYTES = 16e9
"""An in-memory dataset (uint8 images, and conditions for pairs) after padding."""

# Where a preset's default is not visible in its builder's signature, the estimate assumes these.
_FALLBACK_BLOCKS, _FALLBACK_WIDTH, _FALLBACK_LEVELS, _FALLBACK_SHAPE = 32, 512, 3, (3, 32, 32)


def allow_large() -> bool:
    """Whether ``MSFLOW_ALLOW_LARGE`` is set (to anything but ``0``): the size limits are lifted."""
    return os.environ.get(ALLOW_LARGE, "").strip() not in ("", "0")


def over_budget(message: str, fix: str) -> BudgetError:
    """The one-line error for a size over a limit: what, how to shrink it, and the switch."""
    return BudgetError(f"{message}; {fix}, or set {ALLOW_LARGE}=1 to go past msflow's size limits")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _count(model: str, key: str, value: Any, least: int, limit: int) -> None:
    """``value`` is an integer in ``[least, limit]``; the limit yields to the switch, the rest never."""
    if not _is_int(value) or value < least:
        raise ConfigError(f"model {model!r}: option {key} must be an integer >= {least}, got {_show(value)}")
    if value > MAX_INT:
        raise ConfigError(f"model {model!r}: option {key}={value} is beyond any size msflow builds (2**31 - 1)")
    if value > limit and not allow_large():
        raise over_budget(f"model {model!r}: {key}={value} is more than {limit} {WHAT[key]}", f"lower {key}")


def _image_shape(model: str, value: Any) -> None:
    if not (isinstance(value, (list, tuple)) and len(value) == 3):
        raise ConfigError(f"model {model!r}: option image_shape must be [channels, height, width], got {_show(value)}")
    for k, (side, what) in enumerate(zip(value, ("channels", "size", "size"), strict=True)):
        least, limit = SIDES[what]
        try:
            _count(model, what, side, least, limit)
        except BudgetError:
            raise over_budget(
                f"model {model!r}: image_shape={list(value)} has {side} {WHAT[what]} (limit {limit})",
                "use smaller images",
            ) from None
        except ConfigError:
            raise ConfigError(
                f"model {model!r}: option image_shape must be 3 integers >= 1, got {_show(value)} (entry {k})"
            ) from None


def _check_option(model: str, key: str, value: Any, default: Any) -> None:
    """Type, sign and limit of one option whose name says it is a size; others are the builder's.

    ``default`` is the preset's value: where it is text (glow's ``scale`` names a function, where
    CAFLOW's and cflow's is a factor), the option is not a size.
    """
    if value is None or isinstance(default, str):  # None: the preset's default
        return
    if key == "image_shape":
        _image_shape(model, value)
    elif key in SEQUENCES:
        if not isinstance(value, (list, tuple)) or len(value) > 64:
            raise ConfigError(f"model {model!r}: option {key} must be a list of widths, got {_show(value)}")
        for item in value:
            _count(model, key, item, *SEQUENCES[key])
    elif key == "blocks_per_level":
        if not isinstance(value, Mapping) or len(value) > LEVELS["levels"][1]:
            raise ConfigError(f"model {model!r}: option blocks_per_level must map levels to counts, got {_show(value)}")
        for count in value.values():
            _count(model, "blocks", count, *BLOCKS["blocks"])
    else:
        for table in (LEVELS, BLOCKS, WIDTHS, MULTIPLIERS, SIDES):
            if key in table:
                _count(model, key, value, *table[key])


@dataclass(frozen=True)
class Estimate:
    """What a model spec implies, from its numbers alone (formulas that err large)."""

    blocks: int
    """Levels times the blocks of a level, plus extra blocks of single levels."""
    parameters: float
    """Each block's networks: two ``hidden x hidden`` layers and 3x3 layers in and out."""
    activation_bytes: float
    """Per image, in training: four float32 feature maps of ``hidden`` channels per block, at
    the level's resolution (a squeeze per level quarters it); with a ``patch`` option (TarFlow's
    tokens), also each block's attention matrices over the patch tokens."""
    image_shape: tuple[int, int, int]


def _size(spec: Mapping[str, Any], key: str, fallback: int) -> int:
    value = spec.get(key)
    return value if _is_int(value) else fallback


def estimate(spec: Mapping[str, Any]) -> Estimate:
    """The :class:`Estimate` of a model spec (a preset's visible defaults updated with overrides)."""
    levels = next((spec[k] for k in LEVELS if _is_int(spec.get(k))), _FALLBACK_LEVELS)
    present = [k for k in BLOCKS if k in spec]
    per_level = sum(_size(spec, k, _FALLBACK_BLOCKS) for k in present) if present else _FALLBACK_BLOCKS
    extra = spec.get("blocks_per_level")
    extra_blocks = sum(v for v in extra.values() if _is_int(v)) if isinstance(extra, Mapping) else 0
    blocks = levels * max(1, per_level) + extra_blocks
    widths = [_size(spec, k, _FALLBACK_WIDTH) for k in WIDTHS if k in spec]
    widths += [v for k in SEQUENCES if isinstance(spec.get(k), (list, tuple)) for v in spec[k] if _is_int(v)]
    width = max(widths, default=_FALLBACK_WIDTH)
    multiplier = max([_size(spec, k, 1) for k in MULTIPLIERS if k in spec], default=1)
    shape = spec.get("image_shape")
    if isinstance(shape, (list, tuple)) and len(shape) == 3 and all(map(_is_int, shape)):
        c, h, w = shape
    else:
        c = _size(spec, "channels", _FALLBACK_SHAPE[0])
        h = w = _size(spec, "size", _FALLBACK_SHAPE[1])
    # A block's subnet: 1x1 and 3x3 layers of hidden x hidden, 3x3 layers to and from the (squeezed) image.
    parameters = blocks * (2.0 * width**2 + 9.0 * width * 4 * c * multiplier)
    activation_bytes = 16.0 / 3.0 * (blocks / levels) * width * h * w
    patch = spec.get("patch")
    if _is_int(patch) and patch > 0:
        # A Transformer over (h/p)(w/p) patch tokens keeps, per block, its float32 attention scores
        # and their softmax (tokens x tokens, a head at least) for the backward pass.
        tokens = -(-h // patch) * -(-w // patch)
        activation_bytes += 8.0 * blocks * tokens**2
    return Estimate(blocks, parameters, activation_bytes, (c, h, w))


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def check_model_spec(model: str, defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> None:
    """Refuse a model spec whose sizes are not sizes (:class:`ConfigError`) or are over the limits
    (:class:`BudgetError`, lifted by ``MSFLOW_ALLOW_LARGE=1``), before anything is built.

    ``defaults`` are the preset's own values, trusted; ``overrides`` are checked one by one, then
    the estimate of both together.
    """
    for key, value in overrides.items():
        _check_option(model, key, value, defaults.get(key))
    if allow_large():
        return
    e = estimate({**defaults, **overrides})
    fix = "lower the steps, levels or widths"
    if e.blocks > MAX_BLOCKS:
        raise over_budget(f"model {model!r} has {e.blocks} blocks in all (limit {MAX_BLOCKS})", fix)
    if e.parameters > MAX_PARAMETERS:
        raise over_budget(f"model {model!r} has about {e.parameters:.2g} parameters (limit {MAX_PARAMETERS:.0g})", fix)
    if e.activation_bytes > MAX_ACTIVATION_BYTES:
        shape = "x".join(map(str, e.image_shape))
        raise over_budget(
            f"model {model!r} needs about {_gb(e.activation_bytes)} of activations per {shape} image in training "
            f"(limit {_gb(MAX_ACTIVATION_BYTES)})",
            f"use smaller images or {fix}",
        )


def check_dataset_bytes(what: str, count: int, shape: tuple[int, ...], copies: int = 1) -> None:
    """Refuse an in-memory dataset of ``count`` uint8 images of ``shape`` (``copies`` arrays of them:
    2 for targets and conditions) over :data:`MAX_DATASET_BYTES`, before it is allocated."""
    size = count * copies
    for n in shape:
        size *= n
    if size > MAX_DATASET_BYTES and not allow_large():
        dims = "x".join(map(str, shape))
        raise over_budget(
            f"{what} would hold {count} images of {dims} in memory, {_gb(size)} (limit {_gb(MAX_DATASET_BYTES)})",
            "pad less",
        )

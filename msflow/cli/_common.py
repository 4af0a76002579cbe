"""Argument types and helpers shared by the ``msflow`` subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from msflow.errors import ConfigError

# No option needs more than 2**31 - 1 of anything; larger values would only overflow deep in
# torch (sizes and seeds are 64-bit there) and end in a traceback instead of a usage error.
MAX_COUNT = 2**31 - 1
# Seeds reach torch.Generator.manual_seed, also multiplied (data order: seed * 1_000_003 + epoch).
SEED_LIMIT = 2**32


def _show(text: str) -> str:
    return text if len(text) <= 40 else f"{text[:37]}..."


def _tail(path: str) -> str:
    """A path as given, or its last 200 characters: the file name is what says what is wrong."""
    return path if len(path) <= 200 else f"...{path[-197:]}"


def int_range(low: int, high: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer in ``[low, high]``; ``what`` says what is expected."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {_show(text)!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {what}, got {_show(text)}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be {what} of at most {high}, got {_show(text)}")
        return value

    return parse


positive_int = int_range(1, MAX_COUNT, "a positive integer")
non_negative_int = int_range(0, MAX_COUNT, "an integer >= 0")
seed_arg = int_range(0, SEED_LIMIT - 1, "a seed in [0, 2**32)")


def float_range(low: float, high: float, what: str, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a number in ``[low, high]`` (``(low, high]`` with ``low_open``); NaN never is."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}, got {_show(text)!r}") from None
        if not (low < value <= high if low_open else low <= value <= high):
            raise argparse.ArgumentTypeError(f"{what}, got {_show(text)}")
        return value

    return parse


temperature_arg = float_range(0, 10, "temperature must be in [0, 10]")
learning_rate_arg = float_range(0, 1, "learning rate must be in (0, 1]", low_open=True)


RUN_FILES = frozenset(
    {"checkpoint.safetensors", "config.yaml", "metrics.jsonl", "results.json", "logdets.jsonl", "logdets.png"}
)
"""Files ``msflow train`` keeps in a run folder: no other command's output may replace them."""


class OutputFile:
    """An argparse type for a file a command writes, of one kind (``.png``, ``.json``, ``.html``):
    checked before the work, not after it.

    Missing folders are created when the file is written; a folder at the path, a file where a
    folder should be, another kind of file (``-o notes.txt`` for an image) and a run's own files
    are refused here. Whether the file already exists is checked with the command's other
    outputs once every argument is parsed (:func:`check_outputs`): a command with an output
    option has ``--force``, and without it refuses to replace any file.

    Example:
        >>> png_output("grid.png")
        'grid.png'
        >>> png_output("notes.txt")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: notes.txt is not a .png file: this option writes a PNG image
    """

    def __init__(self, *suffixes: str, kind: str) -> None:
        self.suffixes, self.kind = suffixes, kind

    def __call__(self, text: str) -> str:
        path = Path(text)
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a folder, expected the path of a file to write")
        parent = next((p for p in path.absolute().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise argparse.ArgumentTypeError(f"{parent} is a file, so {text} cannot be written inside it")
        # A run's own files (and its sample grids) belong to `msflow train`: another command's output
        # must not replace them (`msflow sample RUN -o RUN/checkpoint.safetensors` once did).
        folder = path.absolute().parent
        in_run = (folder / "checkpoint.safetensors").exists() and path.name in RUN_FILES
        in_samples = folder.name == "samples" and (folder.parent / "checkpoint.safetensors").exists()
        if in_run or in_samples:
            raise argparse.ArgumentTypeError(f"{text} is a file of the training run in {folder}: write it elsewhere")
        if path.suffix.lower() not in self.suffixes:
            raise argparse.ArgumentTypeError(
                f"{_tail(text)} is not a {' or '.join(self.suffixes)} file: this option writes {self.kind}"
            )
        return text


png_output = OutputFile(".png", kind="a PNG image")
json_output = OutputFile(".json", kind="JSON")
html_output = OutputFile(".html", ".htm", kind="an HTML page")


def add_force_options(sub: Any) -> None:
    """Give every subcommand of ``sub`` that has an :class:`OutputFile` option ``--force``, and
    record its output options (``output_options``) for :func:`check_outputs`."""
    for parser in sub.choices.values():
        # argparse has no public listing of a parser's actions.
        actions = [a for a in parser._actions if isinstance(a.type, OutputFile)]  # noqa: SLF001
        if actions:
            parser.add_argument("--force", action="store_true", help="replace output files that already exist")
            parser.set_defaults(output_options=[(a.dest, a.option_strings[0]) for a in actions])


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any work, outputs that would replace a file without ``--force``, and two
    outputs at one path.

    The files are those of the output options (their defaults included) and the names a command
    derives from them (``args.derived_outputs(args)``: ``segment -o r.png`` also writes
    ``r_mean.png`` and ``r_mask.png``), each as ``(path, the option that sets it)``.
    """
    options: list[tuple[str, str]] = getattr(args, "output_options", [])
    outputs = [(Path(getattr(args, dest)), flag, "") for dest, flag in options if getattr(args, dest) is not None]
    derive = getattr(args, "derived_outputs", None)
    outputs += [(path, flag, f" (written with {flag})") for path, flag in (derive(args) if derive else [])]
    seen: dict[Path, str] = {}
    for path, flag, _ in outputs:
        where = path.resolve()
        if where in seen:
            raise ConfigError(f"{seen[where]} and {flag} name the same file {path}: give {flag} another path")
        seen[where] = flag
    if getattr(args, "force", False):
        return
    for path, flag, derived in outputs:
        if path.exists():
            raise ConfigError(f"{path}{derived} exists: give --force to replace it, or {flag} another path")


def folder_arg(text: str) -> str:
    """An argparse type for a folder a command writes into (created if missing); a file is refused."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, expected a folder")
    return text


def bpd_line(split: str, result: dict, data: str, seed: int) -> str:
    mean, stderr, n = result["bpd"], result["bpd_stderr"], result["n"]
    line = f"{split} bits/dim: {mean:.6f} +- {stderr:.6f} ({n} {split} images of {data}, dequantization seed {seed})"
    if result.get("diverged"):
        line += (
            f"; {result['diverged']} of {n} images diverged (non-finite or above 1000 bits/dim): the mean is not usable"
        )
    return line


def bpd_fn(model: torch.nn.Module, batch_size: int, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    from msflow.data import ImageDataset
    from msflow.train.evaluate import dataset_bits_per_dim

    # The one evaluation loop of `msflow eval`, with the same seeded dequantization draw for every set.
    return lambda images: dataset_bits_per_dim(model, ImageDataset(images), batch_size, seed)


def in_distribution(args: argparse.Namespace, cfg: Any, model: torch.nn.Module, split: str) -> torch.Tensor:
    from msflow.data import get_dataset
    from msflow.data.convert import to_shape
    from msflow.runs import load_data

    if getattr(args, "in_data", None) in (None, cfg.data.name):
        return load_data(cfg, split).images
    images = get_dataset(args.in_data, split, root=args.root).images
    return to_shape(images, tuple(model.image_shape), args.fit)[0]


def write_json(path: str, payload: dict) -> None:
    import json
    from pathlib import Path

    from msflow._io import atomic_write, finite_json

    # Scores that do not exist (SSIM of images under its 7x7 window) are null, never NaN: strict JSON.
    text = json.dumps(finite_json(payload), indent=1, allow_nan=False)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))
    print(f"wrote every number to {path}")


def pair_index(spec: str, count: int) -> int:
    """The ``K`` of a ``test:K`` argument, checked against the ``count`` test pairs (one line on error).

    Example:
        >>> pair_index("test:3", 10)
        3
    """
    try:
        return int_range(0, count - 1, f"a test index in [0, {count - 1}]")(spec.removeprefix("test:"))
    except argparse.ArgumentTypeError as err:
        raise ConfigError(f"{spec}: the test pair {err}") from None

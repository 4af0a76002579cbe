"""Experiment configuration: dataclasses are the source of truth; YAML files and dotted
command-line overrides set them; unknown keys and bad values raise :class:`ConfigError`.

Example:
    >>> cfg = config_from_dict({"name": "demo", "train": {"steps": 10}})
    >>> cfg = apply_overrides(cfg, ["train.batch_size=32", "model.options.hidden=16"])
    >>> cfg.train.batch_size, cfg.model.options
    (32, {'hidden': 16})
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from msflow.data.recipes import HOLES, RECIPES
from msflow.errors import ConfigError
from msflow.nn.subnets import PRECISIONS
from msflow.train.device import DEVICES
from msflow.train.objective import OBJECTIVES
from msflow.train.recipe import BUDGET_CLOCKS, OPTIMIZERS, SCHEDULES


def _one_of(*choices: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices), f"one of {', '.join(choices)}"


_POSITIVE = (lambda v: math.isfinite(v) and v > 0), "positive (a finite number > 0)"
_COUNT = (lambda v: v >= 0), "an integer >= 0 (0 means never)"
_FRACTION = (lambda v: 0 <= v < 1), "a number in [0, 1)"


def ruled(default: Any, rule: tuple[Callable[[Any], bool], str]) -> Any:
    """A config field with its validity rule ``(check, what a valid value is)`` beside it."""
    return field(default=default, metadata={"rule": rule})


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to train and test on (see ``msflow list``), and for image-to-image tasks, how.

    ``name`` is a dataset, or with ``task`` set, an image source: ``photos`` (the bundled colour
    photographs) or ``folder`` (your photos of any size under ``root``). ``task`` is a recipe of
    :mod:`msflow.data.recipes` (``sr2``, ``sr4``, ``colorize``, ``inpaint``, ``sketch``,
    ``segment``) that turns each random ``crop x crop`` crop (default 32) into a (target,
    condition) pair; the model is built for targets of that side. ``holes`` is how inpainting
    hides pixels (``centre``, random ``boxes``, or ``folder``: your masks); ``masks`` is the
    folder of masks named as the photos (segmentation targets, or inpainting holes).
    ``test_crops`` caps the fixed test crops per test photo; ``workers`` is the number of loader
    processes that decode photos while the model trains (null: 0 for bundled photos, 2 for a
    folder). Plain datasets (no ``task``) are held in memory and may be ``pad_to``-padded and
    ``downsample``-averaged.
    """

    name: str = "mnist5k"
    root: str | None = None
    pad_to: int | None = ruled(None, ((lambda v: v is None or 0 < v <= 4096), "null or an image side in [1, 4096]"))
    downsample: int | None = ruled(
        None, ((lambda v: v is None or v in (1, 2, 4, 8, 16)), "null or a factor in 1, 2, 4, 8, 16")
    )
    task: str | None = ruled(None, ((lambda v: v is None or v in RECIPES), f"null or one of {', '.join(RECIPES)}"))
    crop: int | None = ruled(
        None, ((lambda v: v is None or 4 <= v <= 4096), "null (the task's 32) or a crop side in [4, 4096]")
    )
    holes: str = ruled("centre", _one_of(*HOLES))
    masks: str | None = None
    test_crops: int = ruled(128, ((lambda v: 1 <= v <= 100_000), "an integer in [1, 100000]"))
    workers: int | None = ruled(
        None, ((lambda v: v is None or 0 <= v <= 64), "null (automatic) or an integer in [0, 64]")
    )


@dataclass(frozen=True)
class ModelConfig:
    """A registered model preset and keyword overrides of its hyperparameters."""

    name: str = "glow-mnist"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimConfig:
    r"""Optimiser, learning-rate schedule, a one-time drop on a plateau, and stabilisers.

    The learning rate of step :math:`t` (counted from 0) is

    .. math::

        \eta_t = \text{schedule}(t) \cdot \text{plateau} \cdot \text{roll-back scale},

    where ``schedule`` rises linearly over the first ``warmup_steps`` steps to ``lr`` and then,
    with :math:`u = t - \text{warmup\_steps}`, is

    - ``constant``: ``lr``;
    - ``cosine``: ``lr * (1 + cos(pi * u / (train.steps - warmup_steps))) / 2``;
    - ``exponential`` (Liao & He): ``max(min_lr, lr * decay_rate^(u / decay_steps))`` (their
      Adamax: lr 0.01 to 0.001, rate 0.98 every 1000 steps);
    - ``step`` (PyTorch's ``StepLR``): ``max(min_lr, lr * decay_rate^floor(u / decay_steps))``.

    ``plateau`` is 1 until the training loss levels off and ``plateau_factor`` after: once
    ``plateau_patience`` optimiser steps in a row have not improved the smoothed loss (an
    exponential moving average of the rank-averaged step loss, decay 0.98) by more than
    ``plateau_threshold`` relative to its best value, the learning rate is multiplied by
    ``plateau_factor`` for the rest of training, exactly once (:class:`~msflow.train.plateau.Plateau`).
    ``plateau_patience=0`` (the default) turns it off. The drop is logged as an ``lr_drop`` event
    and as ``lr_drop_step`` in the results.

    Stabilisers: gradients are clipped to a total norm of ``grad_clip`` (always on); ``ema_decay``
    > 0 keeps an exponential moving average of the weights for evaluation and sampling. A step
    with a non-finite loss or gradient is skipped; after ``max_bad_steps`` in a row (or
    non-finite weights at a checkpoint) the run rolls back to its last checkpoint and multiplies
    the learning rate by ``rollback_lr_factor``; after ``max_rollbacks`` roll-backs it stops with
    an error.

    CAFLOW's recipe (appendix B: warm-up over 500 steps, ``StepLR`` with gamma 0.999, one drop by
    10 when the curve levels off, EMA 0.999, clipping at 1) is ``warmup_steps=500 schedule=step
    decay_rate=0.999 decay_steps=1 plateau_patience=N plateau_factor=0.1 ema_decay=0.999
    grad_clip=1``, where ``decay_steps`` is the steps per ``StepLR.step()`` call.
    """

    optimizer: str = ruled("adam", _one_of(*OPTIMIZERS))
    lr: float = ruled(1e-3, _POSITIVE)
    betas: tuple[float, float] = ruled(
        (0.9, 0.999), ((lambda v: len(v) == 2 and all(0 <= b < 1 for b in v)), "two numbers in [0, 1)")
    )
    weight_decay: float = ruled(0.0, ((lambda v: math.isfinite(v) and v >= 0), "a finite number >= 0"))
    warmup_steps: int = ruled(200, _COUNT)
    schedule: str = ruled("constant", _one_of(*SCHEDULES))
    decay_rate: float = ruled(0.98, ((lambda v: 0 < v <= 1), "a number in (0, 1]"))
    decay_steps: int = ruled(1000, _POSITIVE)
    min_lr: float = ruled(0.0, ((lambda v: math.isfinite(v) and v >= 0), "a finite number >= 0"))
    plateau_patience: int = ruled(0, _COUNT)
    plateau_factor: float = ruled(0.1, ((lambda v: 0 < v < 1), "a number in (0, 1)"))
    plateau_threshold: float = ruled(1e-3, ((lambda v: math.isfinite(v) and v >= 0), "a finite number >= 0"))
    grad_clip: float = ruled(50.0, _POSITIVE)
    ema_decay: float = ruled(0.999, _FRACTION)
    max_bad_steps: int = ruled(50, _POSITIVE)
    rollback_lr_factor: float = ruled(0.5, ((lambda v: 0 < v <= 1), "a number in (0, 1]"))
    max_rollbacks: int = ruled(3, _COUNT)


@dataclass(frozen=True)
class TrainConfig:
    """Loop length, batch sizes, logging and checkpoint cadence, device and precision.

    ``max_seconds`` (0: none) stops training at the first step past that much time, counted
    over every resume, then evaluates as usual. ``budget_clock`` says which time: ``wall`` or
    ``cpu`` (the process's CPU seconds, all threads: fair between runs sharing a machine).
    A time-limited run is not bit-for-bit repeatable (where it stops depends on speed).
    Evaluations are run every ``eval_every`` steps and every ``eval_seconds`` budget seconds
    (0: never), on the first ``eval_images`` test images (0: all; the final evaluation too); the
    budget counts training only, not the evaluations during it, so curves of test bits/dim
    against budget seconds compare runs fairly (``benchmarks/mrcnf_sweep.py``).
    ``precision`` is the subnets' precision (``msflow.train.precision``): ``auto`` (bf16-mixed
    where the CPU or GPU multiplies bf16 natively, else float32), ``float32`` or ``bf16-mixed``;
    evaluation always runs in float32 (or the ``--dtype`` asked for)."""

    steps: int = ruled(2000, _POSITIVE)
    max_seconds: float = ruled(0.0, ((lambda v: math.isfinite(v) and v >= 0), "seconds >= 0 (0 means no limit)"))
    budget_clock: str = ruled("wall", _one_of(*BUDGET_CLOCKS))
    batch_size: int = ruled(64, _POSITIVE)
    eval_batch_size: int = ruled(500, _POSITIVE)
    eval_every: int = ruled(500, _COUNT)
    eval_seconds: float = ruled(0.0, ((lambda v: math.isfinite(v) and v >= 0), "seconds >= 0 (0 means never)"))
    eval_images: int = ruled(0, _COUNT)
    checkpoint_every: int = ruled(200, _COUNT)
    log_every: int = ruled(50, _COUNT)
    sample_every: int = ruled(0, _COUNT)
    logdet_every: int = ruled(0, _COUNT)
    num_samples: int = ruled(64, ((lambda v: 0 <= v <= 10_000), "an integer in [0, 10000] (0 means no sample grids)"))
    temperatures: tuple[float, ...] = ruled(
        (0.5, 0.7, 1.0), ((lambda v: all(0 <= t <= 10 for t in v)), "numbers in [0, 10]")
    )
    seed: int = ruled(0, ((lambda v: 0 <= v < 2**32), "an integer in [0, 2**32)"))
    deterministic: bool = False
    level: int | None = ruled(
        None, ((lambda v: v is None or 0 <= v < 16), "null (all levels) or a level index in [0, 16)")
    )
    objective: str = ruled("likelihood", _one_of(*OBJECTIVES))
    finetune_fraction: float = ruled(0.2, _FRACTION)
    device: str = ruled("auto", _one_of(*DEVICES))
    precision: str = ruled("auto", _one_of("auto", *PRECISIONS))
    gradient_checkpointing: bool = False
    out: str | None = None
    progress: bool = True


@dataclass(frozen=True)
class Config:
    """A whole experiment; stored resolved in every checkpoint."""

    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def run_dir(self) -> Path:
        """Where checkpoints, metrics and samples go (``train.out`` or ``runs/<name>``)."""
        return Path(self.train.out or f"runs/{self.name}")


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Check ``value`` against the annotation string ``typ``; convert lists to tuples."""
    if value is None and "None" in typ:
        return None
    if typ.startswith("tuple"):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        inner = float if "float" in typ else int
        if any(isinstance(v, bool) for v in value):
            raise ConfigError(f"{where} must be a list of numbers, got {value!r}")
        try:
            return tuple(inner(v) for v in value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{where} must be a list of numbers, got {_show(value)}") from None
    if typ.startswith("dict"):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {_show(value)}")
        try:
            # The resolved config is stored as JSON in every checkpoint: refuse now what
            # would fail there (YAML dates, binary, self-referencing aliases).
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            raise ConfigError(
                f"{where} must hold only finite numbers, text, booleans, lists and mappings, got {_show(value)}"
            ) from None
        return dict(value)
    base = typ.split("|")[0].strip()
    if base == "float" and isinstance(value, str):
        # YAML 1.1 reads exponents without a dot (1e-3) as strings.
        try:
            value = float(value)
        except ValueError:
            pass
    checks = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}
    if isinstance(value, bool) and base != "bool" or not isinstance(value, checks[base]):
        raise ConfigError(f"{where} must be of type {base}, got {_show(value)}")
    # Integers reach torch (sizes, seeds) as 64-bit values, and floats cannot hold every int.
    if base == "int" and not -(2**63) <= value < 2**63:
        raise ConfigError(f"{where} must be an integer of at most 64 bits, got {_show(value)}")
    if base == "float" and isinstance(value, int) and not abs(value) < 2**1023:
        raise ConfigError(f"{where} must be a finite number, got {_show(value)}")
    if base == "str" and "\0" in value:
        raise ConfigError(f"{where} must be text without NUL characters, got {_show(value)}")
    return float(value) if base == "float" else value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'the config'} must be a mapping, got {values!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(str(k) for k in set(values) - set(known))  # YAML keys may be numbers or null
    if unknown:
        prefix = f"{where}." if where else ""
        bad, valid = (", ".join(prefix + k for k in keys) for keys in (unknown, known))
        raise ConfigError(f"unknown config key(s) {bad}; valid keys: {valid}")
    kwargs = {}
    for name, value in values.items():
        path = f"{where}.{name}" if where else name
        sub = _SECTIONS.get(name) if not where else None
        kwargs[name] = _build(sub, value, name) if sub else _coerce(value, str(known[name].type), path)
    obj = cls(**kwargs)
    for name, value in kwargs.items():
        check, valid = known[name].metadata.get("rule", (lambda v: True, ""))
        if not check(value):
            raise ConfigError(f"{where}.{name} must be {valid}, got {_show(value)}")
    return obj


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig}


def config_from_dict(values: dict[str, Any]) -> Config:
    """Validate a nested mapping into a :class:`Config`."""
    return _build(Config, values, "")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """A plain nested mapping (YAML/JSON-ready) of ``cfg``."""
    return _lists(asdict(cfg))


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


def load_config(path: str | Path) -> Config:
    """Read a YAML experiment file (a bare name looks in the ``configs/`` folder)."""
    path = resolve_config_path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not valid YAML: it is not UTF-8 text") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    except RecursionError:
        raise ConfigError(f"{path} is not a usable config: it is nested too deeply") from None
    if not isinstance(values, dict):
        kind = type(values).__name__
        raise ConfigError(f"{path} must hold a mapping of sections (data, model, optim, train), not a {kind}")
    values.setdefault("name", path.stem)
    try:
        return config_from_dict(values)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def resolve_config_path(path: str | Path) -> Path:
    """``path`` itself, else ``configs/<path>[.yaml]`` next to the package."""
    candidates = [Path(path)]
    configs = Path(__file__).resolve().parents[2] / "configs"
    candidates += [configs / str(path), configs / f"{path}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    available = sorted(p.stem for p in configs.glob("*.yaml")) if configs.is_dir() else []
    raise ConfigError(f"config {str(path)!r} not found; give a YAML path or one of: {', '.join(available) or '(none)'}")


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` overrides (values parsed as YAML scalars or lists)."""
    values = config_to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.steps=100")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().lstrip("-").split(".")
        if not all(keys):
            raise ConfigError(f"override {item!r} has an empty key: it must look like section.key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = values
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                raise ConfigError(f"unknown config section {dotted!r}; sections: {', '.join(_SECTIONS)}")
            node = node[key]
        node[keys[-1]] = value
    return config_from_dict(values)


def replace(cfg: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` re-exported for frozen configs."""
    return dataclasses.replace(cfg, **changes)

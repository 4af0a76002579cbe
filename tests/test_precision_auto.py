"""Configs do not force what the hardware lacks: every shipped config resolves to float32 on a CPU
without bf16 units, and an explicit bf16-mixed there warns once, naming the cost and the fix."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from msflow.train import precision
from msflow.train.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
CPU = torch.device("cpu")


@pytest.fixture
def fresh_warning() -> Iterator[None]:
    """Forget that this process already warned, before and after the test."""
    precision.warn_emulated_bf16.cache_clear()
    yield
    precision.warn_emulated_bf16.cache_clear()


def as_if_cpu_flags(monkeypatch: pytest.MonkeyPatch, flags: frozenset[str]) -> None:
    # cpu_flags() is functools.cache'd: replace the function has_fast_bf16 calls, not its cache.
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_runs_float32_on_a_cpu_without_bf16(
    monkeypatch: pytest.MonkeyPatch, fresh_warning: None, path: Path
) -> None:
    as_if_cpu_flags(monkeypatch, frozenset())
    cfg = load_config(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a config that forces bf16 would also warn here
        assert precision.resolve_precision(cfg.train.precision, CPU) == "float32", cfg.train.precision


def test_explicit_bf16_warns_once_on_a_cpu_without_bf16(monkeypatch: pytest.MonkeyPatch, fresh_warning: None) -> None:
    as_if_cpu_flags(monkeypatch, frozenset())
    with pytest.warns(RuntimeWarning) as caught:
        for _ in range(3):
            assert precision.resolve_precision("bf16-mixed", CPU) == "bf16-mixed"  # kept: the user asked for it
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "no bf16 units (avx512_bf16/amx_bf16)" in message and "slower than float32" in message
    assert "train.precision=auto or float32" in message
    assert caught[0].filename == __file__  # points at the caller of resolve_precision


@pytest.mark.parametrize("flags", [frozenset({"avx512f", "avx512_bf16"}), frozenset({"amx_bf16", "amx_tile"})])
def test_explicit_bf16_is_silent_on_a_cpu_with_bf16(
    monkeypatch: pytest.MonkeyPatch, fresh_warning: None, flags: frozenset[str]
) -> None:
    as_if_cpu_flags(monkeypatch, flags)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.resolve_precision("bf16-mixed", CPU) == "bf16-mixed"
        assert precision.resolve_precision("auto", CPU) == "bf16-mixed"
        assert precision.resolve_precision("float32", CPU) == "float32"

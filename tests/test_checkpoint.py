"""Checkpoint format: atomic writes, finite weights only, exact optimizer round trips, no pickles."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import msflow.train.checkpoint as ckpt_module
from msflow._io import atomic_write
from msflow.errors import CheckpointError, MsflowError
from msflow.models import create_model
from msflow.runs import load, load_run
from msflow.train.checkpoint import (
    FORMAT,
    load_checkpoint,
    load_weights,
    optimizer_tensors,
    prefixed,
    restore_optimizer,
    save_checkpoint,
)
from msflow.train.config import config_from_dict, config_to_dict

TINY_OPTIONS = {"image_shape": [1, 8, 8], "steps": 1, "hidden": 8}


def _tmp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "model/w": torch.randn(3, 4, generator=gen),
        "model/b64": torch.randn(5, generator=gen, dtype=torch.float64),
        "model/scalar": torch.tensor(1.5),
        "model/flag": torch.tensor(True),
        "model/count": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "rng/state": torch.randint(0, 255, (16,), generator=gen, dtype=torch.uint8),
        "model/half": torch.randn(4, generator=gen).to(torch.bfloat16),
    }


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_write_keeps_old_file_when_write_raises_midway(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"old contents"))

    def half_then_fail(tmp: str) -> None:
        Path(tmp).write_bytes(b"new cont")  # half written ...
        raise OSError("No space left on device")  # ... then the disk fills up

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old contents"
    assert _tmp_files(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]


def test_atomic_write_creates_missing_folders(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file.bin"
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"x"))
    assert target.read_bytes() == b"x"
    assert _tmp_files(target.parent) == []


def test_failed_checkpoint_write_leaves_previous_checkpoint_loadable(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, {"model/w": torch.ones(3)}, {"step": 1})
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):  # noqa: ANN001
        Path(filename).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"model/w": torch.zeros(3)}, {"step": 2})
    assert path.read_bytes() == before
    tensors, meta = load_checkpoint(path)
    assert meta == {"step": 1}
    assert torch.equal(tensors["model/w"], torch.ones(3))
    assert _tmp_files(tmp_path) == []


def test_checkpoint_file_permissions_follow_umask(tmp_path: Path) -> None:
    """A checkpoint is readable like any other file the user writes (not owner-only 0600)."""
    umask = os.umask(0o022)
    try:
        path = tmp_path / "checkpoint.safetensors"
        save_checkpoint(path, {"model/w": torch.ones(1)}, {})
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        assert oct(path.stat().st_mode & 0o777) == oct(plain.stat().st_mode & 0o777) == oct(0o644)
    finally:
        os.umask(umask)


# ----------------------------------------------------------------------------- contents


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_tensors_are_refused(tmp_path: Path, bad: float) -> None:
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, {"model/w": torch.ones(2)}, {"step": 1})
    before = path.read_bytes()
    weights = torch.ones(4)
    weights[2] = bad
    with pytest.raises(CheckpointError, match="non-finite.*ema/layer.weight"):
        save_checkpoint(path, {"model/w": torch.ones(2), "ema/layer.weight": weights}, {"step": 2})
    assert path.read_bytes() == before
    assert _tmp_files(tmp_path) == []
    with pytest.raises(CheckpointError):
        save_checkpoint(tmp_path / "new.safetensors", {"w": weights.double()}, {})
    assert not (tmp_path / "new.safetensors").exists()


def test_tensors_and_metadata_round_trip_exactly(tmp_path: Path) -> None:
    tensors = _tensors()
    meta = {
        "config": {"name": "démo ✓", "nested": {"a": [1, 2.5, None, True], "b": "x=y"}},
        "step": 123,
        "lr": 1e-3,
        "tiny": 5e-324,
        "results": None,
    }
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, tensors, meta)
    loaded, loaded_meta = load_checkpoint(path)
    assert loaded_meta == meta
    assert set(loaded) == set(tensors)
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype, name
        assert loaded[name].shape == value.shape, name
        assert torch.equal(loaded[name], value), name


def test_non_contiguous_and_strided_tensors_are_saved(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"model/t": base.t(), "model/s": base[:, ::2]}, {})
    loaded, _ = load_checkpoint(path)
    assert torch.equal(loaded["model/t"], base.t()) and torch.equal(loaded["model/s"], base[:, ::2])


def test_prefixed_strips_only_its_prefix() -> None:
    tensors = {"model/a.b": torch.ones(1), "ema/a.b": torch.zeros(1), "modelx/c": torch.ones(1)}
    assert list(prefixed(tensors, "model")) == ["a.b"]
    assert list(prefixed(tensors, "ema")) == ["a.b"]


# ----------------------------------------------------------------------------- optimizer state


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))


def _train_steps(net: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(7, 3, generator=gen)
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.Adam(p, lr=3e-3, betas=(0.8, 0.99), weight_decay=1e-4),
        lambda p: torch.optim.Adamax(p, lr=2e-3, betas=(0.85, 0.995)),
        lambda p: torch.optim.Adam(p, lr=1e-3, amsgrad=True),
    ],
    ids=["adam", "adamax", "adam-amsgrad"],
)
def test_optimizer_state_round_trips_exactly(tmp_path: Path, make) -> None:  # noqa: ANN001
    net = _net()
    opt = make(net.parameters())
    _train_steps(net, opt, 5, seed=1)

    tensors, meta = optimizer_tensors(opt)
    tensors.update({f"model/{k}": v for k, v in net.state_dict().items()})
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, tensors, {"optimizer": meta})
    loaded, loaded_meta = load_checkpoint(path)

    net2 = _net(seed=99)
    load_weights(net2, prefixed(loaded, "model"), str(path))
    opt2 = make(net2.parameters())
    restore_optimizer(opt2, loaded, loaded_meta["optimizer"])

    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["state"].keys() == s2["state"].keys()
    for idx in s1["state"]:
        assert s1["state"][idx].keys() == s2["state"][idx].keys()
        for key, value in s1["state"][idx].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(s2["state"][idx][key])), (idx, key)
    assert json.loads(json.dumps(s1["param_groups"])) == json.loads(json.dumps(s2["param_groups"]))

    # Both continue identically: bitwise-equal weights after more steps.
    _train_steps(net, opt, 3, seed=2)
    _train_steps(net2, opt2, 3, seed=2)
    for (name, a), b in zip(net.state_dict().items(), net2.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_optimizer_state_before_any_step_round_trips(tmp_path: Path) -> None:
    net = _net()
    opt = torch.optim.Adam(net.parameters())
    tensors, meta = optimizer_tensors(opt)
    assert tensors == {}
    save_checkpoint(tmp_path / "c.safetensors", tensors, {"optimizer": meta})
    loaded, loaded_meta = load_checkpoint(tmp_path / "c.safetensors")
    opt2 = torch.optim.Adam(_net().parameters())
    restore_optimizer(opt2, loaded, loaded_meta["optimizer"])
    assert opt2.state_dict()["state"] == {}


# ----------------------------------------------------------------------------- refusing foreign files


class _WritesMarker:
    """Unpickling this object would create a file: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.write_text, (self.marker, "unpickled!"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_files_are_refused_without_unpickling(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "MARKER"
    payload = {"model/w": torch.ones(2), "evil": _WritesMarker(marker)}
    path = tmp_path / "model.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint") as err:
        load_checkpoint(path)
    assert "never unpickles" in str(err.value)
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        load_run(path)
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        load(path)
    assert not marker.exists()


def test_safetensors_without_msflow_metadata_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(2)}, str(plain))
    with pytest.raises(CheckpointError, match="not an msflow checkpoint"):
        load_checkpoint(plain)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.ones(2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not an msflow checkpoint"):
        load_checkpoint(other)
    corrupt = tmp_path / "corrupt.safetensors"
    save_file({"w": torch.ones(2)}, str(corrupt), metadata={"format": FORMAT, "meta": "{not json"})
    with pytest.raises(CheckpointError, match="corrupt msflow metadata"):
        load_checkpoint(corrupt)
    no_meta = tmp_path / "no_meta.safetensors"
    save_file({"w": torch.ones(2)}, str(no_meta), metadata={"format": FORMAT})
    with pytest.raises(CheckpointError, match="corrupt msflow metadata"):
        load_checkpoint(no_meta)


@pytest.mark.parametrize("content", [b"", b"\x00" * 3, b"hello world, not a checkpoint", "truncated"])
def test_unreadable_files_are_refused(tmp_path: Path, content) -> None:  # noqa: ANN001
    path = tmp_path / "checkpoint.safetensors"
    if content == "truncated":
        save_checkpoint(path, {"model/w": torch.ones(1000)}, {"step": 1})
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        load_checkpoint(path)


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_run(tmp_path)  # an existing folder without a checkpoint
    with pytest.raises(CheckpointError, match="no run folder or checkpoint"):
        load_run(tmp_path / "no_such_run")


# ----------------------------------------------------------------------------- foreign models


def _msflow_checkpoint(path: Path, weights_options: dict, spec_options: dict) -> None:
    """A well-formed msflow checkpoint whose weights come from a model built with other options."""
    model = create_model("glow-mnist", **weights_options)
    cfg = config_from_dict({"data": {"name": "digits8"}, "model": {"name": "glow-mnist", "options": spec_options}})
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    meta = {"config": config_to_dict(cfg), "model_spec": {"name": "glow-mnist", "overrides": spec_options}, "step": 0}
    save_checkpoint(path, tensors, meta)


def test_load_run_round_trips_a_matching_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.safetensors"
    _msflow_checkpoint(path, TINY_OPTIONS, TINY_OPTIONS)
    model, cfg, meta = load_run(tmp_path)
    assert cfg.data.name == "digits8"
    assert meta["step"] == 0
    assert model.image_shape == (1, 8, 8)
    assert not model.training


def test_load_run_refuses_weights_of_another_shape(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.safetensors"
    _msflow_checkpoint(path, TINY_OPTIONS, {**TINY_OPTIONS, "hidden": 16})
    with pytest.raises(CheckpointError, match="different model") as err:
        load_run(path)
    assert "mis-shaped" in str(err.value)


def test_load_run_refuses_weights_of_another_depth(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.safetensors"
    _msflow_checkpoint(path, TINY_OPTIONS, {**TINY_OPTIONS, "steps": 2})
    with pytest.raises(CheckpointError, match="different model.*missing"):
        load_run(path)


def test_load_weights_reports_unexpected_keys() -> None:
    net = torch.nn.Linear(2, 2)
    weights = {**net.state_dict(), "extra": torch.ones(1)}
    with pytest.raises(CheckpointError, match="1 unexpected"):
        load_weights(net, weights, "x.safetensors")


@pytest.mark.parametrize("meta", [{"step": 0}, {"config": {"bogus": 1}, "model_spec": {}}])
def test_load_run_refuses_checkpoints_without_a_usable_config(tmp_path: Path, meta: dict) -> None:
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, {"model/w": torch.ones(1)}, meta)
    match = "has no metadata entry 'config'|metadata model_spec=.*expected a mapping"
    with pytest.raises(CheckpointError, match=match):
        load_run(path)


def test_checkpoint_errors_are_user_errors() -> None:
    assert issubclass(CheckpointError, MsflowError) and issubclass(CheckpointError, ValueError)

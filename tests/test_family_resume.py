"""A run killed after a checkpoint and resumed ends bit for bit where an uninterrupted run ends,
for one shipped config of every family (Glow's own kill tests are in tests/test_faults.py).

Each run trains 4 steps through :func:`msflow.train.loop.train`. The interrupted one is
stopped by an exception raised the moment its step-2 checkpoint is on disk (what a SIGKILL
there leaves, less the process), then the same config is run again: it must resume at step 2
and end with the same weights, EMA, optimizer state, test bits/dim and sample grid.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from model_cases import RUN, narrow_overrides

import msflow.train.checkpoint as checkpoint_module
from msflow.train.checkpoint import CHECKPOINT, load_checkpoint
from msflow.train.config import Config, apply_overrides, load_config, replace
from msflow.train.loop import train

FAMILIES = {
    "cflow": ["photos-sr2-cflow"],
    "caflow": ["photos-colorize-caflow"],
    "mrcnf-level": ["mnist5k-mrcnf", "train.objective=likelihood", "train.level=0"],
    "flow-matching": ["mnist5k-rnode"],
    "marscf": ["mnist5k-marscf-mar-mixlogcdf"],
    "balanced": ["mnist5k-balanced"],
}
"""Family -> its shipped config and what to change (MRCNF: one level by likelihood)."""


class Killed(Exception):
    """Stands for the SIGKILL: raised right after a checkpoint reached the disk."""


def config(name: str, extra: list[str], out: Path) -> Config:
    model = load_config(name).model.name
    overrides = [
        *RUN,
        *narrow_overrides(model),
        *extra,
        "train.steps=4",
        "train.checkpoint_every=2",
        "train.log_every=1",
    ]
    cfg = apply_overrides(load_config(name), overrides)
    return replace(cfg, train=replace(cfg.train, out=str(out)))


def watch_checkpoints(monkeypatch: pytest.MonkeyPatch, kill_at: int | None = None) -> list[int]:
    """The steps of the checkpoints written from now on; :class:`Killed` once that of ``kill_at`` is on disk."""
    real_write, written = checkpoint_module.atomic_write, []

    def atomic_write(path: Path, write) -> None:  # noqa: ANN001
        real_write(path, write)
        if path.name == CHECKPOINT:
            written.append(load_checkpoint(path)[1]["step"])
            if written[-1] == kill_at:
                raise Killed

    monkeypatch.setattr(checkpoint_module, "atomic_write", atomic_write)
    return written


@pytest.mark.parametrize("family", FAMILIES)
def test_killed_run_resumes_bit_for_bit(family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name, *extra = FAMILIES[family]
    straight = train(config(name, extra, tmp_path / "straight"))
    cfg = config(name, extra, tmp_path / "killed")
    watch_checkpoints(monkeypatch, kill_at=2)
    with pytest.raises(Killed):
        train(cfg)
    halfway, _ = load_checkpoint(tmp_path / "killed" / CHECKPOINT)
    monkeypatch.undo()
    written = watch_checkpoints(monkeypatch)
    resumed = train(cfg)
    assert written == [4]  # it went on from step 2, not from the start

    tensors, meta = load_checkpoint(tmp_path / "killed" / CHECKPOINT)
    reference, ref_meta = load_checkpoint(tmp_path / "straight" / CHECKPOINT)
    assert meta["step"] == ref_meta["step"] == resumed["steps"] == 4
    assert set(tensors) == set(reference) == set(halfway)
    assert {k.split("/")[0] for k in tensors} >= {"model", "ema", "optim"}
    assert any(not torch.equal(tensors[k], halfway[k]) for k in tensors if k.startswith("model/"))
    for key, ref in reference.items():
        assert torch.equal(tensors[key], ref), f"{key} differs by {(tensors[key].double() - ref.double()).abs().max()}"
    assert resumed["bpd"] == straight["bpd"]
    grids = [
        (Path(a).read_bytes(), Path(b).read_bytes())
        for a, b in zip(resumed["samples"], straight["samples"], strict=True)
    ]
    assert grids and all(a == b for a, b in grids)

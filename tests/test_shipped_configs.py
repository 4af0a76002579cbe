"""Every shipped config in ``configs/`` trains two steps through the ``msflow train`` command.

Each keeps its data, task, objective and model options and is narrowed only in size: the
model's widths and depths (``tests/model_cases.py``), a batch of 4, 8 test images, one sample
grid, float32 on the CPU. CIFAR-10 is not bundled, so its config reads a few fake records
written in the standard binary format.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from model_cases import RUN, narrow_overrides

from msflow.cli import main
from msflow.train.checkpoint import CHECKPOINT, load_checkpoint
from msflow.train.config import load_config

CONFIGS = sorted(path.stem for path in (Path(__file__).parents[1] / "configs").glob("*.yaml"))


def fake_cifar(folder: Path, n: int = 8) -> Path:
    """CIFAR-10 binary batches of ``n`` random records each (label byte + 3x32x32 pixels)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for file in [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]:
        records = rng.integers(0, 256, (n, 3073), dtype=np.uint8)
        records[:, 0] %= 10
        (folder / file).write_bytes(records.tobytes())
    return folder


def test_every_config_is_here() -> None:
    assert len(CONFIGS) >= 26 and {"mnist5k-glow", "cifar10-glow", "photos-sr4-caflow-dualglow"} <= set(CONFIGS)


@pytest.mark.parametrize("config", CONFIGS)
def test_shipped_config_trains_two_steps_through_the_cli(config: str, tmp_path: Path) -> None:
    cfg = load_config(config)
    extra = [f"data.root={fake_cifar(tmp_path / 'cifar')}"] if cfg.data.name == "cifar10" else []
    narrow = narrow_overrides(cfg.model.name)
    out = tmp_path / "run"
    assert main(["train", config, *RUN, *narrow, *extra, "train.steps=2", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["steps"] == 2 and math.isfinite(result["bpd"]) and result["samples"]
    _, meta = load_checkpoint(out / CHECKPOINT)
    run = meta["config"]
    assert run["name"] == cfg.name and run["model"]["name"] == cfg.model.name
    assert run["data"] == {**run["data"], "name": cfg.data.name, "task": cfg.data.task}
    assert run["train"]["objective"] == cfg.train.objective
    narrowed = {o.split("=")[0].removeprefix("model.options.") for o in narrow}
    kept = {k: v for k, v in cfg.model.options.items() if k not in narrowed}
    assert {k: run["model"]["options"][k] for k in kept} == json.loads(json.dumps(kept))

"""Per-level training curves of multi-resolution flows (MRCNF, paper 000, Figure 5b).

A multi-resolution model's bits/dim is the dims-weighted sum of independent per-level terms
(eq. 11), so each level has its own learning curve. Training logs them for free: a run of the
whole model writes ``bpd_level<s>`` with every training record, a run of one level
(``train.level=s``) writes that level's ``loss_bpd``, and flow-matching runs write
``fm_level<s>``. :func:`level_curves` gathers them from one or more run folders (an assembled
model's level runs, say) and :func:`plot_level_curves` draws them, test evaluations as dots.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from msflow._io import atomic_write
from msflow.errors import MsflowError
from msflow.viz import figure

LEVEL_PLOT = "levels.png"


def _records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise MsflowError(f"no metrics.jsonl in {run}; give run folders that `msflow train` wrote")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _level_of_run(run: Path) -> int | None:
    import yaml

    config = run / "config.yaml"
    if not config.is_file():
        return None
    return (yaml.safe_load(config.read_text()).get("train") or {}).get("level")


def level_curves(runs: Sequence[str | Path]) -> dict[str, dict[int, list[tuple[int, float]]]]:
    """``{"train bits/dim" | "test bits/dim" | "flow-matching loss": {level: [(step, value)]}}``.

    Example:
        >>> import json, tempfile, pathlib
        >>> run = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "bpd_level0": 3.0, "bpd_level1": 5.0}))
        >>> level_curves([run])["train bits/dim"]
        {0: [(1, 3.0)], 1: [(1, 5.0)]}
    """
    curves: dict[str, dict[int, list[tuple[int, float]]]] = {}

    def add(kind: str, level: int, step: int, value: float) -> None:
        curves.setdefault(kind, {}).setdefault(level, []).append((step, value))

    for run in map(Path, runs):
        only = _level_of_run(run)
        for r in _records(run):
            step = r.get("step", 0)
            for key, value in r.items():
                if value is None:
                    continue
                if key.startswith("bpd_level"):
                    add("train bits/dim", int(key[9:]), step, value)
                elif key.startswith("fm_level"):
                    add("flow-matching loss", int(key[8:]), step, value)
                elif only is not None and key == "loss_bpd":
                    add("train bits/dim", only, step, value)
                elif only is not None and key == "test_bpd":
                    add("test bits/dim", only, step, value)
    return curves


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot_level_curves(runs: Sequence[str | Path], out: str | Path, smooth: int = 10) -> Path:
    """Plot each level's training curve (a running mean over ``smooth`` records) to the PNG ``out``."""
    curves = level_curves(runs)
    if not curves:
        raise MsflowError(f"no per-level records in {', '.join(map(str, runs))}; train a multi-resolution model")
    panels = [k for k in ("train bits/dim", "flow-matching loss") if k in curves]
    fig = figure("plotting level curves", figsize=(6 * len(panels), 4.5), dpi=100, layout="constrained")
    for i, kind in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for level, points in sorted(curves[kind].items()):
            steps, values = (np.array(v, dtype=float) for v in zip(*points, strict=True))
            w = min(smooth, len(values))
            ax.plot(steps[w - 1 :], _smooth(values, w), color=f"C{level}", lw=1.2, label=f"level {level}")
            if kind == "train bits/dim":
                for step, value in curves.get("test bits/dim", {}).get(level, []):
                    ax.plot(step, value, "o", color=f"C{level}", ms=5)
        ax.set(xlabel="training step", ylabel=kind, title=f"{kind} per level (0 = finest)")
        if kind == "flow-matching loss":
            ax.set_yscale("log")
        ax.legend(fontsize="small")
    target = Path(out)
    atomic_write(target, lambda tmp: fig.savefig(tmp, format="png"))
    return target


__all__ = ["LEVEL_PLOT", "level_curves", "plot_level_curves"]


def plot_run_levels(run_dir: Path) -> Path | None:
    """:func:`plot_level_curves` of one run into ``run_dir/levels.png``; a warning (and ``None``)
    when they cannot be drawn, since a missing plot must never fail a finished training run."""
    try:
        return plot_level_curves([run_dir], run_dir / LEVEL_PLOT)
    except (ImportError, MsflowError) as err:
        warnings.warn(f"no {LEVEL_PLOT}: {err}", stacklevel=2)
        return None

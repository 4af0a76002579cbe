"""Precision-recall figure of segmentation models (paper 003, Figure 5).

Left: each model's PR curve (from :func:`~msflow.metrics.segmentation.precision_recall_curve`)
with its maximal F-score as a dot, over faint lines of constant F. Right: precision and recall
of individual samples (from :func:`~msflow.metrics.segmentation.sample_pr_points`), which shows
calibration where the curve only shows ranking: a model whose probabilities are too low has
samples of high precision but low recall even if its curve is good.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from torch import Tensor

from msflow._io import atomic_write
from msflow.errors import MsflowError
from msflow.metrics.segmentation import PRCurve, max_f_score
from msflow.viz import figure

_ISO_F = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _iso_f(ax, color: str = "tab:green") -> None:
    # F = 2PR/(P+R) solved for P: P = F R / (2R - F), a curve that exists for R > F/2.
    for f in _ISO_F:
        recall = np.linspace(f / 2 + 1e-3, 1.0, 200)
        precision = f * recall / (2 * recall - f)
        keep = precision <= 1.0
        ax.plot(recall[keep], precision[keep], color=color, lw=0.6, alpha=0.35, zorder=0)
        # Labelled where the line meets R = 1, at P = F / (2 - F), just inside the right edge.
        ax.text(0.985, f / (2 - f), f"F={f:.1f}", color=color, alpha=0.7, fontsize=7, ha="right", va="bottom")


def plot_precision_recall(curves: Mapping[str, PRCurve], points: Mapping[str, Tensor] | None, path: str | Path) -> Path:
    """Draw PR curves (and, if ``points`` is given, per-sample PR scatters) to the PNG ``path``.

    Args:
        curves: model name -> its PR curve; each legend entry reads ``name (F=0.812)``.
        points: model name -> ``(S, 2)`` per-sample (precision, recall); a model may appear here
            without a curve (a human grader, say). ``None`` draws the left panel only.
        path: where the PNG goes (parent folders are created).

    A model has one colour in both panels. Returns ``path`` as a :class:`~pathlib.Path`.

    Example:
        >>> import pathlib, tempfile, torch
        >>> from msflow.metrics.segmentation import precision_recall_curve
        >>> soft, target = torch.rand(1, 8, 8), (torch.rand(1, 8, 8) > 0.5).long()
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "pr.png"
        >>> out = plot_precision_recall({"toy": precision_recall_curve(soft, target)}, None, path)
        >>> out.stat().st_size > 0
        True
    """
    points = dict(points or {})
    if not curves and not points:
        raise MsflowError("plot_precision_recall needs at least one curve or one set of sample points")
    names = list(dict.fromkeys([*curves, *points]))
    colors = {name: f"C{i % 10}" for i, name in enumerate(names)}
    best = {name: max_f_score(curve) for name, curve in curves.items()}

    def label(name: str) -> str:
        return f"{name} (F={best[name].f:.3f})" if name in best else name

    panels = 2 if points else 1
    fig = figure("plotting precision-recall curves", figsize=(5.5 * panels, 5.0), layout="constrained")
    axes = [fig.add_subplot(1, panels, i + 1) for i in range(panels)]
    for ax in axes:
        _iso_f(ax)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="recall", ylabel="precision", aspect="equal")
        ax.grid(alpha=0.2)

    left = axes[0]
    for name, curve in curves.items():
        recall, precision = curve.recall.detach().cpu().numpy(), curve.precision.detach().cpu().numpy()
        order = np.argsort(curve.thresholds.detach().cpu().numpy(), kind="stable")
        left.plot(recall[order], precision[order], color=colors[name], lw=1.5, label=label(name))
        left.plot(best[name].recall, best[name].precision, "o", color=colors[name], ms=6, mec="black", mew=0.5)
    left.set_title("precision-recall curves (dot: max F)")
    if curves:
        left.legend(loc="lower left", fontsize="small")

    if points:
        right = axes[1]
        for name, pr in points.items():
            pr = pr.detach().cpu().double().numpy()
            if pr.ndim != 2 or pr.shape[1] != 2:
                raise MsflowError(f"points[{name!r}] must be (S, 2) (precision, recall), got shape {pr.shape}")
            right.scatter(pr[:, 1], pr[:, 0], s=10, color=colors[name], alpha=0.6, lw=0, label=label(name))
        right.set_title("individual samples in PR space")
        right.legend(loc="lower left", fontsize="small", markerscale=2)

    target = Path(path)
    atomic_write(target, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    return target


__all__ = ["plot_precision_recall"]

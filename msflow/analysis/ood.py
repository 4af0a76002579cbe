r"""Out-of-distribution detection with a trained flow (paper 000, section 6, Figure 4 and Table 3).

For the in-distribution test images and every OOD set (:mod:`msflow.data.ood_sets`), each image
gets its bits/dim under the model and its lossless code length ``L(x)`` (bits/dim), then three
scores, higher meaning "in-distribution" (:mod:`msflow.metrics.ood`):

.. math::

    -\mathrm{bpd}(x), \qquad S(x) = -(\mathrm{bpd}(x) - L(x)), \qquad
    -\bigl|\mathrm{bpd}(x) - \overline{\mathrm{bpd}}_{\text{train}}\bigr|,

and the AUROC of each score separating the test set from each OOD set. Likelihood-based models
are known to give *higher* likelihood to simpler images (constant ones above all), so the first
AUROC can fall far below 0.5; ``S`` corrects for complexity, typicality for "too likely".

Bits/dim come from a callable, so this module does not depend on the training code; the CLI
passes :func:`msflow.train.evaluate.dataset_bits_per_dim` (seeded dequantization) bound to the
model.

Example:
    >>> import torch
    >>> fake_bpd = lambda x: x.double().mean((1, 2, 3)) / 32  # a stand-in model: brighter = less likely
    >>> test = torch.randint(0, 100, (50, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    >>> result = run_ood(fake_bpd, test, test, ["constant", "noise"], n=50)
    >>> [s.name for s in result.outliers], result.outliers[1].auroc["-bpd"] > 0.9  # noise is brighter
    (['constant', 'noise'], True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from msflow._io import atomic_write
from msflow.data.ood_sets import check_ood_names, load_ood_set, subset
from msflow.metrics.bpd import mean_and_stderr
from msflow.metrics.complexity import complexity, get_codec
from msflow.metrics.ood import auroc, ood_scores
from msflow.viz import figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BpdFn = Callable[[Tensor], Tensor]
"""``bpd_fn(images) -> (N,)``: bits/dim of ``uint8`` images ``(N, C, H, W)`` under the model."""

SCORES = ("-bpd", "S", "typicality")


@dataclass
class ScoredSet:
    """One image set with its per-image bits/dim, complexity, scores and (for OOD sets) AUROCs."""

    name: str
    how: str
    bpd: Tensor
    complexity: Tensor
    scores: dict[str, Tensor]
    auroc: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Means and AUROCs, JSON-ready."""
        bpd, stderr = mean_and_stderr(self.bpd)
        out = {"name": self.name, "how": self.how, "n": len(self.bpd), "bpd": bpd, "bpd_stderr": stderr}
        return {**out, "complexity": self.complexity.mean().item(), "auroc": dict(self.auroc)}


@dataclass
class OODResult:
    """The in-distribution test set, the OOD sets, and the settings they were scored with."""

    codec: str
    typical_bpd: float
    n_train: int
    inlier: ScoredSet
    outliers: list[ScoredSet]

    def to_dict(self) -> dict[str, Any]:
        """Every number: summaries, then per-image bits/dim and complexity of each set."""
        sets = [self.inlier, *self.outliers]
        return {
            "codec": self.codec,
            "typical_bpd": self.typical_bpd,
            "n_train": self.n_train,
            "in_distribution": self.inlier.summary(),
            "ood": [s.summary() for s in self.outliers],
            "per_image": {s.name: {"bpd": s.bpd.tolist(), "complexity": s.complexity.tolist()} for s in sets},
        }


def score_set(
    name: str, how: str, images: Tensor, bpd_fn: BpdFn, codec: str, typical_bpd: float, inlier: ScoredSet | None
) -> ScoredSet:
    """Bits/dim, ``L(x)`` and the three scores of one set, and its AUROCs against ``inlier`` if given."""
    bpd = bpd_fn(images).to(torch.float64).cpu()
    comp = complexity(images, codec)
    scores = ood_scores(bpd, comp, typical_bpd)
    aurocs = {} if inlier is None else {k: auroc(inlier.scores[k], scores[k]) for k in SCORES}
    return ScoredSet(name, how, bpd, comp, scores, aurocs)


def run_ood(
    bpd_fn: BpdFn,
    test: Tensor,
    train: Tensor,
    names: Sequence[str],
    codec: str = "png",
    n: int | None = 1000,
    seed: int = 0,
    root: str | None = None,
    fit: str = "auto",
    in_name: str = "test",
) -> OODResult:
    """Score the in-distribution ``test`` images and each OOD set named in ``names``.

    Args:
        bpd_fn: bits/dim of ``uint8`` images under the model (see :data:`BpdFn`).
        test: in-distribution test images ``(N, C, H, W)`` of the model's shape.
        train: training images; the mean bits/dim of (a subset of ``n``) of them is the
            typicality test's typical bits/dim.
        names: OOD sets, see :func:`msflow.data.ood_sets.ood_choices`.
        codec: the lossless codec of ``L(x)`` (:data:`msflow.metrics.complexity.CODECS`).
        n: at most this many images per set (seeded subsets), ``None`` for all.
        seed: seeds the subsets and the synthetic sets.
        root: the folder of a non-bundled OOD dataset.
        fit: how datasets are brought to the model's size (:func:`msflow.data.convert.to_shape`).
        in_name: the in-distribution set's name in the result.
    """
    check_ood_names(names)
    get_codec(codec)  # fail on a missing codec before any model evaluation
    train = subset(train, n, seed)
    typical = bpd_fn(train).to(torch.float64).mean().item()
    test = subset(test, n, seed)
    inlier = score_set(in_name, "in-distribution test set", test, bpd_fn, codec, typical, None)
    outliers = []
    for name in dict.fromkeys(names):
        dataset, how = load_ood_set(name, test, n=n, seed=seed, root=root, fit=fit)
        outliers.append(score_set(name, how, dataset.images, bpd_fn, codec, typical, inlier))
    return OODResult(codec, typical, len(train), inlier, outliers)


def ood_table(result: OODResult) -> str:
    """A Markdown table: one row per set with mean bits/dim, mean ``L(x)`` and the three AUROCs.

    The in-distribution row comes first, with no AUROCs.
    """
    head = f"| set | images | mean bits/dim | mean L(x) ({result.codec}) | AUROC(-bpd) | AUROC(S) | AUROC(typicality) |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for s in [result.inlier, *result.outliers]:
        m = s.summary()
        aurocs = " | ".join(f"{s.auroc[k]:.4f}" if s.auroc else "" for k in SCORES)
        lines.append(
            f"| {s.name} | {m['n']} | {m['bpd']:.4f} +- {m['bpd_stderr']:.4f} | {m['complexity']:.4f} | {aurocs} |"
        )
    return "\n".join(lines)


def ood_histogram(result: OODResult, path: str | Path, title: str | None = None) -> Figure:
    """Figure 4 of paper 000: histograms of ``-bits/dim`` of the test set and each OOD set.

    Each set is drawn as a density-normalised step histogram over its own range (30 bins), so a
    narrow set still shows as a peak beside a wide one. Writes a PNG (atomically) and returns
    the figure (Agg canvas, no pyplot state).
    """
    fig = figure("plotting bits/dim histograms", figsize=(7.2, 3.6), layout="constrained")
    ax = fig.subplots()
    for s in [result.inlier, *result.outliers]:
        values = (-s.bpd).numpy()
        style = {"linewidth": 2.2, "color": "black"} if s is result.inlier else {"linewidth": 1.4}
        label = f"{s.name} ({values.mean():.2f})"
        ax.hist(values, bins=30, density=True, histtype="step", label=label, **style)
    ax.set_xlabel("log-likelihood per dimension, -bits/dim (mean in the legend)")
    ax.set_ylabel("density")
    ax.set_yscale("log")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return fig

"""Sample quality against sampling temperature (paper 000, appendix 8.6, Table 5).

For each temperature ``T`` the model draws ``n`` images from ``T * N(0, I)`` latents, and the
Frechet distance between Gaussians fitted to their features and to the test set's features
(see :mod:`msflow.metrics.frechet`) measures how far the samples are from real data. The
features are the penultimate layer of msflow's own small classifier trained on the labelled
training split (:mod:`msflow.analysis.features`), so the number is a *Frechet classifier
distance* (FCD), not FID: it is comparable across temperatures, models and runs of the same
dataset, never with published FIDs. A reference row gives the distance between ``n`` training
images and the test set, the value a perfect sampler would reach up to sampling noise (slightly
optimistic, because the classifier was trained on those training images).

Every temperature uses the same seed, so the sweep scales one fixed set of latents: the
differences between rows come from the temperature, not from a fresh noise draw.

With ``inception=`` (``msflow temperature --inception PATH``) the features are instead the
2048-d pool features of FID's Inception-v3 (:mod:`msflow.nn.inception`) with weights the user
supplies, and the metric is named :data:`FID_METRIC`. msflow ships no such weights and could not
download the official ones where it was built, so these numbers have not been checked against
reference FID implementations; the column is labelled FID because that is what the network
computes with pytorch-fid's ``pt_inception-2015-12-05`` weights. No classifier is trained then,
so the data need no labels. The row values keep the JSON key ``"fcd"`` in both modes;
``"metric"`` and ``"column"`` say which distance they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from msflow._io import atomic_write
from msflow.analysis.features import classifier_features, load_or_train_classifier
from msflow.core import evaluates
from msflow.data import ImageDataset
from msflow.errors import MsflowError, ShapeError
from msflow.metrics.frechet import fit_gaussian, gaussian_frechet_distance
from msflow.viz import figure, image_grid

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_TEMPERATURES = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
FID_METRIC = "FID (user-supplied Inception weights)"
_PRETTY = {"mnist5k": "MNIST-5k", "digits8": "8x8-digits", "mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}


def metric_name(dataset: str) -> str:
    """The honest name of the metric for ``dataset``.

    Example:
        >>> metric_name("mnist5k")
        "Frechet classifier distance (FCD, msflow's MNIST-5k classifier)"
    """
    return f"Frechet classifier distance (FCD, msflow's {_PRETTY.get(dataset, dataset)} classifier)"


@evaluates
def sample_images(
    model: nn.Module, n: int, temperature: float, seed: int = 0, batch_size: int = 500, progress: bool = False
) -> Tensor:
    """``n`` uint8 samples at ``temperature`` drawn in batches from one generator seeded ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    sizes = [min(batch_size, n - s) for s in range(0, n, batch_size)]
    batches = tqdm(sizes, desc=f"sample T={temperature:g}", leave=False, disable=not progress)
    return torch.cat([model.sample(k, temperature=temperature, generator=generator).cpu() for k in batches])


def temperature_sweep(
    model: nn.Module,
    train: ImageDataset,
    test: ImageDataset,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    n: int = 1000,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    grid: int = 16,
    progress: bool = False,
    inception: nn.Module | None = None,
) -> dict[str, Any]:
    """FCD (FID with ``inception``) of ``n`` samples vs the test set per temperature, plus the train-vs-test reference.

    Args:
        model: anything with ``sample(n, temperature=, generator=) -> uint8 (n, C, H, W)``.
        train: labelled training split (trains or reuses the cached feature classifier).
        test: labelled test split, the reference distribution.
        temperatures: the temperatures, in the order reported.
        n: samples per temperature (and training images in the reference row).
        seed: seed of the latents (the same for every temperature) and of the reference subset.
        cache_dir: where the classifier is cached (default :func:`~msflow.analysis.features.default_cache_dir`).
        grid: samples per temperature kept in ``"grids"`` for :func:`temperature_figure`.
        progress: show progress bars.
        inception: a :class:`~msflow.nn.inception.FIDInception` with loaded weights
            (:func:`~msflow.nn.inception.load_fid_inception`): use its 2048-d features instead of
            the classifier's (FID; no classifier is trained, labels are not needed).

    Returns:
        ``{"metric", "column", "dataset", "n", "seed", "classifier": {...} or None with inception,
        "reference": distance(train, test), "rows": [{"temperature", "fcd"}, ...],
        "grids": [uint8 (grid, C, H, W), ...]}``; ``"column"`` is ``"FCD"`` or ``"FID"``.

    Raises:
        MsflowError: no temperatures, ``n < 2``, or unlabelled data without ``inception``; ``ShapeError`` when the
            model's images and the data differ in shape.
    """
    if not temperatures:
        raise MsflowError("give at least one temperature")
    if n < 2:
        raise MsflowError(f"a Frechet distance needs at least 2 samples per temperature, got n={n}")
    shape = model.image_shape
    if tuple(shape) != tuple(test.image_shape):
        raise ShapeError(f"the model makes {tuple(shape)} images but dataset {test.name!r} has {test.image_shape}")
    device = next(model.parameters()).device
    if inception is None:
        net, info = load_or_train_classifier(train, test, cache_dir=cache_dir, progress=progress)
        net.to(device)

        def features(images: Tensor) -> Tensor:
            return classifier_features(net, images)

    else:
        from msflow.nn.inception import inception_features

        info = None
        inception.to(device)

        def features(images: Tensor) -> Tensor:
            return inception_features(inception, images)

    test_gaussian = fit_gaussian(features(test.images))

    def fcd(images: Tensor) -> float:
        return gaussian_frechet_distance(*fit_gaussian(features(images)), *test_gaussian)

    subset = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    reference = fcd(train.images[subset])
    rows, grids = [], []
    for t in tqdm(temperatures, desc="temperatures", disable=not progress):
        images = sample_images(model, n, float(t), seed, progress=progress)
        rows.append({"temperature": float(t), "fcd": fcd(images)})
        grids.append(images[:grid])
    return {
        "metric": metric_name(train.name) if inception is None else FID_METRIC,
        "column": "FCD" if inception is None else "FID",
        "dataset": train.name,
        "n": n,
        "n_test": len(test),
        "n_reference": len(subset),
        "seed": seed,
        "classifier": info,
        "reference": reference,
        "rows": rows,
        "grids": grids,
    }


def format_table(result: dict[str, Any]) -> str:
    """Table 5 of paper 000 as plain text: one row per temperature, then the reference row."""
    lines = [
        f"{result['metric']}, {result['n']} samples per temperature vs {result['n_test']} test images of "
        f"{result['dataset']} (seed {result['seed']}); lower is better",
        f"{'temperature':>11}  {result.get('column', 'FCD'):>10}",
    ]
    lines += [f"{row['temperature']:>11.2f}  {row['fcd']:>10.4f}" for row in result["rows"]]
    reference = f"(reference: {result['n_reference']} training images)"
    lines.append(f"{'train/test':>11}  {result['reference']:>10.4f}  {reference}")
    return "\n".join(lines)


def temperature_figure(result: dict[str, Any], path: str | Path, title: str = "") -> Figure:
    """FCD against temperature (reference as a dashed line) above one grid of samples per temperature.

    Returns the matplotlib figure (Agg canvas, no pyplot state); the PNG is written atomically.
    """
    rows = result["rows"]
    k = len(rows)
    width = max(6.0, 1.25 * k)
    # The strip is as tall as one square panel (plus its title), so the grids fill it.
    strip = width / k + 0.3
    fig = figure("plotting temperature curves", figsize=(width, 3.2 + strip), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[3.2, strip])
    ax = top.subplots()
    temps = [r["temperature"] for r in rows]
    ax.plot(temps, [r["fcd"] for r in rows], "o-", label="samples vs test")
    ax.axhline(result["reference"], ls="--", c="grey", label=f"train vs test ({result['reference']:.3g})")
    positive = min([r["fcd"] for r in rows] + [result["reference"]]) > 0
    ax.set(
        xlabel="temperature",
        ylabel=f"{result.get('column', 'FCD')} (lower is better)",
        yscale="log" if positive else "linear",
    )
    ax.set_title(title or result["metric"], fontsize=9)
    ax.legend(fontsize=8)
    axes = bottom.subplots(1, k, squeeze=False)[0]
    for a, row, images in zip(axes, rows, result["grids"], strict=True):
        g = image_grid(images, nrow=max(1, int(len(images) ** 0.5)), pad=1)
        a.imshow(g[..., 0] if g.shape[2] == 1 else g, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        a.set(xticks=[], yticks=[])
        a.set_title(f"T={row['temperature']:g}", fontsize=8)
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return fig


def result_json(result: dict[str, Any], run: str | Path | None = None) -> dict[str, Any]:
    """``result`` without the image grids, ready for ``json.dumps``."""
    out = {k: v for k, v in result.items() if k != "grids"}
    if run is not None:
        out["run"] = str(run)
    return out


__all__ = [
    "DEFAULT_TEMPERATURES",
    "FID_METRIC",
    "format_table",
    "metric_name",
    "result_json",
    "sample_images",
    "temperature_sweep",
    "temperature_figure",
]

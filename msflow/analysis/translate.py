r"""Image-to-image translation with CAFLOW (paper 002): inference, best-of selection and its evaluation.

Inference (section 4.4) encodes the condition ``y`` into ``D_{n-1}, .., D_0`` with ``R``, draws
every latent ``z^i_j`` from ``N(0, tau^2 I)``, generates ``L_0, .., L_{n-1}`` with ``G_0, ..,
G_{n-1}`` in turn and inverts ``T``. A temperature ``tau < 1`` trades diversity for quality; the
paper's are in :data:`TEMPERATURES`.

The model is also a conditional likelihood estimator, so the paper keeps **the best N of M**
samples: draw ``w_1, .., w_M ~ p(w | y)`` at ``tau``, score each by its conditional bits/dim

.. math::

    b(w_k) = -\frac{\log p(w_k + u \mid y)}{D \log 2}, \qquad u \sim U[0, 1)^D,

and keep the ``N`` lowest (Figures 3, 8-16: samples in decreasing conditional log-likelihood).
All ``M`` candidates share **one** dequantization draw ``u`` (common random numbers), so their
order reflects the images, not the noise; :func:`evaluate_translation` scores the ground truth
with that same ``u`` to ask how often it beats the samples (the paper: "CAFLOW typically
assigns to the ground-truth image higher conditional log-likelihood than any generated
sample").

The flows are convolutional: a condition of any size is padded at the right and bottom
(edge pixels repeated) to sides the squeezes take, samples are drawn and scored at the padded
size, and cropped back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from msflow.analysis.cond_superres import crop_for, input_multiple, pad_to_multiple, sample_padded
from msflow.core import evaluation_context
from msflow.data.pairs import PairedDataset, downscale_bicubic
from msflow.data.translation import apply_mask, central_mask, sketch_edges, to_grey
from msflow.errors import ConfigError, DataError, ShapeError
from msflow.metrics.fidelity import psnr, rmse, ssim
from msflow.viz import save_grid

TEMPERATURES: dict[str, float] = {"superres": 0.5, "colorize": 0.85, "inpaint": 0.5, "sketch": 0.8}
"""The paper's sampling temperature per task: sections 5.1-5.3 and Figure 16 (edges2shoes)."""

MAX_BATCH_PIXELS = 2**21
"""Most target pixels drawn or scored in one batch, so a photo's memory stays bounded."""


def can_rank(model: nn.Module) -> bool:
    """Whether ``model`` scores candidates with common dequantization noise (a CAFLOW model)."""
    from msflow.models.caflow import CAFlow

    return isinstance(model, CAFlow)


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with evaluation_context(model):
            yield
    finally:
        model.train(was_training)


def _score(model: nn.Module, images: Tensor, cond: Tensor, score_seed: int) -> Tensor:
    """``(B,)`` float64 conditional bits/dim of ``images`` given one condition ``(1, ...)``.

    Every batch starts a fresh generator at ``score_seed``, so every image, in whatever batch,
    gets the same dequantization noise image.
    """
    device = next(model.parameters()).device
    per_batch = max(1, MAX_BATCH_PIXELS // (images.shape[-2] * images.shape[-1]))
    cond = cond.to(device)
    out = []
    for start in range(0, len(images), per_batch):
        x = images[start : start + per_batch].to(device)
        gen = torch.Generator().manual_seed(score_seed)
        bpd = model.bits_per_dim(x, cond.expand(len(x), *cond.shape[1:]), gen, same_noise=True)
        out.append(bpd.double().cpu())
    return torch.cat(out)


def _check_cond(model: nn.Module, cond: Tensor) -> None:
    if not can_rank(model):
        raise ConfigError(
            f"ranking samples needs their conditional likelihood under shared noise, which a {type(model).__name__} "
            "does not give: use a CAFLOW model (caflow-*)"
        )
    if not isinstance(cond, Tensor) or cond.dtype != torch.uint8:
        got = cond.dtype if isinstance(cond, Tensor) else type(cond).__name__
        raise DataError(f"the condition must be a uint8 image (1, C, h, w) of 0..255, got {got}")
    c = model.cond_shape[0]
    if cond.dim() != 4 or cond.shape[:2] != (1, c):
        raise ShapeError(f"give one {c}-channel condition image (1, {c}, h, w), got {tuple(cond.shape)}")


def _draw_and_score(
    model: nn.Module,
    cond: Tensor,
    m: int,
    temperature: float | list[float],
    generator: torch.Generator | None,
    score_seed: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(samples (m, C, H, W) in draw order, their bits/dim (m,), the padded condition)``.

    Samples are at the padded size and scored there (the padding of the condition is part of
    what every candidate is scored against)."""
    _check_cond(model, cond)
    padded = pad_to_multiple(cond, input_multiple(model)).to(next(model.parameters()).device)
    samples = sample_padded(model, padded, m, temperature, generator, MAX_BATCH_PIXELS)
    return samples, _score(model, samples, padded, score_seed), padded


def best_of(
    model: nn.Module,
    cond: Tensor,
    n: int,
    m: int,
    temperature: float | list[float],
    generator: torch.Generator | None = None,
    score_seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """The ``n`` best of ``m`` samples of ``p(target | cond)`` by conditional likelihood (section 4.4).

    Args:
        model: a CAFLOW model.
        cond: one uint8 condition ``(1, Cc, h, w)`` of any size (``h x w`` for super-resolution
            is the low-resolution image).
        n: samples kept.
        m: samples drawn (``m >= n``; the paper keeps 1 of 10, or 10 of 20-30 for its figures).
        temperature: one value, or one per scale (coarse to fine).
        generator: draws the samples.
        score_seed: seeds the one dequantization noise image all ``m`` candidates are scored with.

    Returns:
        ``(samples (n, C, H, W) uint8, bits/dim (n,) float64)``, best (lowest bits/dim) first,
        on the CPU; ``H x W`` is ``h x w`` times the model's scale.

    Raises:
        ConfigError: ``n > m`` (also a ``ValueError``), ``n < 1``, or a model other than CAFLOW.
        ShapeError, DataError: a condition the model cannot take.

    Example:
        >>> import torch, msflow
        >>> model = msflow.create_model("caflow-colorize", size=16, levels=2, hidden=8, cond_hidden=8,
        ...                             cond_steps=1, target_steps=1, flow_steps=1)
        >>> grey = torch.randint(0, 256, (1, 1, 13, 21), dtype=torch.uint8)
        >>> samples, bpd = best_of(model, grey, n=2, m=5, temperature=0.85)
        >>> samples.shape, bool(bpd[0] <= bpd[1])
        (torch.Size([2, 3, 13, 21]), True)
    """
    if n < 1 or n > m:
        raise ConfigError(f"keep the best n of m samples with 1 <= n <= m, got n={n}, m={m}: draw at least n")
    h, w = cond.shape[-2:]
    s = model.scale
    with _evaluating(model):
        samples, bpd, _ = _draw_and_score(model, cond, m, temperature, generator, score_seed)
    order = torch.argsort(bpd, stable=True)[:n]
    return samples[order][..., : h * s, : w * s], bpd[order]


# ---- conditions from a user's image ---------------------------------------------------------


def _shape(image: Tensor) -> str:
    return "x".join(map(str, image.shape))


def _colorize(model: nn.Module, image: Tensor, mask: Tensor | None, hr: bool) -> tuple[Tensor, Tensor | None]:
    if image.shape[0] == 3:
        return to_grey(image[None])[0], image
    return image, None


def _inpaint(model: nn.Module, image: Tensor, mask: Tensor | None, hr: bool) -> tuple[Tensor, Tensor | None]:
    c, h, w = image.shape
    if c != 3:
        raise ShapeError(f"inpaint expects an RGB image (3x{h}x{w}), got {_shape(image)}")
    if mask is None:
        mask = central_mask(h, w)
    elif tuple(mask.shape) != (h, w):
        raise ShapeError(f"the mask of a {h}x{w} image must be {h}x{w} (True or 1: hidden), got {_shape(mask)}")
    elif mask.dtype != torch.bool:
        if mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
            raise DataError("a mask holds True/False or 1/0 (1: hidden); threshold it first")
        mask = mask == 1
    return apply_mask(image[None], mask)[0], image


def _sketch(model: nn.Module, image: Tensor, mask: Tensor | None, hr: bool) -> tuple[Tensor, Tensor | None]:
    if image.shape[0] == 3:
        return sketch_edges(image[None])[0], image
    return image, None


def _superres(model: nn.Module, image: Tensor, mask: Tensor | None, hr: bool) -> tuple[Tensor, Tensor | None]:
    if image.shape[0] != 3:
        raise ShapeError(f"superres expects an RGB image (3xHxW), got {_shape(image)}")
    if not hr:
        return image, None
    truth = crop_for(model, image)
    return downscale_bicubic(truth[None], model.scale)[0], truth


# task -> map of a grey or RGB image (and a mask, hr) to (condition, truth or None)
_PREPARE: dict[str, Callable[[nn.Module, Tensor, Tensor | None, bool], tuple[Tensor, Tensor | None]]] = {
    "colorize": _colorize,
    "inpaint": _inpaint,
    "sketch": _sketch,
    "superres": _superres,
}


def prepare_condition(
    model: nn.Module, image: Tensor, mask: Tensor | None = None, hr: bool = False
) -> tuple[Tensor, Tensor | None]:
    """The condition ``(Cc, H, W)`` a CAFLOW model takes, made from a user's uint8 image ``(C, H, W)``,
    and the ground truth when the image holds it (else ``None``). By the model's task:

    - **colorize**: an RGB image becomes its greyscale (:func:`~msflow.data.translation.to_grey`),
      the truth; a grey image is the condition as it is.
    - **inpaint**: an RGB image with the pixels of ``mask`` (by default the
      :func:`~msflow.data.translation.central_mask`) set to 0; the truth is the image.
    - **sketch**: an RGB photo becomes its edges (:func:`~msflow.data.translation.sketch_edges`),
      the truth; a grey image is taken as the edge map.
    - **superres**: the RGB image is the low-resolution input; with ``hr=True`` it is the truth,
      cropped to sides the model takes (:func:`~msflow.analysis.cond_superres.crop_for`), and
      the input is its antialiased bicubic ``1/scale`` version, as the training pairs were made.

    Args:
        model: a CAFLOW model (its ``task`` picks the row).
        image: uint8 ``(1 or 3, H, W)``.
        mask: inpainting only: ``(H, W)`` bool or 0/1, True (1) where pixels are hidden.
        hr: super-resolution only: the image is the ground truth.

    Raises:
        ShapeError: a grey image for inpaint or superres, or a mask of the wrong size.
        DataError: an image that is not uint8, or a mask of other values than 0 and 1.
        ConfigError: ``mask`` for a task other than inpaint, ``hr`` for one other than superres.

    Example:
        >>> import torch, msflow
        >>> model = msflow.create_model("caflow-inpaint", size=16, levels=2, hidden=8, cond_hidden=8,
        ...                             cond_steps=1, target_steps=1, flow_steps=1)
        >>> photo = torch.full((3, 8, 12), 200, dtype=torch.uint8)
        >>> cond, truth = prepare_condition(model, photo)
        >>> cond[0].tolist()[3], truth is photo
        ([200, 200, 200, 0, 0, 0, 0, 0, 0, 200, 200, 200], True)
    """
    task = model.task
    if mask is not None and task != "inpaint":
        raise ConfigError(f"a mask is for inpainting; this is a {task} model")
    if hr and task != "superres":
        raise ConfigError(f"hr=True is for super-resolution; this is a {task} model")
    if not isinstance(image, Tensor) or image.dtype != torch.uint8:
        got = image.dtype if isinstance(image, Tensor) else type(image).__name__
        raise DataError(f"give a uint8 image (C, H, W) of 0..255, got {got}")
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ShapeError(f"{task} takes a grey or RGB image (1xHxW or 3xHxW), got {_shape(image)}")
    return _PREPARE[task](model, image, mask, hr)


# ---- evaluation on held-out pairs -----------------------------------------------------------


@dataclass
class TranslationResult:
    """One model's held-out scores (:func:`evaluate_translation`); means over the pairs.

    ``random`` and ``best`` map ``"bpd"`` (conditional bits/dim of the chosen samples, under
    the shared noise), ``"psnr"``, ``"ssim"`` and ``"rmse"`` to floats: the first sample drawn,
    and the one of lowest bits/dim of ``m``.
    """

    count: int
    m: int
    temperature: float
    test_bpd: float
    truth_bpd: float
    random: dict[str, float]
    best: dict[str, float]
    gt_beats_fraction: float
    gt_beats_all: float

    def as_dict(self) -> dict:
        """Plain numbers, for JSON."""
        return asdict(self)


def fidelity(sample: Tensor, truth: Tensor) -> dict[str, float]:
    """PSNR (dB), SSIM (RGB) and RMSE (0..255) of one uint8 image against the truth.

    SSIM is ``nan`` for images smaller than its 7x7 window."""
    structure = math.nan if min(truth.shape[-2:]) < 7 else ssim(sample, truth)
    return {"psnr": psnr(sample, truth), "ssim": structure, "rmse": rmse(sample, truth)}


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def evaluate_translation(
    model: nn.Module,
    dataset: PairedDataset,
    count: int = 100,
    m: int = 10,
    temperature: float | None = None,
    seed: int = 0,
    batch_size: int = 250,
    progress: bool = True,
) -> TranslationResult:
    """Random sample vs best of ``m`` on ``count`` evenly spaced held-out pairs, and the ground truth's rank.

    Pair ``i`` (``torch.linspace(0, N - 1, count)`` rounded: deterministic) gets ``m`` samples at
    ``temperature`` (the task's :data:`TEMPERATURES` by default) from a generator seeded with
    ``seed`` and ``i``; the samples and the truth are scored with one shared noise image (seed
    ``seed``). Reported: PSNR, SSIM (RGB) and RMSE (0..255) of the first sample ("random") and
    of the lowest-bits/dim one ("best"); the fraction of (pair, sample) where the truth has
    lower bits/dim than the sample, and of pairs where it beats all ``m``; and the test split's
    mean conditional bits/dim (:func:`~msflow.train.evaluate.dataset_bits_per_dim`, seed ``seed``).

    Raises:
        ConfigError: ``count`` outside ``[1, N]`` or ``m < 1``.
    """
    from msflow.train.evaluate import dataset_bits_per_dim

    if not 1 <= count <= len(dataset):
        raise ConfigError(f"count must be in [1, {len(dataset)}] (the held-out pairs), got {count}")
    if m < 1:
        raise ConfigError(f"m counts samples per pair and must be >= 1, got {m}")
    temperature = TEMPERATURES[model.task] if temperature is None else float(temperature)
    indices = torch.linspace(0, len(dataset) - 1, count).round().long().tolist()
    random, best, beats, beats_all, truth_bpd = [], [], 0, 0, 0.0
    with _evaluating(model):
        for i in tqdm(indices, desc="pairs", leave=False, disable=not progress):
            truth, cond = dataset.images[i], dataset.conds[i]
            gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
            samples, bpd, padded = _draw_and_score(model, cond[None], m, temperature, gen, seed)
            gt = _score(model, truth[None], padded, seed)[0]
            k = int(torch.argmin(bpd))
            random.append({"bpd": float(bpd[0]), **fidelity(samples[0], truth)})
            best.append({"bpd": float(bpd[k]), **fidelity(samples[k], truth)})
            wins = int((gt < bpd).sum())
            beats, beats_all, truth_bpd = beats + wins, beats_all + (wins == m), truth_bpd + float(gt)
    test = float(dataset_bits_per_dim(model, dataset, batch_size, seed).mean())
    fractions = (beats / (count * m), beats_all / count)
    return TranslationResult(count, m, temperature, test, truth_bpd / count, _mean(random), _mean(best), *fractions)


def format_translation_table(results: dict[str, TranslationResult]) -> str:
    """A markdown table: one row per (model, selection), then the ground truth's rank per model."""
    any_result = next(iter(results.values()))
    m = any_result.m
    lines = [
        "| model | selection | cond bits/dim | PSNR (dB) | SSIM | RMSE |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in results.items():
        for name, row in (("random sample", r.random), (f"best of {m}", r.best)):
            scores = f"{row['bpd']:.4f} | {row['psnr']:.2f} | {row['ssim']:.4f} | {row['rmse']:.2f}"
            lines.append(f"| {label} | {name} | {scores} |")
    lines.append("")
    for label, r in results.items():
        lines.append(
            f"{label}: test bits/dim {r.test_bpd:.4f}; the ground truth ({r.truth_bpd:.4f} bits/dim) beats "
            f"{r.gt_beats_fraction:.1%} of the samples and all {m} samples for {r.gt_beats_all:.1%} of the pairs"
        )
    return "\n".join(lines)


# ---- figures --------------------------------------------------------------------------------


def show_condition(model: nn.Module, cond: Tensor) -> Tensor:
    """A condition ``(Cc, h, w)`` as an RGB picture at the target's size (nearest neighbours)."""
    s = model.scale
    shown = cond.repeat_interleave(s, -1).repeat_interleave(s, -2) if s > 1 else cond
    return shown.expand(3, -1, -1) if shown.shape[0] == 1 else shown


def likelihood_grid(
    model: nn.Module,
    conds: Tensor,
    n: int,
    m: int,
    temperature: float | list[float],
    path: str | Path,
    truths: Tensor | None = None,
    seed: int = 0,
) -> Path:
    """Figures 3, 8-16: per condition a row of the condition, the ``n`` best of ``m`` samples in
    decreasing conditional log-likelihood, and the truth when ``truths`` is given.

    Args:
        model: a CAFLOW model.
        conds: uint8 ``(K, Cc, h, w)``; greyscale and edge maps are shown as RGB.
        n: samples shown per row, the best of ``m``.
        m: samples drawn per row.
        temperature: one value, or one per scale (coarse to fine).
        path: the PNG to write.
        truths: uint8 ``(K, C, H, W)`` or ``None``.
        seed: row ``k`` draws with ``seed + k`` and every row is scored with noise seed ``seed``.
    """
    rows = []
    for k, cond in enumerate(conds):
        samples, _ = best_of(model, cond[None], n, m, temperature, torch.Generator().manual_seed(seed + k), seed)
        panels = [show_condition(model, cond)[None], samples]
        if truths is not None:
            panels.append(truths[k][None])
        rows.append(torch.cat(panels))
    per_row = len(rows[0])
    return save_grid(torch.cat(rows), path, nrow=per_row, scale=max(1, 96 // rows[0].shape[-1]))


__all__ = [
    "TEMPERATURES",
    "TranslationResult",
    "best_of",
    "evaluate_translation",
    "fidelity",
    "format_translation_table",
    "likelihood_grid",
    "prepare_condition",
    "show_condition",
]

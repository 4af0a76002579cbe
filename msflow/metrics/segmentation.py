r"""Binary segmentation metrics: precision-recall curves, maximal F-score, per-sample PR points.

The vessel-segmentation evaluation of paper 003 (section 5.2, Figure 5, Table 3) thresholds a
soft map (for a flow, the mean of 100 sampled masks) at a sweep of thresholds ``t``, predicting
``soft >= t``, and counts true/false positives and false negatives **pooled over all test
images** (the dataset-level convention of the DRIVE literature):

.. math::

    P = \frac{TP}{TP + FP}, \qquad R = \frac{TP}{TP + FN}, \qquad F = \frac{2 P R}{P + R}.

Two conventions make every point defined: ``P = 1`` when nothing is predicted positive (no false
positive was made, and the curve then ends at ``(R, P) = (0, 1)`` as in scikit-learn), and
``R = 1`` when the target has no positive pixel (there was nothing to miss). ``F = 0`` when
``P = R = 0``.

Individual samples give points in PR space (:func:`sample_pr_points`); factorized models are
sampled by drawing independent Bernoulli pixels with the soft map as mean
(:func:`bernoulli_samples`), as the paper does for its Figure 5 scatter.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from msflow.errors import MsflowError, ShapeError


class PRCurve(NamedTuple):
    """Precision and recall at each threshold (1-D float64 tensors of one length)."""

    thresholds: Tensor
    precision: Tensor
    recall: Tensor


class MaxFScore(NamedTuple):
    """The point of a :class:`PRCurve` with the largest F-score."""

    f: float
    threshold: float
    precision: float
    recall: float


def _check_binary(x: Tensor, name: str) -> None:
    if not bool(((x == 0) | (x == 1)).all()):
        raise MsflowError(
            f"{name} must be binary (values 0 and 1 only, or bool); got values {x.unique()[:5].tolist()}..."
        )


def _check_unit(x: Tensor, name: str) -> None:
    if not bool(((x >= 0) & (x <= 1)).all()):  # NaN fails both comparisons, so it is caught too
        raise MsflowError(f"{name} must hold probabilities in [0, 1]; got min {x.min().item()}, max {x.max().item()}")


def _valid_pixels(target: Tensor, mask: Tensor | None) -> Tensor:
    """Boolean selector of the pixels that count, shaped like ``target``."""
    if mask is None:
        return torch.ones_like(target, dtype=torch.bool)
    try:
        mask = mask.expand_as(target)
    except RuntimeError:
        raise ShapeError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to target of shape {tuple(target.shape)}; "
            "give one field-of-view mask per image or one for all"
        ) from None
    _check_binary(mask, "mask")
    valid = mask.bool()
    if not bool(valid.any()):
        raise MsflowError("mask selects no pixel; nothing to score")
    return valid


def _check_target(target: Tensor) -> None:
    if target.dim() not in (3, 4) or (target.dim() == 4 and target.shape[1] != 1):
        raise ShapeError(f"target must be (N, 1, H, W) or (N, H, W), got shape {tuple(target.shape)}")
    _check_binary(target, "target")


def _rates(tp: Tensor, predicted: Tensor, positives: Tensor) -> tuple[Tensor, Tensor]:
    one = torch.ones_like(tp)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), one)
    recall = torch.where(positives > 0, tp / positives.clamp(min=1), one)
    return precision, recall


def precision_recall_curve(
    soft: Tensor, target: Tensor, mask: Tensor | None = None, thresholds: int | Tensor | None = 101
) -> PRCurve:
    """Dataset-level precision and recall of ``soft >= t`` against ``target`` for each threshold ``t``.

    Args:
        soft: scores in [0, 1], ``(N, 1, H, W)`` or ``(N, H, W)``, e.g. the mean of sampled masks.
        target: ground truth of the same shape, values in {0, 1}.
        mask: optional field of view, broadcastable to ``target``; pixels outside are ignored.
        thresholds: ``n`` for ``n`` evenly spaced thresholds from 0 to 1, a 1-D tensor of
            thresholds (any order, kept), or ``None`` for every distinct score (the exact curve).

    The counts come from one sort and a cumulative sum: with the ``n`` valid scores sorted, the
    pixels predicted positive at ``t`` are those not below ``t`` (a binary search), and their
    true positives are all positives minus those among the lower scores. Thresholds are compared
    in the floating-point precision of ``soft`` so that, say, a float32 mean of 100 samples equal
    to ``0.07`` is predicted positive at the threshold ``0.07``.

    Example:
        >>> soft = torch.tensor([[0.9, 0.8, 0.3, 0.1]])
        >>> target = torch.tensor([[1, 0, 1, 0]])
        >>> curve = precision_recall_curve(soft[None], target[None], thresholds=torch.tensor([0.0, 0.5, 1.0]))
        >>> curve.precision.tolist(), curve.recall.tolist()  # all 4 / top 2 / none predicted
        ([0.5, 0.5, 1.0], [1.0, 0.5, 0.0])
    """
    if soft.shape != target.shape:
        raise ShapeError(f"soft and target must have one shape, got {tuple(soft.shape)} and {tuple(target.shape)}")
    _check_target(target)
    _check_unit(soft, "soft")
    valid = _valid_pixels(target, mask)
    scores, labels = soft[valid].to(torch.float64), target[valid].to(torch.float64)

    if thresholds is None:
        levels = scores.unique()
    elif isinstance(thresholds, int):
        if thresholds < 2:
            raise MsflowError(f"thresholds must be at least 2 evenly spaced values (0 and 1), got {thresholds}")
        levels = torch.linspace(0.0, 1.0, thresholds, dtype=torch.float64, device=scores.device)
    else:
        levels = torch.as_tensor(thresholds, dtype=torch.float64, device=scores.device)
        if levels.dim() != 1 or levels.numel() == 0 or not bool(levels.isfinite().all()):
            raise MsflowError(
                f"thresholds must be a non-empty 1-D tensor of finite values, got shape {tuple(levels.shape)}"
            )
    compare = levels.to(soft.dtype).to(torch.float64) if soft.is_floating_point() else levels

    order = scores.argsort()
    sorted_scores = scores[order]
    # below[i] = positives among the i lowest scores
    below = torch.cat([labels.new_zeros(1), labels[order].cumsum(0)])
    n_low = torch.searchsorted(sorted_scores, compare, right=False)  # scores strictly below t
    positives = labels.sum()
    tp = positives - below[n_low]
    predicted = (scores.numel() - n_low).to(torch.float64)
    precision, recall = _rates(tp, predicted, positives.expand_as(tp))
    return PRCurve(levels, precision, recall)


def f_score(precision: Tensor | float, recall: Tensor | float) -> Tensor | float:
    """Harmonic mean ``2 P R / (P + R)`` of precision and recall, 0 where both are 0.

    Example:
        >>> f_score(0.75, 1.0)  # 1.5 / 1.75
        0.8571428571428571
        >>> f_score(torch.tensor([0.0, 0.5]), torch.tensor([0.0, 0.5])).tolist()
        [0.0, 0.5]
    """
    if isinstance(precision, Tensor) or isinstance(recall, Tensor):
        p, r = torch.as_tensor(precision, dtype=torch.float64), torch.as_tensor(recall, dtype=torch.float64)
        total = p + r
        return torch.where(total > 0, 2 * p * r / torch.where(total > 0, total, 1.0), 0.0)
    total = precision + recall
    return 0.0 if total == 0 else 2 * precision * recall / total


def max_f_score(curve: PRCurve) -> MaxFScore:
    """The threshold of ``curve`` with the largest F-score (the lowest such threshold on ties).

    Example:
        >>> curve = PRCurve(torch.tensor([0.2, 0.5]), torch.tensor([0.5, 0.75]), torch.tensor([1.0, 1.0]))
        >>> best = max_f_score(curve)
        >>> best.threshold, round(best.f, 4)
        (0.5, 0.8571)
    """
    thresholds, precision, recall = curve
    if thresholds.numel() == 0:
        raise MsflowError("max_f_score got an empty curve; give at least one threshold")
    f = f_score(precision, recall)
    # The lowest threshold among ties, whatever order the curve's thresholds come in.
    best_f = f.max()
    tied = (f == best_f).nonzero().squeeze(1)
    i = tied[thresholds[tied].argmin()]
    return MaxFScore(float(best_f), float(thresholds[i]), float(precision[i]), float(recall[i]))


def sample_pr_points(samples: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Precision and recall of each binary sample, pooled over its images: ``(S, 2)`` float64.

    ``samples`` is ``(S, *target.shape)``, S sampled masks of the whole set (``(S, N, 1, H, W)``),
    or ``(S, *target.shape[1:])`` when ``target`` holds a single image (``(S, 1, H, W)`` against a
    ``(1, 1, H, W)`` target). Column 0 is precision, column 1 recall, with the conventions of
    :func:`precision_recall_curve`.

    Example:
        >>> target = torch.tensor([[[1, 1, 0, 0]]])
        >>> samples = torch.tensor([[[1, 0, 0, 0]], [[1, 1, 1, 1]]])  # two samples of one image
        >>> sample_pr_points(samples, target).tolist()
        [[1.0, 0.5], [0.5, 1.0]]
    """
    _check_target(target)
    if samples.shape[1:] == target.shape:
        flat = samples
    elif target.shape[0] == 1 and samples.shape[1:] == target.shape[1:]:
        flat = samples.unsqueeze(1)
    else:
        raise ShapeError(
            f"samples must be (S, *target.shape) = (S, {', '.join(map(str, target.shape))}), or (S, "
            f"{', '.join(map(str, target.shape[1:]))}) for a one-image target; got {tuple(samples.shape)}"
        )
    if samples.shape[0] == 0:
        raise MsflowError("sample_pr_points got no sample (S = 0)")
    valid = _valid_pixels(target, mask)
    labels = target[valid].bool()
    # One sample at a time: 100 samples of the 20 DRIVE test images are 660M pixels, too many
    # to copy at once; integer counts are exact.
    counts = torch.zeros(samples.shape[0], 2, dtype=torch.int64)
    for i, sample in enumerate(flat):
        _check_binary(sample, "samples")
        picked = sample[valid].bool()
        counts[i, 0] = (picked & labels).sum()
        counts[i, 1] = picked.sum()
    tp, predicted = counts.to(torch.float64).unbind(1)
    positives = labels.sum().to("cpu", torch.float64).expand_as(tp)  # counts live on the CPU
    precision, recall = _rates(tp, predicted, positives)
    return torch.stack([precision, recall], dim=1).to(target.device)


def bernoulli_samples(prob: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` binary masks ``(n, *prob.shape)`` with independent pixels, ``P(pixel = 1) = prob``.

    This is how a factorized (per-pixel) model is sampled: its soft map is the mean of a
    product of Bernoullis. The masks have the dtype of ``prob`` (float32 if it is not floating).

    Example:
        >>> masks = bernoulli_samples(torch.tensor([0.0, 1.0]), 3, torch.Generator().manual_seed(0))
        >>> masks.tolist()
        [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]
    """
    if not isinstance(n, int) or n < 1:
        raise MsflowError(f"the number of samples n must be a positive int, got {n!r}")
    _check_unit(prob, "prob")
    p = prob if prob.is_floating_point() else prob.to(torch.float32)
    # Uniforms drawn on the generator's device, so a CPU generator also serves CUDA maps.
    where = generator.device if generator is not None else p.device
    u = torch.rand((n, *p.shape), generator=generator, device=where, dtype=p.dtype).to(p.device)
    return (u < p).to(p.dtype)


__all__ = [
    "MaxFScore",
    "PRCurve",
    "bernoulli_samples",
    "f_score",
    "max_f_score",
    "precision_recall_curve",
    "sample_pr_points",
]

"""Segmentation metrics (paper 003, section 5.2): PR curves, max F-score, sample scatter, plot."""

from __future__ import annotations

import pytest
import torch

from msflow.analysis.pr_plot import plot_precision_recall
from msflow.metrics.segmentation import (
    PRCurve,
    bernoulli_samples,
    f_score,
    max_f_score,
    precision_recall_curve,
    sample_pr_points,
)

# Six pixels of one 2x3 image, three of them vessel.
SCORES = torch.tensor([[[0.9, 0.8, 0.7], [0.6, 0.3, 0.1]]], dtype=torch.float64)
LABELS = torch.tensor([[[1, 0, 1], [1, 0, 0]]])


def naive_curve(soft: torch.Tensor, target: torch.Tensor, thresholds: torch.Tensor, mask=None):
    """One threshold at a time, straight from the definitions."""
    keep = torch.ones_like(target, dtype=torch.bool) if mask is None else mask.expand_as(target).bool()
    s, y = soft[keep].double(), target[keep].bool()
    precision, recall = [], []
    for t in thresholds.tolist():
        pred = s >= t
        tp = (pred & y).sum().item()
        fp = (pred & ~y).sum().item()
        fn = (~pred & y).sum().item()
        precision.append(1.0 if tp + fp == 0 else tp / (tp + fp))
        recall.append(1.0 if tp + fn == 0 else tp / (tp + fn))
    return torch.tensor(precision, dtype=torch.float64), torch.tensor(recall, dtype=torch.float64)


def test_hand_computed_example():
    # t = 0.95: nothing predicted            -> P = 1 (convention), R = 0
    # t = 0.75: {0.9, 0.8}, TP = 1, FP = 1   -> P = 1/2, R = 1/3
    # t = 0.70: {0.9, 0.8, 0.7}, TP = 2      -> P = 2/3, R = 2/3  (>= includes 0.7)
    # t = 0.50: top 4, TP = 3, FP = 1        -> P = 3/4, R = 1
    # t = 0.00: all 6, TP = 3, FP = 3        -> P = 1/2, R = 1
    thresholds = torch.tensor([0.95, 0.75, 0.7, 0.5, 0.0], dtype=torch.float64)
    curve = precision_recall_curve(SCORES, LABELS, thresholds=thresholds)
    torch.testing.assert_close(curve.thresholds, thresholds)
    torch.testing.assert_close(curve.precision, torch.tensor([1.0, 1 / 2, 2 / 3, 3 / 4, 1 / 2], dtype=torch.float64))
    torch.testing.assert_close(curve.recall, torch.tensor([0.0, 1 / 3, 2 / 3, 1.0, 1.0], dtype=torch.float64))


def test_exact_curve_at_every_distinct_score():
    curve = precision_recall_curve(SCORES, LABELS, thresholds=None)
    assert curve.thresholds.tolist() == [0.1, 0.3, 0.6, 0.7, 0.8, 0.9]
    # F at those thresholds: 2/3, 3/4, 6/7, 2/3, 2/5, 1/2 -> the best is 6/7 at t = 0.6.
    best = max_f_score(curve)
    assert best.f == pytest.approx(6 / 7)
    assert (best.threshold, best.precision, best.recall) == (0.6, 0.75, 1.0)


def test_conventions_without_positives():
    # No vessel at all: recall is 1 (nothing to miss); precision is 0 once anything is predicted
    # and 1 (nothing predicted, no false positive) above the top score.
    curve = precision_recall_curve(SCORES, torch.zeros_like(LABELS), thresholds=torch.tensor([0.5, 0.95]))
    assert curve.precision.tolist() == [0.0, 1.0] and curve.recall.tolist() == [1.0, 1.0]


def test_float32_scores_meet_equal_thresholds():
    # float32(0.07) < float64(0.07): the comparison must happen in the scores' precision.
    soft = torch.full((1, 1, 2, 2), 0.07, dtype=torch.float32)
    target = torch.ones(1, 1, 2, 2)
    curve = precision_recall_curve(soft, target, thresholds=torch.tensor([0.07]))
    assert curve.recall.item() == 1.0


def test_perfect_prediction_reaches_f_one():
    target = (torch.rand(3, 1, 16, 16) > 0.7).long()
    for soft in (target.double(), 0.2 + 0.6 * target.double()):
        best = max_f_score(precision_recall_curve(soft, target))
        assert best.f == 1.0 and best.precision == 1.0 and best.recall == 1.0


def test_sorted_cumsum_matches_threshold_loop():
    gen = torch.Generator().manual_seed(1)
    target = (torch.rand(4, 1, 12, 12, generator=gen) > 0.6).long()
    # Coarse scores (k/20) make many ties, correlated with the target so the curve is not flat;
    # float64, the precision in which the reference compares them with the thresholds.
    soft = ((0.5 * torch.rand(4, 1, 12, 12, generator=gen, dtype=torch.float64) + 0.5 * target) * 20).round() / 20
    thresholds = torch.cat([torch.linspace(0, 1, 257, dtype=torch.float64), soft.unique().double()])
    curve = precision_recall_curve(soft, target, thresholds=thresholds)
    precision, recall = naive_curve(soft, target, thresholds)
    torch.testing.assert_close(curve.precision, precision, rtol=0, atol=1e-12)
    torch.testing.assert_close(curve.recall, recall, rtol=0, atol=1e-12)
    # The default sweep is the evenly spaced grid; (N, H, W) images give the same pooled counts.
    default = precision_recall_curve(soft.squeeze(1), target.squeeze(1))
    precision, recall = naive_curve(soft, target, torch.linspace(0, 1, 101, dtype=torch.float64))
    torch.testing.assert_close(default.precision, precision, rtol=0, atol=1e-12)
    torch.testing.assert_close(default.recall, recall, rtol=0, atol=1e-12)


def test_mask_ignores_pixels_outside():
    gen = torch.Generator().manual_seed(2)
    soft = torch.rand(2, 1, 8, 8, generator=gen, dtype=torch.float64)
    target = (torch.rand(2, 1, 8, 8, generator=gen) > 0.5).long()
    fov = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    fov[..., 2:6, 1:7] = True  # one field of view for both images
    masked = precision_recall_curve(soft, target, mask=fov, thresholds=64)
    # Whatever lies outside the field of view must not change anything.
    scrambled_soft, scrambled_target = soft.clone(), target.clone()
    scrambled_soft[~fov.expand_as(soft)] = 1.0
    scrambled_target[~fov.expand_as(target)] = 0
    again = precision_recall_curve(scrambled_soft, scrambled_target, mask=fov, thresholds=64)
    torch.testing.assert_close(masked, again)
    precision, recall = naive_curve(soft, target, masked.thresholds, mask=fov)
    torch.testing.assert_close(masked.precision, precision)
    torch.testing.assert_close(masked.recall, recall)


def test_sample_points_match_hand_computation():
    target = torch.tensor([[[[1, 1], [0, 0]]], [[[0, 1], [0, 0]]]])  # 2 images, 3 positives
    samples = torch.zeros(3, 2, 1, 2, 2)
    samples[0, 0, 0, 0] = 1  # image 0: TP 2; image 1: nothing -> P = 2/2, R = 2/3
    samples[1] = 1  # everything                                -> P = 3/8, R = 3/3
    samples[2, 1, 0, 1, 0] = 1  # one false positive only       -> P = 0,   R = 0
    points = sample_pr_points(samples, target)
    expected = torch.tensor([[1.0, 2 / 3], [3 / 8, 1.0], [0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(points, expected)
    # One image: (S, 1, H, W) samples against a (1, 1, H, W) target, pooled the same way.
    one = sample_pr_points(samples[:, 0], target[:1])
    torch.testing.assert_close(one, torch.tensor([[1.0, 1.0], [0.5, 1.0], [1.0, 0.0]], dtype=torch.float64))
    # A mask that keeps only the first image's pixels gives the same as that image alone.
    keep = torch.tensor([1, 0]).view(2, 1, 1, 1)
    torch.testing.assert_close(sample_pr_points(samples, target, mask=keep), one)


def test_bernoulli_mean_converges_to_prob():
    prob = torch.linspace(0, 1, 11).view(1, 1, 1, 11)
    masks = bernoulli_samples(prob, 20_000, generator=torch.Generator().manual_seed(0))
    assert masks.shape == (20_000, 1, 1, 1, 11)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    # Standard error of a mean of 20k Bernoullis is at most 0.5 / sqrt(20k) = 0.0035: allow 5 sigma.
    torch.testing.assert_close(masks.mean(0), prob, rtol=0, atol=0.018)
    assert masks[:, ..., 0].sum() == 0 and masks[:, ..., -1].min() == 1


def test_f_score():
    assert f_score(0.0, 0.0) == 0.0
    assert f_score(1.0, 0.5) == pytest.approx(2 / 3)
    torch.testing.assert_close(
        f_score(torch.tensor([0.0, 1.0, 0.5]), torch.tensor([0.0, 1.0, 0.25])),
        torch.tensor([0.0, 1.0, 1 / 3], dtype=torch.float64),
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: precision_recall_curve(torch.rand(1, 4, 4), torch.ones(1, 4, 5)), "one shape"),
        (lambda: precision_recall_curve(torch.rand(1, 2, 4, 4), torch.ones(1, 2, 4, 4)), r"\(N, 1, H, W\)"),
        (lambda: precision_recall_curve(torch.rand(1, 4, 4), torch.full((1, 4, 4), 2.0)), "target must be binary"),
        (lambda: precision_recall_curve(torch.rand(1, 4, 4) + 1, torch.ones(1, 4, 4)), r"soft .*\[0, 1\]"),
        (lambda: precision_recall_curve(torch.full((1, 4, 4), float("nan")), torch.ones(1, 4, 4)), r"\[0, 1\]"),
        (lambda: precision_recall_curve(torch.rand(1, 4, 4), torch.ones(1, 4, 4), thresholds=1), "at least 2"),
        (
            lambda: precision_recall_curve(torch.rand(1, 4, 4), torch.ones(1, 4, 4), mask=torch.ones(1, 3, 3)),
            "does not broadcast",
        ),
        (
            lambda: precision_recall_curve(torch.rand(1, 4, 4), torch.ones(1, 4, 4), mask=torch.zeros(1, 4, 4)),
            "selects no pixel",
        ),
        (lambda: sample_pr_points(torch.ones(2, 3, 4, 4), torch.ones(2, 4, 4)), r"samples must be \(S, \*target"),
        (lambda: sample_pr_points(torch.rand(2, 1, 4, 4), torch.ones(1, 4, 4)), "samples must be binary"),
        (lambda: bernoulli_samples(torch.tensor([1.5]), 3), r"prob .*\[0, 1\]"),
        (lambda: bernoulli_samples(torch.tensor([0.5]), 0), "positive int"),
    ],
)
def test_bad_inputs_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_plot_writes_png(tmp_path):
    gen = torch.Generator().manual_seed(3)
    target = (torch.rand(2, 1, 16, 16, generator=gen) > 0.8).long()
    soft = (0.6 * target + 0.4 * torch.rand(2, 1, 16, 16, generator=gen)).clamp(0, 1)
    curves = {"flow": precision_recall_curve(soft, target), "blurry": precision_recall_curve(soft.sqrt(), target)}
    points = {name: sample_pr_points(bernoulli_samples(soft, 20, gen), target) for name in ("flow", "human")}
    out = plot_precision_recall(curves, points, tmp_path / "figs" / "pr.png")
    assert out == tmp_path / "figs" / "pr.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 1000
    assert isinstance(curves["flow"], PRCurve)

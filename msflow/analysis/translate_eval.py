"""How well CAFLOW translates held-out pairs (paper 002, Tables 1-3): a random sample against the
best of ``m`` by conditional likelihood, and how often the ground truth outranks the samples.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from msflow.analysis.ranking import TEMPERATURES, draw_and_score, evaluating, score
from msflow.data.pairs import PairedDataset
from msflow.errors import ConfigError
from msflow.metrics.fidelity import psnr, rmse, ssim


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
    with evaluating(model):
        for i in tqdm(indices, desc="pairs", leave=False, disable=not progress):
            truth, cond = dataset.images[i], dataset.conds[i]
            gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
            samples, bpd, padded = draw_and_score(model, cond[None], m, temperature, gen, seed)
            gt = score(model, truth[None], padded, seed)[0]
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


__all__ = ["TranslationResult", "evaluate_translation", "fidelity", "format_translation_table"]

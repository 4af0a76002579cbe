r"""Bits/dim of test images with shuffled patches (paper 000, section 6.1, Figure 5).

Each test image is cut into non-overlapping ``k x k`` patches that are then randomly
permuted (:func:`msflow.data.ood_sets.shuffle_patches`); ``k = 1`` shuffles pixels and ``k`` equal
to the image side leaves the image alone. Kirichenko et al. (2020) argue that flows model local
appearance rather than semantics: if so, large shuffled patches barely change bits/dim, though
the images no longer show anything.

Example:
    >>> import torch
    >>> fake_bpd = lambda x: (x[..., :, 1:].double() - x[..., :, :-1].double()).abs().mean((1, 2, 3)) / 32
    >>> images = torch.arange(64, dtype=torch.uint8).reshape(1, 1, 8, 8).repeat(4, 1, 1, 1)
    >>> rows = shuffle_patch_bpd(fake_bpd, images, [1, 8])
    >>> [r.k for r in rows], rows[0].bpd > rows[1].bpd  # shuffling pixels breaks the smooth ramp
    ([1, 8], True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from msflow._io import atomic_write
from msflow.analysis.ood import BpdFn
from msflow.data.ood_sets import check_patch_sizes, shuffle_patches
from msflow.metrics.bpd import mean_and_stderr
from msflow.viz import figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class PatchRow:
    """Bits/dim of the test images with their ``k x k`` patches shuffled, and one example image."""

    k: int
    bpd: float
    bpd_stderr: float
    n: int
    example: Tensor

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (no image)."""
        return {"k": self.k, "bpd": self.bpd, "bpd_stderr": self.bpd_stderr, "n": self.n}


def shuffle_patch_bpd(bpd_fn: BpdFn, images: Tensor, ks: Sequence[int], seed: int = 0) -> list[PatchRow]:
    """Mean bits/dim of ``images`` with their ``k x k`` patches shuffled, for each ``k`` (sorted).

    Args:
        bpd_fn: bits/dim of ``uint8`` images ``(N, C, H, W)`` (see :data:`msflow.analysis.ood.BpdFn`).
        images: the in-distribution test images.
        ks: patch sizes; each must divide ``H`` and ``W``.
        seed: seeds the permutations (a fresh generator per ``k``).

    Raises:
        ShapeError: a ``k`` that does not divide the image size (the message lists the valid ones).
    """
    check_patch_sizes(ks, *images.shape[-2:])
    rows = []
    for k in sorted(set(ks)):
        shuffled = shuffle_patches(images, k, torch.Generator().manual_seed(seed))
        mean, stderr = mean_and_stderr(bpd_fn(shuffled))
        rows.append(PatchRow(k, mean, stderr, len(images), shuffled[0]))
    return rows


def shuffle_patch_table(rows: Sequence[PatchRow]) -> str:
    """A Markdown table of patch size, patches per image and bits/dim.

    Example:
        >>> import torch
        >>> print(shuffle_patch_table([PatchRow(2, 1.5, 0.01, 10, torch.zeros(1, 4, 4, dtype=torch.uint8))]))
        | patch k x k | patches per image | bits/dim |
        |---|---|---|
        | 2x2 | 4 | 1.5000 +- 0.0100 |
    """
    lines = ["| patch k x k | patches per image | bits/dim |", "|---|---|---|"]
    for r in rows:
        h, w = r.example.shape[-2:]
        lines.append(f"| {r.k}x{r.k} | {(h // r.k) * (w // r.k)} | {r.bpd:.4f} +- {r.bpd_stderr:.4f} |")
    return "\n".join(lines)


def shuffle_patch_figure(rows: Sequence[PatchRow], path: str | Path, title: str | None = None) -> Figure:
    """Figure 5 of paper 000: one example per patch size (top) and bits/dim against ``k`` (bottom).

    Writes a PNG (atomically) and returns the figure (Agg canvas, no pyplot state).
    """
    fig = figure("plotting shuffled patches", figsize=(max(4.0, 1.1 * len(rows)), 4.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 2.2])
    for ax, r in zip(top.subplots(1, len(rows), squeeze=False)[0], rows, strict=True):
        image = r.example.permute(1, 2, 0).numpy()
        ax.imshow(image[..., 0] if image.shape[2] == 1 else image, cmap="gray", vmin=0, vmax=255)
        ax.set(xticks=[], yticks=[])
        ax.set_title(f"{r.k}x{r.k}", fontsize=8)
    ax = bottom.subplots()
    ks = [r.k for r in rows]
    ax.errorbar(ks, [r.bpd for r in rows], yerr=[r.bpd_stderr for r in rows], marker="o", capsize=3)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("shuffled patch size k (k = image side: unshuffled)")
    ax.set_ylabel("bits/dim")
    if title:
        ax.set_title(title, fontsize=9)
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return fig

r"""CAFLOW inference (paper 002): samples at the paper's temperatures, the best of them by their likelihood.

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
order reflects the images, not the noise;
:func:`~msflow.analysis.translate_eval.evaluate_translation` scores the ground truth with that
same ``u`` to ask how often it beats the samples (the paper: "CAFLOW typically
assigns to the ground-truth image higher conditional log-likelihood than any generated
sample").

The flows are convolutional: a condition of any size is padded at the right and bottom
(edge pixels repeated) to sides the squeezes take, samples are drawn and scored at the padded
size, and cropped back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from msflow.analysis.cond_superres import input_multiple, pad_to_multiple, sample_padded
from msflow.core import evaluation_context
from msflow.errors import ConfigError, DataError, ShapeError

TEMPERATURES: dict[str, float] = {"superres": 0.5, "colorize": 0.85, "inpaint": 0.5, "sketch": 0.8}
"""The paper's sampling temperature per task: sections 5.1-5.3 and Figure 16 (edges2shoes)."""

MAX_BATCH_PIXELS = 2**21
"""Most target pixels drawn or scored in one batch, so a photo's memory stays bounded."""


def can_rank(model: nn.Module) -> bool:
    """Whether ``model`` scores candidates with common dequantization noise (a CAFLOW model)."""
    return model.ranks_candidates


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode under :func:`~msflow.core.evaluation_context`; its mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with evaluation_context(model):
            yield
    finally:
        model.train(was_training)


def score(model: nn.Module, images: Tensor, cond: Tensor, score_seed: int) -> Tensor:
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


def check_condition(model: nn.Module, cond: Tensor) -> None:
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


def draw_and_score(
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
    check_condition(model, cond)
    padded = pad_to_multiple(cond, input_multiple(model)).to(next(model.parameters()).device)
    samples = sample_padded(model, padded, m, temperature, generator, MAX_BATCH_PIXELS)
    return samples, score(model, samples, padded, score_seed), padded


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
    with evaluating(model):
        samples, bpd, _ = draw_and_score(model, cond, m, temperature, generator, score_seed)
    order = torch.argsort(bpd, stable=True)[:n]
    return samples[order][..., : h * s, : w * s], bpd[order]


__all__ = [
    "MAX_BATCH_PIXELS",
    "TEMPERATURES",
    "best_of",
    "can_rank",
    "check_condition",
    "draw_and_score",
    "evaluating",
    "score",
]

r"""Out-of-distribution scores from bits/dim, and their AUROC.

Every score is oriented so that **higher means more in-distribution**:

.. math::

    s_{\text{bpd}}(x) = -\mathrm{bpd}(x), \qquad
    S(x) = -\bigl(\mathrm{bpd}(x) - L(x)\bigr), \qquad
    s_{\text{typ}}(x) = -\bigl|\mathrm{bpd}(x) - \widehat{\mathrm{bpd}}_{\text{train}}\bigr|.

``S`` is the complexity-corrected score of Serra et al. (2020), with ``L(x)`` the lossless code
length of :func:`~msflow.metrics.complexity.complexity` in bits/dim. ``s_typ`` is the typicality
test of Nalisnick et al. (2019) for batches of one image: the typical set of the model holds the
images whose bits/dim is near the entropy rate, estimated by the mean training bits/dim.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _flat(scores: Tensor | np.ndarray | list[float]) -> np.ndarray:
    values = np.asarray(scores.detach().cpu() if isinstance(scores, Tensor) else scores, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("AUROC needs at least one score in each set")
    if not np.isfinite(values).all():
        raise ValueError("AUROC got a non-finite score; remove NaN/inf values first")
    return values


def auroc(scores_in: Tensor | np.ndarray | list[float], scores_out: Tensor | np.ndarray | list[float]) -> float:
    r"""Area under the ROC curve of separating in- from out-of-distribution by a score.

    In-distribution is the positive class and a higher score means "in". By the Mann-Whitney
    identity the area is the probability that a random in-distribution score beats a random OOD
    one, ties counting one half:

    .. math::

        \mathrm{AUROC} = \frac{1}{n m} \sum_{i=1}^{n} \sum_{j=1}^{m}
        \Bigl([a_i > b_j] + \tfrac12 [a_i = b_j]\Bigr)
        = \frac{R_a - n(n+1)/2}{n m},

    with ``R_a`` the sum of the mid-ranks of the ``a`` among all ``n + m`` scores (computed that
    way, in ``O((n + m) log(n + m))``). 1 separates perfectly, 0.5 is chance, and below 0.5 the
    score ranks OOD images as *more* in-distribution.

    Example:
        >>> auroc([3.0, 2.0], [1.0, 2.0])  # pairs: 3>1, 3>2, 2>1, 2=2 -> (1 + 1 + 1 + 0.5) / 4
        0.875
        >>> auroc([0.0], [1.0])
        0.0
    """
    a, b = _flat(scores_in), _flat(scores_out)
    _, inverse, counts = np.unique(np.concatenate([a, b]), return_inverse=True, return_counts=True)
    # Tied values share the mean of the ranks they occupy.
    mid_rank = np.cumsum(counts) - (counts - 1) / 2
    rank_sum = mid_rank[inverse[: len(a)]].sum()
    return float((rank_sum - len(a) * (len(a) + 1) / 2) / (len(a) * len(b)))


def likelihood_score(bpd: Tensor) -> Tensor:
    """``-bpd(x)``: the plain likelihood score.

    Example:
        >>> import torch
        >>> likelihood_score(torch.tensor([1.5])).tolist()
        [-1.5]
    """
    return -bpd


def complexity_score(bpd: Tensor, complexity: Tensor) -> Tensor:
    r"""Serra et al.'s ``S(x) = -(bpd(x) - L(x)) = L(x) - bpd(x)``, both in bits/dim.

    Example:
        >>> import torch
        >>> complexity_score(torch.tensor([1.5, 1.5]), torch.tensor([3.0, 1.0])).tolist()
        [1.5, -0.5]
    """
    return complexity.to(bpd.dtype) - bpd


def typicality_score(bpd: Tensor, typical_bpd: float) -> Tensor:
    r"""Nalisnick et al.'s typicality test for single images: ``-|bpd(x) - typical_bpd|``.

    ``typical_bpd`` estimates the model's entropy rate: the mean bits/dim of training images.

    Example:
        >>> import torch
        >>> typicality_score(torch.tensor([0.5, 1.0, 2.0]), typical_bpd=1.0).tolist()
        [-0.5, -0.0, -1.0]
    """
    return -(bpd - typical_bpd).abs()


def ood_scores(bpd: Tensor, complexity: Tensor, typical_bpd: float) -> dict[str, Tensor]:
    """The three scores of a set as ``{"-bpd": ..., "S": ..., "typicality": ...}``.

    Example:
        >>> import torch
        >>> s = ood_scores(torch.tensor([1.0]), torch.tensor([2.0]), typical_bpd=1.5)
        >>> {k: v.tolist() for k, v in s.items()}
        {'-bpd': [-1.0], 'S': [1.0], 'typicality': [-0.5]}
    """
    bpd = torch.as_tensor(bpd, dtype=torch.float64)
    return {
        "-bpd": likelihood_score(bpd),
        "S": complexity_score(bpd, complexity),
        "typicality": typicality_score(bpd, typical_bpd),
    }

"""Invertible 1x1 convolution (Glow), plain or LU-decomposed, and its strided k x k form (Liao & He)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msflow.core import InvertibleModule, Shape
from msflow.errors import ShapeError


def random_rotation(n: int) -> Tensor:
    """A random orthogonal ``n x n`` matrix (QR of a Gaussian), so the block starts volume-preserving."""
    q, r = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


class InvConv1x1(InvertibleModule):
    r"""Channel mixing ``z = W x`` at every pixel.

    .. math::

        \log|\det \partial z / \partial x| = H W \log|\det W|

    With ``lu=True`` (Glow's LU parametrisation) ``W = P L (U + \mathrm{diag}(\sigma e^{s}))``
    with a fixed permutation ``P``, unit lower-triangular ``L``, strictly upper ``U`` and fixed
    signs ``sigma``, so ``log|det W| = sum(s)`` costs O(C) instead of O(C^3).

    Args:
        num_channels: number of channels ``C``.
        lu: use the LU parametrisation.
        kappa: start from ``kappa * I`` (Liao & He's volume-controlled initialisation) instead
            of a random rotation.

    Example:
        >>> import torch
        >>> conv = InvConv1x1(4)
        >>> x = torch.randn(2, 4, 3, 3)
        >>> z, ld = conv(x)
        >>> bool(torch.allclose(conv.inverse(z)[0], x, atol=1e-5))
        True
    """

    def __init__(self, num_channels: int, lu: bool = True, kappa: float | None = None) -> None:
        super().__init__()
        if kappa is not None and not kappa > 0:
            raise ValueError(f"kappa must be positive, got {kappa}")
        self.num_channels = num_channels
        self.lu = lu
        self._weight_cache: dict[str, tuple[tuple, tuple[Tensor, Tensor]]] = {}
        w = random_rotation(num_channels) if kappa is None else kappa * torch.eye(num_channels)
        if not lu:
            self.weight = nn.Parameter(w)
            return
        p, lower, upper = torch.linalg.lu(w)
        diag = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign", torch.sign(diag))
        self.register_buffer("lower_mask", torch.tril(torch.ones_like(w), -1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_diag = nn.Parameter(diag.abs().log())

    def _cached(self, kind: str, compute: Callable[[], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """``compute()``, reused while the weights are unchanged and no gradient is being recorded.

        Evaluation and sampling call the block once per batch with the same weights; assembling
        ``W`` (and inverting it in float64 for sampling) each time is wasted work, and on a GPU
        a dozen small kernel launches per block. The key holds the parameters' storage and
        version counters, which every in-place update (optimizer step, ``load_state_dict``,
        ``.to()``) changes, so a stale ``W`` is never used. (Writing through ``p.data`` bypasses
        version counters, as it bypasses autograd: assign parameters with ``p.copy_`` instead.)
        """
        params = tuple(self.parameters())
        if torch.is_grad_enabled() or params[0].is_inference():
            return compute()  # inference tensors (a model built in inference mode) have no versions
        key = (kind, *((p.data_ptr(), p._version, p.dtype) for p in params))
        hit = self._weight_cache.get(kind)
        if hit is None or hit[0] != key:
            hit = (key, compute())
            self._weight_cache[kind] = hit
        return hit[1]

    def weight_and_logabsdet(self) -> tuple[Tensor, Tensor]:
        """The matrix ``W`` and ``log|det W|`` (cached while no gradient is recorded)."""
        return self._cached("forward", self._weight_and_logabsdet)

    def inverse_weight_and_logabsdet(self) -> tuple[Tensor, Tensor]:
        """``W^{-1}`` (inverted in float64) and ``log|det W|`` (cached while no gradient is recorded)."""

        def compute() -> tuple[Tensor, Tensor]:
            w, logabsdet = self._weight_and_logabsdet()
            return torch.linalg.inv(w.to(torch.float64)), logabsdet

        return self._cached("inverse", compute)

    def _weight_and_logabsdet(self) -> tuple[Tensor, Tensor]:
        if not self.lu:
            return self.weight, torch.linalg.slogdet(self.weight)[1]
        eye = torch.eye(self.num_channels, dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign * self.log_diag.exp())
        return self.perm @ lower @ upper, self.log_diag.sum()

    def _mix(self, x: Tensor, w: Tensor, logabsdet: Tensor, sign: float) -> tuple[Tensor, Tensor]:
        z = F.conv2d(x, w.to(x.dtype)[:, :, None, None])
        logdet = (sign * logabsdet * (x.shape[2] * x.shape[3])).to(x.dtype) * x.new_ones(x.shape[0])
        return z, logdet

    def forward(self, x: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        w, logabsdet = self.weight_and_logabsdet()
        return self._mix(x, w, logabsdet, 1.0)

    def inverse(self, z: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        w_inv, logabsdet = self.inverse_weight_and_logabsdet()
        return self._mix(z, w_inv, logabsdet, -1.0)


class StridedInvConv(InvConv1x1):
    r"""Strided ``k x k`` invertible convolution: a squeeze and a 1x1 conv fused (Liao & He, sec. 4.1).

    Each ``k x k`` patch of the ``C``-channel input becomes one output pixel with ``k^2 C``
    channels, mixed by an invertible ``k^2 C x k^2 C`` matrix ``W``:

    .. math::

        z = W \cdot \mathrm{squeeze}_k(x), \qquad
        \log|\det \partial z / \partial x| = \frac{H W}{k^2} \log|\det W|

    Input channel ``c`` at patch offset ``(i, j)`` is column ``c k^2 + i k + j`` of ``W``, the
    order of :class:`~msflow.transforms.Squeeze`, so ``W = I`` is exactly a squeeze. The
    inverse is a 1x1 conv with ``W^{-1}`` followed by the depth-to-space shuffle.

    Args:
        num_channels: input channels ``C``.
        k: patch size and stride; ``k = 1`` is the plain 1x1 convolution.
        kappa: ``W`` starts as ``kappa * I`` (the paper's blockwise volume control); ``None``
            starts from a random rotation as in Glow.
        lu: use the LU parametrisation.

    Example:
        >>> import torch
        >>> conv = StridedInvConv(3, k=2, kappa=1.0)
        >>> x = torch.randn(2, 3, 4, 6)
        >>> z, ld = conv(x)
        >>> z.shape, ld.tolist()
        (torch.Size([2, 12, 2, 3]), [0.0, 0.0])
        >>> bool(torch.allclose(conv.inverse(z)[0], x, atol=1e-6))
        True
    """

    def __init__(self, num_channels: int, k: int = 2, kappa: float | None = 1.0, lu: bool = True) -> None:
        if k < 1:
            raise ValueError(f"the stride k must be >= 1, got {k}")
        super().__init__(k * k * num_channels, lu=lu, kappa=kappa)
        self.in_channels = num_channels
        self.k = k

    def forward(self, x: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        w, logabsdet = self.weight_and_logabsdet()
        kernel = w.to(x.dtype).reshape(self.num_channels, self.in_channels, self.k, self.k)
        z = F.conv2d(x, kernel, stride=self.k)
        logdet = (logabsdet * (z.shape[2] * z.shape[3])).to(x.dtype) * x.new_ones(x.shape[0])
        return z, logdet

    def inverse(self, z: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        w_inv, logabsdet = self.inverse_weight_and_logabsdet()
        x, logdet = self._mix(z, w_inv, logabsdet, -1.0)
        return F.pixel_shuffle(x, self.k), logdet

    def output_shape(self, in_shape: Shape) -> Shape:
        c, h, w = in_shape
        k = self.k
        if c != self.in_channels:
            raise ShapeError(f"expects {self.in_channels} channels, got {c}")
        if h % k or w % k:
            raise ShapeError(f"{h}x{w} is not divisible by the stride {k}; pad to {-(-h // k) * k}x{-(-w // k) * k}")
        return (k * k * c, h // k, w // k)

    def input_shape(self, out_shape: Shape) -> Shape:
        c, h, w = out_shape
        return (c // (self.k * self.k), h * self.k, w * self.k)

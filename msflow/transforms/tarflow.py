r"""TarFlow's block: an autoregressive affine flow over a sequence of image patches.

An image ``(C, H, W)`` is cut into ``T = HW / p^2`` patches of ``p x p`` pixels, tokens
``x_0 .. x_{T-1}`` of ``C p^2`` features each, in raster order (reversed when ``reverse``).
Each token is standardised by a shift and log-scale that a causal Transformer
(:class:`~msflow.nn.transformer.CausalTransformer`) computes from the tokens before it:

.. math::

    z_i = \big(x_i - \mu_i(x_{<i}, c)\big)\, e^{-a_i(x_{<i}, c)}, \qquad
    \log\left|\det \frac{\partial z}{\partial x}\right| = -\sum_i \sum_f a_{i,f}

The Jacobian is triangular (token ``i``'s parameters do not depend on ``x_i``), so the log-det
is exact. The density direction takes one masked Transformer pass over all tokens. The inverse
is sequential, ``x_i = z_i e^{a_i} + \mu_i`` for ``i = 0, 1, ...`` with a key/value cache
(``method="sequential"``), or a Jacobi fixed-point iteration that updates all tokens in
parallel, ``x^{(k+1)} = z e^{a(x^{(k)})} + \mu(x^{(k)})``, until no token moves by more than
``tol`` (``method="jacobi"``); it is exact after at most ``T`` sweeps, since sweep ``k`` fixes
token ``k - 1`` for good.

Unlike the reference code the first token is transformed too: a learned start token stands in
front of the sequence, so ``mu_0, a_0`` are learned constants (functions of the condition).

Conditioning (``cond``): image features ``(B, cond_channels, H, W)`` at the block's resolution,
patchified alike, each patch conditioning the token it covers; or class labels ``(B,)``
(``-1``: the null class for classifier-free guidance). The inverse can guide:
``theta = (1 + w) theta(c) - w theta(c_null)`` for ``theta = (mu, a)``.

Precision: the Transformer runs under the subnet policy (bf16 autocast in bf16-mixed training);
shift, scale, log-det and the affine arithmetic are done in the input's dtype.

Example:
    >>> import torch
    >>> block = TarFlowBlock((1, 4, 4), patch=2, width=16, layers=1)
    >>> _ = torch.nn.init.normal_(block.net.proj_out.weight, std=0.1)
    >>> x = torch.randn(2, 1, 4, 4)
    >>> z, logdet = block(x)
    >>> x_back, _ = block.inverse(z)
    >>> x_jacobi, _ = block.inverse(z, method="jacobi", tol=1e-7)
    >>> bool(torch.allclose(x, x_back, atol=1e-5)), bool(torch.allclose(x, x_jacobi, atol=1e-5))
    (True, True)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from msflow.core import InvertibleModule, Shape, require_cond
from msflow.errors import ShapeError
from msflow.nn.subnets import subnet_autocast
from msflow.nn.transformer import CausalTransformer, default_heads

INVERSE_METHODS = ("sequential", "jacobi")
"""How :meth:`TarFlowBlock.inverse` decodes: token by token, or by parallel fixed-point sweeps."""


def patchify(x: Tensor, p: int) -> Tensor:
    """``(B, C, H, W) -> (B, HW/p^2, C p^2)``: ``p x p`` patches in raster order."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: Tensor, shape: Shape, p: int) -> Tensor:
    """The inverse of :func:`patchify` for images of ``shape`` ``(C, H, W)``."""
    c, h, w = shape
    b = tokens.shape[0]
    return tokens.reshape(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


class TarFlowBlock(InvertibleModule):
    """One TarFlow block over ``shape`` images; see the module docstring.

    Args:
        shape: ``(C, H, W)`` of the input; ``H`` and ``W`` must divide by ``patch``.
        patch: patch side ``p``.
        width: Transformer width.
        layers: Transformer layers.
        heads: attention heads (default: ``width / 64``, at least 1).
        cond_channels: channels of image-feature conditions (0: none).
        num_classes: classes of a class condition (0: none); not both.
        reverse: process the tokens in reverse raster order (alternate blocks do).
        expansion: MLP width over ``width``.
    """

    def __init__(
        self,
        shape: Shape,
        patch: int = 2,
        width: int = 256,
        layers: int = 4,
        heads: int | None = None,
        cond_channels: int = 0,
        num_classes: int = 0,
        reverse: bool = False,
        expansion: int = 4,
    ) -> None:
        super().__init__()
        c, h, w = shape
        if patch < 1 or h % patch or w % patch:
            raise ShapeError(
                f"a {h}x{w} image cannot be cut into {patch}x{patch} patches; pick a patch side dividing both"
            )
        if cond_channels and num_classes:
            raise ValueError("a TarFlow block takes image features or class labels as its condition, not both")
        self.shape, self.patch, self.reverse = tuple(shape), patch, reverse
        self.cond_channels, self.num_classes = cond_channels, num_classes
        features = c * patch * patch
        self.net = CausalTransformer(
            features,
            2 * features,
            width=width,
            layers=layers,
            heads=heads or default_heads(width),
            num_tokens=(h // patch) * (w // patch),
            cond_features=cond_channels * patch * patch,
            num_classes=num_classes,
            expansion=expansion,
        )

    # ------------------------------------------------------------ tokens and conditions

    def _order(self, tokens: Tensor) -> Tensor:
        return tokens.flip(1) if self.reverse else tokens

    def tokens(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> tokens ``(B, T, C p^2)`` in this block's processing order."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.shape:
            got = tuple(x.shape[1:]) if x.dim() == 4 else f"a {x.dim()}-D tensor"
            raise ShapeError(f"TarFlowBlock is built for images {self.shape}, got {got}")
        return self._order(patchify(x, self.patch))

    def image(self, tokens: Tensor) -> Tensor:
        """The inverse of :meth:`tokens`."""
        return unpatchify(self._order(tokens), self.shape, self.patch)

    def _condition(self, cond: Any) -> tuple[Tensor | None, Tensor | None]:
        """``(condition tokens, labels)`` of ``cond`` for this block's kind of condition."""
        if self.cond_channels:
            cond = require_cond(self, cond)
            if cond.dim() != 4 or cond.shape[1] != self.cond_channels or cond.shape[-2:] != self.shape[-2:]:
                want = f"(B, {self.cond_channels}, {self.shape[1]}, {self.shape[2]})"
                raise ShapeError(f"TarFlowBlock needs condition features {want}, got {tuple(cond.shape)}")
            return self._order(patchify(cond, self.patch)), None
        if self.num_classes:
            return None, require_cond(self, cond)
        return None, None

    def output_shape(self, in_shape: Shape) -> Shape:
        if tuple(in_shape) != self.shape:
            raise ShapeError(f"TarFlowBlock is built for {self.shape}, got {tuple(in_shape)}; build it for that shape")
        return self.shape

    # ------------------------------------------------------------ parameters

    def _split(self, out: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        mu, a = out.to(like.dtype).chunk(2, dim=-1)
        return mu, a

    def parameters_of(self, x_tokens: Tensor, cond: Any) -> tuple[Tensor, Tensor]:
        """``(mu, a)`` of every token from one causal pass, in ``x_tokens``' dtype."""
        cond_tokens, labels = self._condition(cond)
        with subnet_autocast(x_tokens):
            out = self.net(x_tokens, cond_tokens, labels)
        return self._split(out, x_tokens)

    def _guided(self, x_tokens: Tensor, cond: Any, guidance: float, uncond: Any) -> tuple[Tensor, Tensor]:
        mu, a = self.parameters_of(x_tokens, cond)
        if guidance == 0:
            return mu, a
        mu_u, a_u = self.parameters_of(x_tokens, uncond)
        return mu + guidance * (mu - mu_u), a + guidance * (a - a_u)

    # ------------------------------------------------------------ the two directions

    def forward(self, x: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        tokens = self.tokens(x)
        mu, a = self.parameters_of(tokens, cond)
        z = (tokens - mu) * torch.exp(-a)
        return self.image(z), -a.flatten(1).sum(1)

    def inverse(
        self,
        z: Tensor,
        cond: Any = None,
        method: str = "sequential",
        tol: float = 1e-6,
        max_sweeps: int | None = None,
        guidance: float = 0.0,
        uncond: Any = None,
        stats: dict[str, int] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Sampling direction; ``method`` ``"sequential"`` or ``"jacobi"`` (``tol`` on the largest
        change of a sweep, at most ``max_sweeps``, default ``T``). With ``guidance`` ``w != 0``,
        ``uncond`` is the null condition to guide away from. ``stats["sweeps"]`` receives the
        number of Jacobi sweeps (``T`` for sequential decoding)."""
        if method not in INVERSE_METHODS:
            raise ValueError(f"unknown inverse method {method!r}; choose one of {list(INVERSE_METHODS)}")
        if guidance and uncond is None:
            raise ValueError("guidance needs the null condition uncond=... (labels of -1 for a class condition)")
        zt = self.tokens(z)
        if method == "jacobi":
            x, a, sweeps = self._jacobi(zt, cond, tol, max_sweeps or zt.shape[1], guidance, uncond)
        else:
            x, a = self._sequential(zt, cond, guidance, uncond)
            sweeps = zt.shape[1]
        if stats is not None:
            stats["sweeps"] = stats.get("sweeps", 0) + sweeps
        return self.image(x), a.flatten(1).sum(1)

    def _jacobi(
        self, zt: Tensor, cond: Any, tol: float, max_sweeps: int, guidance: float, uncond: Any
    ) -> tuple[Tensor, Tensor, int]:
        x, sweeps, moved = zt, 0, float("inf")
        while sweeps < max_sweeps and moved > tol:
            mu, a = self._guided(x, cond, guidance, uncond)
            x_new = zt * torch.exp(a) + mu
            moved = float((x_new - x).detach().abs().max()) if x.numel() else 0.0
            x, sweeps = x_new, sweeps + 1
        return x, a, sweeps

    def _sequential(self, zt: Tensor, cond: Any, guidance: float, uncond: Any) -> tuple[Tensor, Tensor]:
        b, t, _ = zt.shape
        conds = [cond] if guidance == 0 else [cond, uncond]
        embeddings, caches = [], []
        with subnet_autocast(zt):
            for c in conds:
                cond_tokens, labels = self._condition(c)
                embeddings.append(self.net.condition(cond_tokens, labels))
                caches.append(self.net.empty_cache())
        xs, scales, prev = [], [], None
        for i in range(t):
            params = []
            for k, c in enumerate(embeddings):
                with subnet_autocast(zt):
                    out, caches[k] = self.net.step(prev, i, caches[k], c, b)
                params.append(self._split(out, zt))
            mu, a = params[0]
            if guidance:
                mu, a = mu + guidance * (mu - params[1][0]), a + guidance * (a - params[1][1])
            prev = zt[:, i : i + 1] * torch.exp(a) + mu
            xs.append(prev)
            scales.append(a)
        return torch.cat(xs, dim=1), torch.cat(scales, dim=1)

r"""A causal Transformer that predicts per-token parameters from the tokens before each one.

TarFlow (Zhai et al. 2024) computes the shift and log-scale of token ``i`` from tokens ``< i``.
:class:`CausalTransformer` does exactly that: its input sequence is a learned start token
followed by ``x_0 .. x_{T-2}``, so output ``i`` sees ``x_{<i}`` (and every condition) only:

.. math::

    o_i = f(x_{<i}, c_i, y), \qquad i = 0, \dots, T - 1

All ``T`` outputs come from one masked pass (:meth:`CausalTransformer.forward`, the density
direction); :meth:`CausalTransformer.step` computes output ``i`` from ``x_{i-1}`` alone with a
key/value cache of the earlier positions (the sequential inverse).

Conditioning enters through *adaptive layer norm* (DiT-style, token-wise): every layer norm is
followed by ``h (1 + gamma(c_i)) + beta(c_i)``, where ``c_i`` is the embedding of the condition
patch aligned with token ``i`` (image features) plus a class embedding (``-1`` is the null class of
classifier-free guidance). The modulations start at zero, so a conditional net starts as the
unconditional one.

Example:
    >>> import torch
    >>> net = CausalTransformer(4, 6, width=16, layers=1, heads=2, num_tokens=5)
    >>> x = torch.randn(2, 5, 4)
    >>> out = net(x)
    >>> out.shape
    torch.Size([2, 5, 6])
    >>> x2 = x.clone(); x2[:, 3:] += 1.0  # changing tokens 3.. leaves outputs 0..3 alone
    >>> bool(torch.allclose(net(x2)[:, :4], out[:, :4]))
    True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KVCache = list[tuple[Tensor, Tensor] | None]
"""One ``(keys, values)`` pair per layer, ``(B, heads, t, head_dim)`` each, for the positions seen."""


def attend(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    """Softmax attention ``softmax(q k^T / sqrt(d)) v``, query ``i`` seeing keys ``<= i`` when ``causal``.

    Written out rather than ``F.scaled_dot_product_attention``: for TarFlow's short sequences
    (tens to hundreds of tokens) PyTorch's fused CPU kernel spent 40 % of a training step in
    its backward alone (measured: MNIST preset, one thread, bf16), the plain form a few percent.
    """
    scores = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5)
    if causal:
        t = q.shape[-2]
        mask = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    return scores.softmax(dim=-1).to(v.dtype) @ v


class _AdaNorm(nn.Module):
    """LayerNorm followed by a zero-initialised condition modulation ``h (1 + g) + b``."""

    def __init__(self, width: int, conditioned: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=not conditioned)
        self.modulation = nn.Linear(width, 2 * width) if conditioned else None
        if self.modulation is not None:
            nn.init.zeros_(self.modulation.weight)
            nn.init.zeros_(self.modulation.bias)

    def forward(self, h: Tensor, c: Tensor | None) -> Tensor:  # noqa: D102
        h = self.norm(h)
        if self.modulation is None:
            return h
        gain, bias = self.modulation(F.silu(c)).chunk(2, dim=-1)
        return h * (1 + gain) + bias


class _Layer(nn.Module):
    """Pre-norm Transformer layer: causal self-attention, then an MLP; both residual."""

    def __init__(self, width: int, heads: int, expansion: int, conditioned: bool) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"the Transformer width {width} must divide into {heads} heads")
        self.heads = heads
        self.norm1, self.norm2 = _AdaNorm(width, conditioned), _AdaNorm(width, conditioned)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, expansion * width), nn.GELU(), nn.Linear(expansion * width, width))

    def _split(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, t, w = h.shape
        q, k, v = self.qkv(h).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        return q, k, v

    def _merge(self, a: Tensor) -> Tensor:
        b, _, t, d = a.shape
        return self.proj(a.transpose(1, 2).reshape(b, t, self.heads * d))

    def forward(self, h: Tensor, c: Tensor | None) -> Tensor:  # noqa: D102
        q, k, v = self._split(self.norm1(h, c))
        h = h + self._merge(attend(q, k, v, causal=True))
        return h + self.mlp(self.norm2(h, c))

    def step(self, h: Tensor, c: Tensor | None, cache: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple]:
        """One new position ``h`` ``(B, 1, W)`` attending to itself and the cached ones."""
        q, k, v = self._split(self.norm1(h, c))
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        h = h + self._merge(attend(q, k, v, causal=False))
        return h + self.mlp(self.norm2(h, c)), (k, v)


class CausalTransformer(nn.Module):
    """Per-token outputs from the tokens strictly before each one (see the module docstring).

    Args:
        in_features: features of each input token (``C p^2`` for ``p x p`` patches).
        out_features: features of each output (``2 C p^2``: shift and log-scale).
        width: model width.
        layers: Transformer layers.
        heads: attention heads (``width`` must divide by it).
        num_tokens: sequence length ``T`` (positions are learned).
        cond_features: features of each condition token (0: no image condition).
        num_classes: classes of a class condition (0: none); label ``-1`` is the null class.
        expansion: MLP hidden width over ``width``.

    The output layer starts at zero, so a flow using it starts as the identity.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        width: int = 256,
        layers: int = 4,
        heads: int = 4,
        num_tokens: int = 64,
        cond_features: int = 0,
        num_classes: int = 0,
        expansion: int = 4,
    ) -> None:
        super().__init__()
        self.num_tokens, self.num_classes = num_tokens, num_classes
        conditioned = cond_features > 0 or num_classes > 0
        self.proj_in = nn.Linear(in_features, width)
        self.start = nn.Parameter(torch.randn(width) * 0.02)
        self.pos = nn.Parameter(torch.randn(num_tokens, width) * 0.02)
        self.cond_in = nn.Linear(cond_features, width) if cond_features > 0 else None
        # One more row than classes: the null class (label -1) that classifier-free guidance needs.
        self.class_embed = nn.Embedding(num_classes + 1, width) if num_classes > 0 else None
        self.layers = nn.ModuleList(_Layer(width, heads, expansion, conditioned) for _ in range(layers))
        self.norm_out = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, out_features)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def condition(self, cond_tokens: Tensor | None, labels: Tensor | None) -> Tensor | None:
        """``(B, T, W)`` (or ``(B, 1, W)``) condition embeddings ``c_i``, or ``None`` unconditionally."""
        c = None
        if self.cond_in is not None:
            if cond_tokens is None:
                raise ValueError("this Transformer is conditioned on an image and needs cond tokens")
            c = self.cond_in(cond_tokens)
        if self.class_embed is not None:
            if labels is None:
                raise ValueError("this Transformer is class-conditional and needs labels (-1: the null class)")
            if labels.numel() and (int(labels.min()) < -1 or int(labels.max()) >= self.num_classes):
                raise ValueError(f"labels must lie in -1..{self.num_classes - 1}, got {labels.tolist()}")
            e = self.class_embed(labels.long().remainder(self.num_classes + 1))[:, None]  # -1 -> the last row
            c = e if c is None else c + e
        return c

    def forward(self, x: Tensor, cond_tokens: Tensor | None = None, labels: Tensor | None = None) -> Tensor:
        """``(B, T, in) -> (B, T, out)``, output ``i`` a function of ``x[:, :i]`` and the conditions."""
        b, t, _ = x.shape
        if t != self.num_tokens:
            raise ValueError(f"this Transformer is built for {self.num_tokens} tokens, got {t}")
        c = self.condition(cond_tokens, labels)
        start = self.start.to(x.dtype).expand(b, 1, -1)
        h = torch.cat([start, self.proj_in(x[:, :-1])], dim=1) + self.pos
        if c is not None:
            h = h + c
        for layer in self.layers:
            h = layer(h, c)
        return self.proj_out(self.norm_out(h))

    def step(
        self, x_prev: Tensor | None, i: int, cache: KVCache, c: Tensor | None, batch: int
    ) -> tuple[Tensor, KVCache]:
        """Output ``i`` ``(batch, 1, out)`` from token ``i - 1`` ``(batch, 1, in)`` (``None`` for
        ``i = 0``) and the cache of positions ``< i``; ``c`` is :meth:`condition`'s embedding.
        Returns the output and the cache extended by position ``i``."""
        h = self.start.expand(batch, 1, -1) if x_prev is None else self.proj_in(x_prev)
        h = h + self.pos[i]
        ci = None if c is None else c[:, i : i + 1] if c.shape[1] > 1 else c
        if ci is not None:
            h = h + ci
        new_cache: KVCache = []
        for layer, past in zip(self.layers, cache, strict=True):
            h, kv = layer.step(h, ci, past)
            new_cache.append(kv)
        return self.proj_out(self.norm_out(h)), new_cache

    def empty_cache(self) -> KVCache:
        """A cache with no positions yet, for :meth:`step` at ``i = 0``."""
        return [None] * len(self.layers)


def default_heads(width: int, head_dim: int = 64) -> int:
    """Heads of ``head_dim`` channels for ``width`` (at least one; ``width`` must divide by it)."""
    heads = max(1, width // head_dim)
    return heads if width % heads == 0 else math.gcd(width, heads)

"""Coupling networks and the precision policy for every subnet.

Subnets compute the *parameters* of an invertible map (shift, scale, prior mean); they never
need to be inverted, so they may run in bfloat16 while the invertible arithmetic stays float32
(DESIGN.md section 7). :func:`run_subnet` is the one place that applies that policy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

SubnetFactory = Callable[[int, int], nn.Module]
"""``factory(in_channels, out_channels) -> nn.Module`` mapping (B, in, H, W) to (B, out, H, W)."""

PRECISIONS = {"float32": None, "bf16-mixed": torch.bfloat16}
_subnet_dtype: torch.dtype | None = None


@contextlib.contextmanager
def subnet_precision(precision: str) -> Iterator[None]:
    """Run every subnet inside the block under ``precision`` (``"float32"`` or ``"bf16-mixed"``).

    Example:
        >>> with subnet_precision("bf16-mixed"):
        ...     pass  # couplings here run their networks under bf16 autocast
    """
    global _subnet_dtype
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {sorted(PRECISIONS)}")
    previous, _subnet_dtype = _subnet_dtype, PRECISIONS[precision]
    try:
        yield
    finally:
        _subnet_dtype = previous


def run_subnet(net: nn.Module, inp: Tensor) -> Any:
    """Apply ``net`` under the active subnet precision; the result has ``inp``'s dtype.

    The output is cast back so that the invertible arithmetic that follows is done in full
    precision; the inverse recomputes the same network output, so the block stays exactly
    invertible for the function it computes. A network returning a list (a condition encoder's
    per-level features) has each entry cast back.
    """
    if _subnet_dtype is None or inp.dtype == torch.float64:
        return net(inp)
    with subnet_autocast(inp):
        out = net(inp)
    if isinstance(out, list | tuple):
        return [o.to(inp.dtype) for o in out]
    return out.to(inp.dtype)


def subnet_autocast(inp: Tensor) -> contextlib.AbstractContextManager:
    """The autocast context :func:`run_subnet` runs a network in, for an input like ``inp``: bf16
    autocast under ``subnet_precision("bf16-mixed")``, else (and always for float64) a no-op. For
    networks whose outputs are more than tensors (a Transformer's key/value cache); cast the
    results that feed invertible arithmetic back to ``inp.dtype`` yourself."""
    if _subnet_dtype is None or inp.dtype == torch.float64:
        return contextlib.nullcontext()
    return torch.autocast(device_type=inp.device.type, dtype=_subnet_dtype)


class ZeroConv2d(nn.Conv2d):
    """A convolution initialised to output zeros, so the enclosing block starts as the identity."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


def conv_subnet(hidden: int = 512, kernel_size: int = 3) -> SubnetFactory:
    """Glow's coupling network: conv k x k -> ReLU -> conv 1x1 -> ReLU -> zero-init conv k x k.

    Args:
        hidden: hidden channels.
        kernel_size: size of the first and last convolutions.

    Example:
        >>> import torch
        >>> net = conv_subnet(hidden=16)(2, 4)
        >>> net(torch.randn(1, 2, 5, 5)).abs().max().item()
        0.0
    """

    def factory(in_channels: int, out_channels: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size, padding=kernel_size // 2),
            # In place: a convolution's backward does not need its output, so the ReLU may
            # overwrite it (one activation-sized allocation less per ReLU; ~2 % per training step).
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(inplace=True),
            ZeroConv2d(hidden, out_channels, kernel_size),
        )

    return factory


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation gate (Hu et al. 2018): ``x * sigmoid(MLP(mean over pixels of x))``."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        inner = max(1, channels // reduction)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, inner, 1),
            nn.ReLU(),
            nn.Conv2d(inner, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return x * self.gate(x)


class _GatedBottleneck(nn.Module):
    """Residual bottleneck ``x + SE(conv1x1 . conv3x3 . conv1x1 (x))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(1, channels // 2)
        self.body = nn.Sequential(
            nn.Conv2d(channels, inner, 1),
            nn.ReLU(),
            nn.Conv2d(inner, inner, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(inner, channels, 1),
            ChannelAttention(channels),
        )

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return x + self.body(x)


def resnet_subnet(hidden: int = 128) -> SubnetFactory:
    """Liao & He's coupling ResNet (appendix C) with channel attention.

    conv 3x3 -> residual bottleneck (1x1, 3x3, 1x1) gated by channel attention -> conv 1x1 ->
    channel attention -> zero-initialised conv 1x1.

    Example:
        >>> import torch
        >>> net = resnet_subnet(hidden=8)(2, 4)
        >>> net(torch.randn(1, 2, 5, 5)).abs().max().item()
        0.0
    """

    def factory(in_channels: int, out_channels: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.ReLU(),
            _GatedBottleneck(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            ChannelAttention(hidden),
            ZeroConv2d(hidden, out_channels, 1),
        )

    return factory


def instance_norm_subnet(hidden: int = 32) -> SubnetFactory:
    """Winkler et al.'s segmentation coupling net (Table 7): conv 3x3 -> InstanceNorm -> ReLU -> zero-init conv 3x3.

    Instance normalisation lives here, inside the network that computes a coupling's shift:
    normalising the flow's own activations per image would discard each image's mean and scale,
    which no invertible map may do.

    Example:
        >>> import torch
        >>> net = instance_norm_subnet(hidden=8)(2, 2)
        >>> net(torch.randn(1, 2, 4, 4)).abs().max().item()
        0.0
    """

    def factory(in_channels: int, out_channels: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.InstanceNorm2d(hidden, affine=True),
            nn.ReLU(),
            ZeroConv2d(hidden, out_channels, 3),
        )

    return factory


SUBNETS: dict[str, Callable[[int], SubnetFactory]] = {
    "convnet": conv_subnet,
    "resnet": resnet_subnet,
    "instancenorm": instance_norm_subnet,
}
"""Coupling-network families by name; each maps ``hidden`` to a :data:`SubnetFactory`."""

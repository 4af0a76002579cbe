"""Condition encoders: a condition image in, one feature map per flow level out.

A Glow-style multi-scale flow runs its level ``i`` (0 = finest) at the target resolution divided
by ``2**(i + 1)``. The encoders here run once per call and return ``[h_0, ..., h_{L-1}]`` fine to
coarse, each at its level's resolution, so no block ever has to resize a raw condition
(DESIGN.md section 4). None of them is inverted, so they are free to be any network.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import gcd

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CONDITIONERS", "RRDB", "RRDBNet", "ResidualDenseBlock", "SRConditioner", "VGGConditioner"]


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


def _check_image(x: Tensor, in_channels: int, multiple: tuple[int, int], fix: str) -> None:
    """Raise a ValueError naming the offending sizes unless ``x`` is (B, in_channels, h, w) with h, w fitting."""
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(f"expected a (B, {in_channels}, h, w) image, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % multiple[0] or w % multiple[1]:
        raise ValueError(f"{fix} (got h x w = {h} x {w})")


class ResidualDenseBlock(nn.Module):
    r"""ESRGAN's residual dense block (Wang et al. 2018).

    With :math:`x_0 = x` and :math:`x_k = \mathrm{lrelu}_{0.2}(\mathrm{conv}_k([x_0, \dots, x_{k-1}]))`
    for :math:`k = 1..4` (each a 3x3 conv to ``growth`` channels), the output is
    :math:`x + 0.2\,\mathrm{conv}_5([x_0, \dots, x_4])`, with :math:`\mathrm{conv}_5` back to
    ``channels``. Shape (B, channels, h, w) -> (B, channels, h, w).

    Example:
        >>> import torch
        >>> ResidualDenseBlock(8, growth=4)(torch.randn(2, 8, 5, 5)).shape
        torch.Size([2, 8, 5, 5])
    """

    def __init__(self, channels: int, growth: int = 32) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_conv3x3(channels + k * growth, growth) for k in range(4))
        self.convs.append(_conv3x3(channels + 4 * growth, channels))
        self.act = nn.LeakyReLU(0.2)
        # ESRGAN's init: each block starts close to the identity, so a 48-block-deep stack keeps
        # its activations at the input's scale instead of growing with depth.
        for conv in self.convs:
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        features = [x]
        for conv in self.convs[:-1]:
            features.append(self.act(conv(torch.cat(features, dim=1))))
        return x + 0.2 * self.convs[-1](torch.cat(features, dim=1))


class RRDB(nn.Module):
    r"""Residual-in-residual dense block: :math:`x + 0.2\,D_3(D_2(D_1(x)))` with :math:`D_j` a
    :class:`ResidualDenseBlock`. Shape (B, channels, h, w) -> (B, channels, h, w).

    Example:
        >>> import torch
        >>> RRDB(8, growth=4)(torch.randn(1, 8, 3, 3)).shape
        torch.Size([1, 8, 3, 3])
    """

    def __init__(self, channels: int, growth: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(*(ResidualDenseBlock(channels, growth) for _ in range(3)))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return x + 0.2 * self.body(x)


class RRDBNet(nn.Module):
    r"""ESRGAN's feature trunk without its upsampler: :math:`f = c_0(x)`, output
    :math:`f + c_t(\mathrm{RRDB}^{\circ\,\mathrm{blocks}}(f))` with 3x3 convs :math:`c_0`
    (``in_channels -> features``) and :math:`c_t` (``features -> features``).

    Shape (B, in_channels, h, w) -> (B, features, h, w). Winkler et al. (Table 8) use 16 blocks,
    128 features, growth 32 (growth 55 for their parameter-matched factorized baseline).

    Example:
        >>> import torch
        >>> RRDBNet(3, features=8, blocks=1, growth=4)(torch.randn(1, 3, 4, 6)).shape
        torch.Size([1, 8, 4, 6])
    """

    def __init__(self, in_channels: int, features: int = 128, blocks: int = 16, growth: int = 32) -> None:
        super().__init__()
        self.head = _conv3x3(in_channels, features)
        self.body = nn.Sequential(*(RRDB(features, growth) for _ in range(blocks)))
        self.trunk = _conv3x3(features, features)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        first = self.head(x)
        return first + self.trunk(self.body(first))


class SRConditioner(nn.Module):
    r"""Super-resolution condition encoder (Winkler et al. 2020, section 5.1).

    For a low-resolution image of size h x w and the target size :math:`H = \mathrm{scale}\,h`,
    :math:`W = \mathrm{scale}\,w`: :math:`u = \mathrm{bilinear}_{H \times W}(\mathrm{RRDBNet}(x))`,
    :math:`h_0 = s_0(u)`, :math:`h_i = s_i(h_{i-1})` with :math:`s_i` linear 2x2 stride-2 convs
    (the flow's subnets supply the nonlinearity). ``forward`` returns ``[h_0, ..., h_{L-1}]`` with
    :math:`h_i` of shape (B, features, H / 2^{i+1}, W / 2^{i+1}); H and W must be divisible by
    :math:`2^L`.

    Args:
        in_channels: channels of the low-resolution image.
        scale: integer upscaling factor from the condition to the target.
        num_levels: number of flow levels L.
        features, blocks, growth: the :class:`RRDBNet`'s width, depth and dense growth.

    Example:
        >>> import torch
        >>> net = SRConditioner(scale=2, num_levels=2, features=8, blocks=1, growth=4)
        >>> [tuple(h.shape) for h in net(torch.randn(1, 3, 4, 6))]
        [(1, 8, 4, 6), (1, 8, 2, 3)]
        >>> net.level_channels
        [8, 8]
    """

    def __init__(
        self,
        in_channels: int = 3,
        scale: int = 2,
        num_levels: int = 2,
        features: int = 128,
        blocks: int = 16,
        growth: int = 32,
    ) -> None:
        super().__init__()
        if scale < 1 or num_levels < 1:
            raise ValueError(f"need scale >= 1 and num_levels >= 1, got scale={scale}, num_levels={num_levels}")
        self.in_channels, self.scale, self.num_levels = in_channels, scale, num_levels
        self.rrdb = RRDBNet(in_channels, features, blocks, growth)
        self.down = nn.ModuleList(nn.Conv2d(features, features, 2, stride=2) for _ in range(num_levels))
        self.level_channels: list[int] = [features] * num_levels

    def forward(self, lr: Tensor) -> list[Tensor]:  # noqa: D102
        divisor = 2**self.num_levels
        k = divisor // gcd(self.scale, divisor)
        _check_image(
            lr,
            self.in_channels,
            (k, k),
            f"the x{self.scale} target of the low-resolution image must have sides divisible by "
            f"2**num_levels = {divisor}; pad the low-resolution image to a multiple of {k}",
        )
        u = self.rrdb(lr)
        if self.scale > 1:
            size = (lr.shape[-2] * self.scale, lr.shape[-1] * self.scale)
            u = F.interpolate(u, size=size, mode="bilinear", align_corners=False)
        out = []
        for down in self.down:
            u = down(u)
            out.append(u)
        return out


def _vgg_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.InstanceNorm2d(in_channels, affine=True), nn.ReLU(), _conv3x3(in_channels, out_channels))


class VGGConditioner(nn.Module):
    r"""Segmentation condition encoder (Winkler et al. 2020, section 5.2, Table 4).

    ``block = [InstanceNorm2d(affine), ReLU, conv3x3]``. A bare conv3x3 (``in_channels ->
    channels[0]``) at full resolution H x W, then per level i: 2x2 max-pool and two blocks to
    ``channels[i + 1]``; level i's output has shape (B, channels[i + 1], H / 2^{i+1}, W / 2^{i+1}).
    Levels past the end of ``channels`` reuse its last entry; entries past ``num_levels + 1`` are
    unused. H and W must be divisible by :math:`2^L`. Instance norm keeps no running statistics,
    so samples never influence each other, in training or evaluation.

    Example:
        >>> import torch
        >>> net = VGGConditioner(in_channels=3, num_levels=2, channels=(4, 6, 8))
        >>> [tuple(h.shape) for h in net(torch.randn(2, 3, 8, 4))]
        [(2, 6, 4, 2), (2, 8, 2, 1)]
        >>> net.level_channels
        [6, 8]
    """

    def __init__(self, in_channels: int = 3, num_levels: int = 2, channels: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        if num_levels < 1 or not channels:
            raise ValueError(f"need num_levels >= 1 and non-empty channels, got {num_levels}, {tuple(channels)}")
        widths = [channels[min(i, len(channels) - 1)] for i in range(num_levels + 1)]
        self.in_channels, self.num_levels = in_channels, num_levels
        # The raw image comes first: normalising it per instance would throw away its brightness.
        self.stem = _conv3x3(in_channels, widths[0])
        self.stages = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), _vgg_block(c_in, c_out), _vgg_block(c_out, c_out))
            for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.level_channels: list[int] = widths[1:]

    def forward(self, image: Tensor) -> list[Tensor]:  # noqa: D102
        divisor = 2**self.num_levels
        _check_image(
            image,
            self.in_channels,
            (divisor, divisor),
            f"image sides must be divisible by 2**num_levels = {divisor}; pad the image to a multiple of {divisor}",
        )
        h = self.stem(image)
        out = []
        for stage in self.stages:
            h = stage(h)
            out.append(h)
        return out


CONDITIONERS: dict[str, type[nn.Module]] = {"rrdb": SRConditioner, "vgg": VGGConditioner}
"""Condition encoders by name; each returns one feature map per flow level, fine to coarse."""

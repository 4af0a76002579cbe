"""A small CNN image classifier whose penultimate layer serves as a feature map for Frechet distances.

It is deliberately tiny (three 3x3 conv blocks and two linear layers, ~40k parameters) so msflow
can train it on the bundled data in well under a minute on a CPU; it is not Inception-v3, and
distances computed on its features are not FID.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _conv_block(c_in: int, c_out: int, pool: bool) -> list[nn.Module]:
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
    return [*layers, nn.MaxPool2d(2)] if pool else layers


class SmallClassifier(nn.Module):
    """``3 x (conv3x3-batchnorm-relu, max-pool after the first two) -> 2x2 average -> linear-relu -> linear``.

    Inputs are ``uint8`` images ``(B, C, H, W)`` of any size ``H, W >= 4`` (or floats already in
    ``[0, 1]``); they are scaled to ``[-1, 1]`` inside, so callers never normalise. The
    adaptive 2x2 average makes the network size-agnostic: the same class works for 8x8 digits and
    28x28 MNIST.

    Args:
        in_channels: image channels.
        num_classes: number of labels.
        width: channels of the first conv block (then ``2 * width``, ``4 * width``).
        features: size of the penultimate layer, the features :meth:`features` returns.

    Example:
        >>> import torch
        >>> net = SmallClassifier(1, 10, width=8, features=16)
        >>> x = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
        >>> net(x).shape, net.features(x).shape
        (torch.Size([5, 10]), torch.Size([5, 16]))
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, features: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_block(in_channels, width, pool=True),
            *_conv_block(width, 2 * width, pool=True),
            *_conv_block(2 * width, 4 * width, pool=False),
            # A 2x2 average keeps coarse layout (where the strokes are), which a global average
            # loses: on MNIST-5k it is worth ~2 points of test accuracy at the same cost.
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * width, features),
            nn.ReLU(),
        )
        self.head = nn.Linear(features, num_classes)

    @staticmethod
    def _scale(x: Tensor) -> Tensor:
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        return 2 * x - 1

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer activations ``(B, features)``."""
        return self.body(self._scale(x))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(B, num_classes)``."""
        return self.head(self.features(x))


__all__ = ["SmallClassifier"]

"""Non-invertible networks used inside invertible blocks."""

from msflow.nn.classifier import SmallClassifier
from msflow.nn.subnets import SUBNETS, ZeroConv2d, conv_subnet, resnet_subnet, run_subnet, subnet_precision

__all__ = [
    "SUBNETS",
    "SmallClassifier",
    "ZeroConv2d",
    "conv_subnet",
    "resnet_subnet",
    "run_subnet",
    "subnet_precision",
]

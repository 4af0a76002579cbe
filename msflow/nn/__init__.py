"""Non-invertible networks used inside invertible blocks."""

from msflow.nn.subnets import ZeroConv2d, conv_subnet, run_subnet, subnet_precision

__all__ = ["ZeroConv2d", "conv_subnet", "run_subnet", "subnet_precision"]

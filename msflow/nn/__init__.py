"""Non-invertible networks used inside invertible blocks."""

from msflow.nn.classifier import SmallClassifier
from msflow.nn.conditioners import CONDITIONERS, RRDB, ResidualDenseBlock, RRDBNet, SRConditioner, VGGConditioner
from msflow.nn.convlstm import ConvLSTM
from msflow.nn.inception import FIDInception, inception_features, load_fid_inception
from msflow.nn.odefunc import FIELDS, ConvVectorField, conv_vector_field
from msflow.nn.subnets import SUBNETS, ZeroConv2d, conv_subnet, resnet_subnet, run_subnet, subnet_precision

__all__ = [
    "CONDITIONERS",
    "FIELDS",
    "SUBNETS",
    "ConvLSTM",
    "ConvVectorField",
    "FIDInception",
    "RRDB",
    "RRDBNet",
    "ResidualDenseBlock",
    "SRConditioner",
    "SmallClassifier",
    "VGGConditioner",
    "ZeroConv2d",
    "conv_subnet",
    "conv_vector_field",
    "inception_features",
    "load_fid_inception",
    "resnet_subnet",
    "run_subnet",
    "subnet_precision",
]

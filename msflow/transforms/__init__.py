"""Invertible blocks, one concept per file; each follows :class:`msflow.core.InvertibleModule`."""

from msflow.transforms.actnorm import ActNorm
from msflow.transforms.conv1x1 import InvConv1x1, StridedInvConv
from msflow.transforms.coupling import COUPLINGS, AdditiveCoupling, AffineCoupling
from msflow.transforms.dual_coupling import DualAffineCoupling
from msflow.transforms.mar_prior import MARSplitPrior
from msflow.transforms.mixlogcdf import MixLogCDFCoupling
from msflow.transforms.permute import ChannelPermutation
from msflow.transforms.preprocess import Affine, Logit, UniformDequantize
from msflow.transforms.reshape import Squeeze
from msflow.transforms.spline import RQActivation
from msflow.transforms.split import GaussianSplitPrior

__all__ = [
    "COUPLINGS",
    "ActNorm",
    "AdditiveCoupling",
    "Affine",
    "AffineCoupling",
    "ChannelPermutation",
    "DualAffineCoupling",
    "GaussianSplitPrior",
    "InvConv1x1",
    "Logit",
    "MARSplitPrior",
    "MixLogCDFCoupling",
    "RQActivation",
    "Squeeze",
    "StridedInvConv",
    "UniformDequantize",
]

"""Invertible blocks, one concept per file; each follows :class:`msflow.core.InvertibleModule`."""

from msflow.transforms.actnorm import ActNorm
from msflow.transforms.cnf import CNF, skip_logdets
from msflow.transforms.conv1x1 import InvConv1x1, StridedInvConv
from msflow.transforms.coupling import COUPLINGS, AdditiveCoupling, AffineCoupling
from msflow.transforms.dual_coupling import DualAffineCoupling
from msflow.transforms.injector import AffineInjector
from msflow.transforms.mar_prior import MARSplitPrior
from msflow.transforms.mixlogcdf import MixLogCDFCoupling
from msflow.transforms.ode_solver import ODESolverConfig, SolverError, SolverSettings
from msflow.transforms.permute import ChannelPermutation
from msflow.transforms.preprocess import Affine, Logit, UniformDequantize
from msflow.transforms.reshape import (
    PYRAMIDS,
    HaarPyramid,
    OrthogonalPyramid,
    PyramidMap,
    Squeeze,
    UnimodularPyramid,
)
from msflow.transforms.shift import ConditionalShift, ImageBase
from msflow.transforms.spline import RQActivation
from msflow.transforms.split import GaussianSplitPrior
from msflow.transforms.tarflow import TarFlowBlock
from msflow.transforms.variational_dequant import VariationalDequantize

__all__ = [
    "CNF",
    "COUPLINGS",
    "PYRAMIDS",
    "ActNorm",
    "AdditiveCoupling",
    "Affine",
    "AffineCoupling",
    "AffineInjector",
    "ChannelPermutation",
    "ConditionalShift",
    "DualAffineCoupling",
    "GaussianSplitPrior",
    "HaarPyramid",
    "ImageBase",
    "InvConv1x1",
    "Logit",
    "MARSplitPrior",
    "MixLogCDFCoupling",
    "ODESolverConfig",
    "OrthogonalPyramid",
    "PyramidMap",
    "RQActivation",
    "SolverError",
    "SolverSettings",
    "Squeeze",
    "StridedInvConv",
    "TarFlowBlock",
    "UniformDequantize",
    "UnimodularPyramid",
    "VariationalDequantize",
    "skip_logdets",
]

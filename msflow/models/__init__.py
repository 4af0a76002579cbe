"""Model families and their registered presets."""

from msflow.models import balanced as _balanced  # noqa: F401  (registers the presets)
from msflow.models import caflow as _caflow  # noqa: F401
from msflow.models import cflow as _cflow  # noqa: F401
from msflow.models import factorized as _factorized  # noqa: F401
from msflow.models import glow as _glow  # noqa: F401
from msflow.models import mrcnf as _mrcnf  # noqa: F401
from msflow.models import tarflow as _tarflow  # noqa: F401
from msflow.models._registry import (
    Capabilities,
    create_model,
    list_models,
    model_capabilities,
    model_help,
    register_model,
)
from msflow.models.base import ConditionalImageFlow, ImageFlow
from msflow.models.caflow import CAFlow
from msflow.models.cflow import ConditionalFlow
from msflow.models.factorized import FactorizedSegmenter, FactorizedSuperRes
from msflow.models.marscf import MARSCF
from msflow.models.multires import MultiResolutionFlow, build_multires
from msflow.models.multiscale import MultiScaleFlow, build_multiscale
from msflow.models.tarflow import TarFlow

__all__ = [
    "CAFlow",
    "Capabilities",
    "ConditionalImageFlow",
    "ImageFlow",
    "MARSCF",
    "ConditionalFlow",
    "FactorizedSegmenter",
    "FactorizedSuperRes",
    "MultiResolutionFlow",
    "MultiScaleFlow",
    "TarFlow",
    "build_multires",
    "build_multiscale",
    "create_model",
    "list_models",
    "model_capabilities",
    "model_help",
    "register_model",
]

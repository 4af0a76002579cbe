"""Model families and their registered presets."""

from msflow.models import balanced as _balanced  # noqa: F401  (registers the presets)
from msflow.models import glow as _glow  # noqa: F401
from msflow.models._registry import create_model, list_models, model_help, register_model
from msflow.models.marscf import MARSCF
from msflow.models.multiscale import MultiScaleFlow, build_multiscale

__all__ = [
    "MARSCF",
    "MultiScaleFlow",
    "build_multiscale",
    "create_model",
    "list_models",
    "model_help",
    "register_model",
]

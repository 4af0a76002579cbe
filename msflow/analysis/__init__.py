"""Analyses of trained flows: what their latents encode (paper 004, section 6.3)."""

from msflow.analysis.image import load_image
from msflow.analysis.perturb import mix_levels, perturb_levels

__all__ = ["load_image", "mix_levels", "perturb_levels"]

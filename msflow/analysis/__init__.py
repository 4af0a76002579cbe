"""Analyses of trained flows: what their latents encode (paper 004, section 6.3) and 2-D toys (Figures 3, 7)."""

from msflow.analysis.image import load_image
from msflow.analysis.perturb import mix_levels, perturb_levels
from msflow.analysis.toys import TOYS, fit_toy, toy_figure, toy_flow, toy_log_likelihood, toy_log_prob

__all__ = [
    "TOYS",
    "fit_toy",
    "load_image",
    "mix_levels",
    "perturb_levels",
    "toy_figure",
    "toy_flow",
    "toy_log_likelihood",
    "toy_log_prob",
]

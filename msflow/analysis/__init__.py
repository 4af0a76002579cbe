"""Analyses of trained flows: what their latents encode (paper 004, section 6.3) and 2-D toys (Figures 3, 7)."""

from msflow.analysis.image import load_image
from msflow.analysis.ood import ood_histogram, ood_table, run_ood
from msflow.analysis.perturb import mix_levels, perturb_levels
from msflow.analysis.shuffle_patches import shuffle_patch_bpd, shuffle_patch_figure, shuffle_patch_table
from msflow.analysis.toys import TOYS, fit_toy, toy_figure, toy_flow, toy_log_likelihood, toy_log_prob

__all__ = [
    "TOYS",
    "fit_toy",
    "load_image",
    "mix_levels",
    "ood_histogram",
    "ood_table",
    "perturb_levels",
    "run_ood",
    "shuffle_patch_bpd",
    "shuffle_patch_figure",
    "shuffle_patch_table",
    "toy_figure",
    "toy_flow",
    "toy_log_likelihood",
    "toy_log_prob",
]

"""Metrics computed from model outputs."""

from msflow.metrics.bounds import linear_flow_bound
from msflow.metrics.bpd import bits_per_dim, mean_and_stderr
from msflow.metrics.complexity import complexity
from msflow.metrics.frechet import fit_gaussian, frechet_distance, gaussian_frechet_distance
from msflow.metrics.ood import auroc, complexity_score, likelihood_score, ood_scores, typicality_score
from msflow.metrics.segmentation import (
    MaxFScore,
    PRCurve,
    bernoulli_samples,
    f_score,
    max_f_score,
    precision_recall_curve,
    sample_pr_points,
)

__all__ = [
    "MaxFScore",
    "PRCurve",
    "auroc",
    "bernoulli_samples",
    "bits_per_dim",
    "complexity",
    "complexity_score",
    "f_score",
    "fit_gaussian",
    "frechet_distance",
    "gaussian_frechet_distance",
    "likelihood_score",
    "linear_flow_bound",
    "max_f_score",
    "mean_and_stderr",
    "ood_scores",
    "precision_recall_curve",
    "sample_pr_points",
    "typicality_score",
]

"""Metrics computed from model outputs."""

from msflow.metrics.bounds import linear_flow_bound
from msflow.metrics.bpd import bits_per_dim, mean_and_stderr
from msflow.metrics.complexity import complexity
from msflow.metrics.frechet import fit_gaussian, frechet_distance, gaussian_frechet_distance
from msflow.metrics.ood import auroc, complexity_score, likelihood_score, ood_scores, typicality_score

__all__ = [
    "auroc",
    "bits_per_dim",
    "complexity",
    "complexity_score",
    "fit_gaussian",
    "frechet_distance",
    "gaussian_frechet_distance",
    "likelihood_score",
    "linear_flow_bound",
    "mean_and_stderr",
    "ood_scores",
    "typicality_score",
]

"""Metrics computed from model outputs."""

from msflow.metrics.bounds import linear_flow_bound
from msflow.metrics.bpd import bits_per_dim, mean_and_stderr

__all__ = ["bits_per_dim", "linear_flow_bound", "mean_and_stderr"]

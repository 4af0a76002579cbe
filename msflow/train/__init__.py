"""Configuration, the training loop, evaluation and checkpoints."""

from msflow.train.config import Config, apply_overrides, config_from_dict, load_config
from msflow.train.evaluate import evaluate, sample_grids
from msflow.train.loop import train

__all__ = ["Config", "apply_overrides", "config_from_dict", "evaluate", "load_config", "sample_grids", "train"]

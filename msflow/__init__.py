"""msflow: multi-scale, multi-resolution and conditional normalizing flows on images.

Example:
    >>> import torch, msflow
    >>> model = msflow.create_model("glow-mnist", hidden=8, steps=1)
    >>> x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    >>> model.bits_per_dim(x).shape
    torch.Size([4])
"""

from msflow.models import MARSCF, MultiResolutionFlow, MultiScaleFlow, create_model, list_models
from msflow.train.run import load

__version__ = "0.1.0"
__all__ = ["MARSCF", "MultiResolutionFlow", "MultiScaleFlow", "__version__", "create_model", "list_models", "load"]

"""msflow: multi-scale, multi-resolution and conditional normalizing flows on images.

Example:
    >>> import torch, msflow
    >>> model = msflow.create_model("glow-mnist", hidden=8, steps=1)
    >>> x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    >>> model.bits_per_dim(x).shape
    torch.Size([4])
"""

from msflow._allocator import tune_cpu_allocator
from msflow.models import MARSCF, MultiResolutionFlow, MultiScaleFlow, create_model, list_models
from msflow.train.run import load

__version__ = "0.1.0"

# Reuse freed CPU tensor memory instead of page-faulting fresh memory every batch (see _allocator).
tune_cpu_allocator()
__all__ = ["MARSCF", "MultiResolutionFlow", "MultiScaleFlow", "__version__", "create_model", "list_models", "load"]

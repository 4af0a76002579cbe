"""msflow: multi-scale, multi-resolution and conditional normalizing flows on images.

Importing msflow has no process-wide side effect. The ``msflow`` command and
:func:`msflow.train.train` tune the CPU allocator for their process; a program that runs the
models in its own loop may call :func:`tune_cpu_allocator` once at its start (see
``msflow/_allocator.py``: fewer page faults per batch, freed memory kept for reuse).

Example:
    >>> import torch, msflow
    >>> model = msflow.create_model("glow-mnist", hidden=8, steps=1)
    >>> x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    >>> model.bits_per_dim(x).shape
    torch.Size([4])
"""

from msflow._allocator import tune_cpu_allocator
from msflow.models import MARSCF, MultiResolutionFlow, MultiScaleFlow, create_model, list_models
from msflow.runs import load

__version__ = "0.1.0"

__all__ = [
    "MARSCF",
    "MultiResolutionFlow",
    "MultiScaleFlow",
    "__version__",
    "create_model",
    "list_models",
    "load",
    "tune_cpu_allocator",
]

"""Optional dependencies, imported where they are used.

``pip install msflow`` installs only the core (torch, torchdiffeq, numpy, safetensors, Pillow,
tqdm, PyYAML); the bundled datasets and plots need the ``data`` extra, some metrics the
``metrics`` extra. Importing msflow never imports an extra's package, so a missing one costs
nothing until a feature needs it, and then :func:`require` names the extra in one line.

Example:
    >>> require("math", "data", "arithmetic").sqrt(4.0)
    2.0
    >>> try:
    ...     require("nopkg.plot", "data", "plotting")
    ... except ImportError as err:  # a MissingDependencyError, also an MsflowError
    ...     print(err)
    plotting needs nopkg, which is not installed: pip install 'msflow[data]' (or pip install nopkg)
"""

from __future__ import annotations

import importlib
from types import ModuleType

from msflow.errors import MissingDependencyError

# Import name -> the name pip knows it by, where they differ.
_PIP_NAMES = {"skimage": "scikit-image", "sklearn": "scikit-learn"}


def pip_name(module: str) -> str:
    """The name pip installs ``module``'s top-level package by, e.g. ``"scikit-image"`` for ``"skimage.feature"``."""
    top = module.split(".")[0]
    return _PIP_NAMES.get(top, top)


def missing(module: str, extra: str, purpose: str) -> MissingDependencyError:
    """The one-line error for ``purpose`` needing ``module`` of the msflow extra ``extra``."""
    name = pip_name(module)
    return MissingDependencyError(
        f"{purpose} needs {name}, which is not installed: pip install 'msflow[{extra}]' (or pip install {name})"
    )


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` (dotted names allowed) or raise :class:`~msflow.errors.MissingDependencyError`.

    Args:
        module: the module to import, e.g. ``"matplotlib.figure"``.
        extra: the msflow extra that installs it (``"data"``, ``"metrics"``, ``"bench"``).
        purpose: what needs it, the singular subject of "... needs PACKAGE", e.g. ``"plotting curves"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise missing(module, extra, purpose) from err

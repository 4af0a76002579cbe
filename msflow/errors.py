"""User-facing error types.

Every error a user can cause (a bad shape, a missing dataset, a foreign checkpoint, a bad config
value) is an :class:`MsflowError`. The CLI turns these into one line on stderr and exit code 2;
library users can catch them as ``ValueError`` too.
"""


class MsflowError(ValueError):
    """Base class of errors caused by user input; the message says how to fix it."""


class ShapeError(MsflowError):
    """An image shape that a block or model cannot take."""


class DataError(MsflowError):
    """A dataset that is missing, empty, corrupt or of the wrong format, or image values that are
    not images (pixels out of range, samples that are NaN or infinite before quantization)."""


class NonFiniteSamples(DataError):
    """Samples that are NaN or infinite before quantization: the model's inverse broke down."""


class CheckpointError(MsflowError):
    """A checkpoint that is unreadable, foreign or not a safetensors file."""


class ConfigError(MsflowError):
    """An unknown configuration key or an invalid value."""


class BudgetError(ConfigError):
    """A size over msflow's limits (a model's blocks, widths, parameters or activation memory, a
    dataset held in memory), refused before anything is allocated; ``MSFLOW_ALLOW_LARGE=1`` lifts
    the limits (:mod:`msflow._budget`)."""


class SolverError(MsflowError):
    """An ODE solve that failed (step size underflow, too many steps, non-finite state)."""


class MissingDependencyError(MsflowError, ImportError):
    """An optional package (an extra such as ``msflow[data]``) that a feature needs is not installed.

    It is an :class:`ImportError` too, so code that falls back when a package is missing keeps working.
    """

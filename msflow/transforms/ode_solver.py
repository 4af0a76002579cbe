"""ODE solver settings for continuous flows, and the one call into torchdiffeq.

Training and evaluation use different settings (MRCNF trains with ``bosh3`` at 1e-3 and
evaluates at 1e-5), so :class:`ODESolverConfig` holds one :class:`SolverSettings` per mode.
Both are frozen dataclasses built from plain dicts in which unknown keys raise
:class:`~msflow.errors.ConfigError`. :func:`odesolve` turns torchdiffeq's assertion failures
("underflow in dt", "max_num_steps exceeded", non-finite states) into a :class:`SolverError`
that names the block and says how to fix it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torchdiffeq import odeint, odeint_adjoint

from msflow.errors import ConfigError, SolverError

FIXED_STEP = frozenset({"euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams"})
"""torchdiffeq's fixed-grid methods: they need ``step_size`` and ignore the tolerances."""
ADAPTIVE = frozenset({"dopri8", "dopri5", "bosh3", "fehlberg2", "adaptive_heun"})
"""torchdiffeq's adaptive Runge-Kutta methods: they take ``rtol`` / ``atol``."""


@dataclass(frozen=True)
class SolverSettings:
    """How one ODE solve is integrated.

    Args:
        method: a torchdiffeq method; adaptive (``dopri5``, ``bosh3``, ...) or fixed-step
            (``euler``, ``midpoint``, ``rk4``, ...).
        rtol: relative tolerance of adaptive methods.
        atol: absolute tolerance of adaptive methods.
        step_size: step of fixed-step methods (required for them, rejected for adaptive ones).
        max_num_steps: cap on the steps of an adaptive solve (``None``: torchdiffeq's 2^31 - 1);
            a stiff field then fails with a :class:`SolverError` instead of running for hours.

    Example:
        >>> SolverSettings.from_dict({"method": "rk4", "step_size": 0.25}).options()
        {'step_size': 0.25}
        >>> try:
        ...     SolverSettings.from_dict({"methd": "rk4"})
        ... except ConfigError as err:
        ...     print(str(err).split(";")[0])
        unknown ODE solver setting(s) ['methd']
    """

    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    step_size: float | None = None
    max_num_steps: int | None = None

    def __post_init__(self) -> None:
        if self.method not in FIXED_STEP | ADAPTIVE:
            raise ConfigError(f"unknown ODE method {self.method!r}; choose one of {sorted(FIXED_STEP | ADAPTIVE)}")
        if self.method in FIXED_STEP:
            if self.step_size is None or not self.step_size > 0:
                raise ConfigError(
                    f"fixed-step method {self.method!r} needs step_size > 0 (e.g. step_size=0.05), got {self.step_size}"
                )
        elif self.step_size is not None:
            raise ConfigError(
                f"adaptive method {self.method!r} takes rtol/atol, not step_size; use 'rk4' for fixed steps"
            )
        if not (self.rtol > 0 and self.atol > 0):
            raise ConfigError(f"rtol and atol must be positive, got rtol={self.rtol}, atol={self.atol}")
        if self.max_num_steps is not None and self.max_num_steps < 1:
            raise ConfigError(f"max_num_steps must be positive, got {self.max_num_steps}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SolverSettings:
        """Build from a dict; unknown keys raise :class:`ConfigError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown ODE solver setting(s) {unknown}; valid: {sorted(names)}")
        return cls(**values)

    def options(self) -> dict[str, Any]:
        """The ``options`` dict torchdiffeq expects for this method."""
        if self.method in FIXED_STEP:
            return {"step_size": self.step_size}
        return {} if self.max_num_steps is None else {"max_num_steps": self.max_num_steps}

    def describe(self) -> str:
        """Short human-readable form, used in error messages and logs."""
        if self.method in FIXED_STEP:
            return f"{self.method} (step_size={self.step_size})"
        return f"{self.method} (rtol={self.rtol:g}, atol={self.atol:g})"


@dataclass(frozen=True)
class ODESolverConfig:
    """Solver settings for training and for evaluation (``module.training`` picks one).

    Example:
        >>> cfg = ODESolverConfig.from_dict({"train": {"method": "bosh3", "rtol": 1e-3, "atol": 1e-3}})
        >>> cfg.train.method, cfg.eval.method
        ('bosh3', 'dopri5')
        >>> ODESolverConfig.both(SolverSettings("rk4", step_size=0.1)).eval.method
        'rk4'
    """

    train: SolverSettings = field(default_factory=SolverSettings)
    eval: SolverSettings = field(default_factory=SolverSettings)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ODESolverConfig:
        """Build from ``{"train": {...}, "eval": {...}}``; unknown keys raise :class:`ConfigError`."""
        unknown = sorted(set(values) - {"train", "eval"})
        if unknown:
            raise ConfigError(f"unknown ODE solver mode(s) {unknown}; give 'train' and/or 'eval' settings")
        parts = {mode: SolverSettings.from_dict(values[mode]) for mode in ("train", "eval") if mode in values}
        return cls(**parts)

    @classmethod
    def both(cls, settings: SolverSettings) -> ODESolverConfig:
        """The same settings in both modes."""
        return cls(train=settings, eval=settings)

    def select(self, training: bool) -> SolverSettings:
        """The settings of the current mode."""
        return self.train if training else self.eval


def as_solver_config(solver: ODESolverConfig | Mapping[str, Any] | None) -> ODESolverConfig:
    """Accept a config, a ``{"train": ..., "eval": ...}`` dict, or ``None`` (the defaults)."""
    if solver is None:
        return ODESolverConfig()
    if isinstance(solver, ODESolverConfig):
        return solver
    return ODESolverConfig.from_dict(solver)


def odesolve(
    func: Callable[[Tensor, tuple[Tensor, ...]], tuple[Tensor, ...]],
    state: tuple[Tensor, ...],
    t: Tensor,
    settings: SolverSettings,
    *,
    name: str,
    adjoint_params: Sequence[Tensor] | None = None,
    untracked: int = 0,
) -> tuple[Tensor, ...]:
    """Integrate ``d state / dt = func(t, state)`` over ``t = [t0, t1]``; return the state at ``t1``.

    Args:
        func: the dynamics of a tuple state.
        state: initial values.
        t: the two time points (either order).
        settings: the solver to use.
        name: the block being solved, for error messages.
        adjoint_params: ``None`` back-propagates through the solver's operations; a sequence
            uses the adjoint method (O(1) memory) with gradients for exactly these tensors.
        untracked: how many trailing states (regularizers) get tolerance 1e20, so that they are
            integrated but never shrink the step size.
    """
    tolerances = {"rtol": settings.rtol, "atol": settings.atol}
    if untracked:
        # Per-state tolerances; the adjoint's augmented state has another layout, so it keeps scalars.
        tolerances = {k: (v,) * (len(state) - untracked) + (1e20,) * untracked for k, v in tolerances.items()}
    kwargs: dict[str, Any] = {"method": settings.method, "options": settings.options(), **tolerances}
    try:
        if adjoint_params is None:
            out = odeint(func, state, t, **kwargs)
        else:
            kwargs.update(adjoint_params=tuple(adjoint_params), adjoint_rtol=settings.rtol, adjoint_atol=settings.atol)
            out = odeint_adjoint(_Traced(func, name, settings), state, t, **kwargs)
    except AssertionError as err:
        raise SolverError(_failure(name, settings, str(err).split(":")[0][:200])) from err
    final = tuple(s[-1] for s in out)
    # A blow-up that stayed finite long enough to pass torchdiffeq's own checks ends here.
    if not all(bool(torch.isfinite(s).all()) for s in final):
        raise SolverError(_failure(name, settings, "non-finite state at the end of the solve"))
    return final


class _Traced:
    """Dynamics that note which solve called them last, so that a failure inside the adjoint's
    backward solve (raised by torchdiffeq from ``loss.backward()``, far from :func:`odesolve`)
    can still name its block; see :func:`solver_errors_in_backward`."""

    last: tuple[str, SolverSettings] | None = None

    def __init__(self, func: Callable, name: str, settings: SolverSettings) -> None:
        self.func, self.where = func, (name, settings)

    def __call__(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        _Traced.last = self.where
        return self.func(t, state)


@contextlib.contextmanager
def solver_errors_in_backward() -> Iterator[None]:
    """Turn a failed adjoint solve during ``backward()`` into a :class:`SolverError` naming the block.

    Example:
        >>> import torch
        >>> with solver_errors_in_backward():
        ...     torch.ones(1, requires_grad=True).sum().backward()
    """
    _Traced.last = None
    try:
        yield
    except AssertionError as err:
        if _Traced.last is None:  # not a solver's failure
            raise
        name, settings = _Traced.last
        reason = str(err).split(":")[0][:200]
        raise SolverError(_failure(name, settings, f"{reason}, in the adjoint's backward solve")) from err


def _failure(name: str, settings: SolverSettings, reason: str) -> str:
    fallback = (
        "use a smaller step_size" if settings.method in FIXED_STEP else "loosen the tolerance (e.g. rtol=atol=1e-3)"
    )
    return (
        f"{name}: the ODE solve with {settings.describe()} failed ({reason}); the learned dynamics are "
        f"probably stiff or diverging. Use a fixed-step method (e.g. method='rk4', step_size=0.05), "
        f"{fallback}, lower the learning rate, or raise the RNODE regularizer weights"
    )


__all__ = [
    "ADAPTIVE",
    "FIXED_STEP",
    "ODESolverConfig",
    "SolverError",
    "SolverSettings",
    "as_solver_config",
    "odesolve",
    "solver_errors_in_backward",
]

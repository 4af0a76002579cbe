"""Model registry: presets register a builder under a name (timm-style), with what the model can do.

Example:
    >>> from msflow.models import list_models, model_capabilities
    >>> model_capabilities("cflow-seg")
    Capabilities(task='segment', cnf=False)
    >>> model_capabilities("cflow-seg").conditional, model_capabilities("glow-mnist").conditional
    (True, False)
    >>> "mrcnf-mnist" in list_models(cnf=True), "glow-mnist" in list_models(cnf=True)
    (True, False)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from msflow._budget import check_model_spec
from msflow.errors import ConfigError, MsflowError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_HELP: dict[str, str] = {}


@dataclass(frozen=True)
class Capabilities:
    """What a preset's model declares, recorded when it is registered (the built model agrees:
    ``model.task``, ``model.conditional``; tests select presets by these, not by name).

    Attributes:
        task: the image-to-image task of a conditional model (``"superres"``, ``"segment"``,
            ``"colorize"``, ``"inpaint"``, ``"sketch"``); ``None`` for a density of images.
        cnf: the preset's default build has continuous (ODE) levels.
    """

    task: str | None = None
    cnf: bool = False

    @property
    def conditional(self) -> bool:
        """Whether the model is ``p(target | cond)``: a model with a task."""
        return self.task is not None


_CAPABILITIES: dict[str, Capabilities] = {}


def register_model(
    name: str, help: str, task: str | None = None, cnf: bool = False
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``builder(**overrides) -> nn.Module`` under ``name``, with its
    :class:`Capabilities` (``task`` for a conditional model, ``cnf`` for continuous levels)."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = builder
        _HELP[name] = help
        _CAPABILITIES[name] = Capabilities(task, cnf)
        return builder

    return wrap


def model_capabilities(name: str) -> Capabilities:
    """What preset ``name`` was registered as able to do."""
    if name not in _CAPABILITIES:
        raise ConfigError(f"unknown model {name!r}; `msflow list` shows the available ones")
    return _CAPABILITIES[name]


def list_models(conditional: bool | None = None, task: str | None = None, cnf: bool | None = None) -> list[str]:
    """Names of the registered model presets, sorted; each filter given keeps only the presets
    whose :class:`Capabilities` match it."""
    wanted = {"conditional": conditional, "task": task, "cnf": cnf}
    return sorted(
        name
        for name, caps in _CAPABILITIES.items()
        if all(value is None or getattr(caps, key) == value for key, value in wanted.items())
    )


def model_help(name: str) -> str:
    """One-line description of a preset."""
    return _HELP[name]


def preset_defaults(name: str) -> dict[str, Any]:
    """The options a preset's builder shows with their values (those given when it was registered
    included); options it takes through ``**kwargs`` are not listed."""
    builder = _MODELS[name]
    parameters = inspect.signature(builder).parameters.values()
    shown = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    # functools.partial keywords that go to the builder's **kwargs are not in its signature.
    return {**(builder.keywords if isinstance(builder, functools.partial) else {}), **shown}


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model; keyword overrides change the preset's hyperparameters.

    The returned model carries ``model.spec = {"name": ..., "overrides": ...}`` so a checkpoint
    can rebuild it exactly. Sizes are checked first, from the options alone
    (:func:`msflow._budget.check_model_spec`): a width of 0, ``steps=10**9`` or an image side of
    ``2**20`` is one :class:`ConfigError` line, not hours of building or a failed allocation.

    Example:
        >>> from msflow import create_model
        >>> model = create_model("glow-mnist", hidden=16, steps=2)
        >>> model.spec
        {'name': 'glow-mnist', 'overrides': {'hidden': 16, 'steps': 2}}
    """
    if name not in _MODELS:
        raise ConfigError(
            f"unknown model {name!r}; `msflow list` shows the {len(_MODELS)} available: {', '.join(list_models())}"
        )
    check_model_spec(name, preset_defaults(name), overrides)
    try:
        model = _MODELS[name](**overrides)
    except MsflowError:
        raise
    except (TypeError, ValueError, KeyError) as err:
        raise ConfigError(f"bad option for model {name!r}: {err}") from None
    model.spec = {"name": name, "overrides": dict(overrides)}
    return model

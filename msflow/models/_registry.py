"""Model registry: presets register a builder under a name (timm-style)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from msflow._budget import check_model_spec
from msflow.errors import ConfigError, MsflowError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_HELP: dict[str, str] = {}


def register_model(name: str, help: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``builder(**overrides) -> nn.Module`` under ``name``."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = builder
        _HELP[name] = help
        return builder

    return wrap


def list_models() -> list[str]:
    """Names of every registered model preset, sorted."""
    return sorted(_MODELS)


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

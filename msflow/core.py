"""The one contract every invertible block follows.

A block maps data ``x`` to a latent ``z`` in the *density* direction and back in the *sampling*
direction, and reports the log-absolute-determinant of the Jacobian of the map it applied:

.. math::

    z, \\log|\\det \\partial z / \\partial x| = f(x), \\qquad
    x, \\log|\\det \\partial x / \\partial z| = f^{-1}(z)

so at matching points the two log-dets cancel. ``logdet`` is always a ``(B,)`` tensor with the
dtype and device of ``x``. Every block accepts ``cond`` and ignores it unless it needs it.

Example:
    >>> import torch
    >>> from msflow.core import FlowSequential, Inverse
    >>> from msflow.transforms import ActNorm, Squeeze
    >>> flow = FlowSequential(Squeeze(), ActNorm(4))
    >>> x = torch.randn(2, 1, 4, 4)
    >>> z, logdet = flow(x)
    >>> z.shape, logdet.shape
    (torch.Size([2, 4, 2, 2]), torch.Size([2]))
    >>> x_back, _ = flow.inverse(z)
    >>> bool(torch.allclose(x, x_back, atol=1e-5))
    True
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from msflow.errors import ShapeError

Shape = tuple[int, ...]


class InvertibleModule(nn.Module):
    """Base class of every invertible block.

    Subclasses implement :meth:`forward` (data to latent) and :meth:`inverse` (latent to data),
    each returning ``(output, logdet)``, and :meth:`output_shape` when they change shape.
    """

    def forward(self, x: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:  # noqa: D102
        raise NotImplementedError

    def inverse(self, z: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        """Sampling direction: returns ``(x, log|det dx/dz|)``."""
        raise NotImplementedError

    def output_shape(self, in_shape: Shape) -> Shape:
        """Shape ``(C, H, W)`` of the output for an input of ``in_shape``.

        Raises:
            ShapeError: the block cannot take ``in_shape``; the message says how to fix it.
        """
        return tuple(in_shape)

    def input_shape(self, out_shape: Shape) -> Shape:
        """Shape of the input that gives an output of ``out_shape`` (the inverse of :meth:`output_shape`)."""
        return tuple(out_shape)


def zero_logdet(x: Tensor) -> Tensor:
    """A ``(B,)`` zero log-det with the dtype and device of ``x``."""
    return x.new_zeros(x.shape[0])


def sum_except_batch(x: Tensor) -> Tensor:
    """Sum over every dimension but the first: ``(B, ...) -> (B,)``."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def require_cond(block: nn.Module, cond: Any) -> Any:
    """Return ``cond`` or raise the contract's ``ValueError`` when a conditional block gets none."""
    if cond is None:
        raise ValueError(
            f"{type(block).__name__} is conditional and needs `cond`; pass cond=... to the model "
            "(e.g. model.log_prob(x, cond=features))"
        )
    return cond


class FlowSequential(InvertibleModule):
    """Composition ``f = f_n o ... o f_1``; log-dets add up.

    Args:
        *blocks: the invertible blocks, applied in order in the density direction.
    """

    def __init__(self, *blocks: InvertibleModule) -> None:
        super().__init__()
        for i, block in enumerate(blocks):
            if not isinstance(block, InvertibleModule):
                raise TypeError(
                    f"block {i} is a {type(block).__name__}, not an InvertibleModule; wrap "
                    "non-invertible networks inside a coupling or prior"
                )
        self.blocks = nn.ModuleList(blocks)
        self.gradient_checkpointing = False

    def forward(self, x: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        logdet = zero_logdet(x)
        recompute = self.gradient_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute and _ready_for_recompute(block):
                # Keep only the block's input; its activations are recomputed in backward.
                x, ld = checkpoint(block, x, cond, use_reentrant=False)
            else:
                x, ld = block(x, cond)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        logdet = zero_logdet(z)
        for block in reversed(self.blocks):
            z, ld = block.inverse(z, cond)
            logdet = logdet + ld
        return z, logdet

    def output_shape(self, in_shape: Shape) -> Shape:
        shape = tuple(in_shape)
        for i, block in enumerate(self.blocks):
            try:
                shape = block.output_shape(shape)
            except ShapeError as err:
                raise ShapeError(f"block {i} ({type(block).__name__}): {err}") from None
        return shape

    def input_shape(self, out_shape: Shape) -> Shape:
        shape = tuple(out_shape)
        for block in reversed(self.blocks):
            shape = block.input_shape(shape)
        return shape

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> InvertibleModule:
        return self.blocks[i]


def pending_initialization(module: nn.Module) -> nn.Module | None:
    """The first submodule of ``module`` whose data-dependent initialisation (ActNorm's) has not run
    yet, or ``None``: blocks with such an init declare it by an ``initialized`` flag."""
    return next((m for m in module.modules() if not bool(getattr(m, "initialized", True))), None)


def _ready_for_recompute(block: nn.Module) -> bool:
    """False while a data-dependent initialisation (ActNorm) is pending: it must run exactly once;
    and for blocks with a module that sets ``recomputable = False`` (a CNF: see there)."""
    return all(bool(getattr(m, "initialized", True)) and getattr(m, "recomputable", True) for m in block.modules())


def set_gradient_checkpointing(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Recompute each block's activations in backward instead of storing them (Chen et al. 2016).

    Training memory then holds one tensor per block (its input) plus one block's activations,
    at the cost of a second forward pass. Applies to every :class:`FlowSequential` in
    ``model``; results and gradients are unchanged.

    Example:
        >>> from msflow import create_model
        >>> model = set_gradient_checkpointing(create_model("glow-mnist", hidden=8, steps=1))
        >>> model.levels[0].gradient_checkpointing
        True
    """
    for module in model.modules():
        if isinstance(module, FlowSequential):
            module.gradient_checkpointing = enabled
    return model


class Inverse(InvertibleModule):
    """Swaps the directions of ``block``: its ``forward`` is ``block.inverse`` and vice versa."""

    def __init__(self, block: InvertibleModule) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        return self.block.inverse(x, cond)

    def inverse(self, z: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        return self.block(z, cond)

    def output_shape(self, in_shape: Shape) -> Shape:
        return self.block.input_shape(in_shape)

    def input_shape(self, out_shape: Shape) -> Shape:
        return self.block.output_shape(out_shape)


def check_image(x: Tensor, expected: Shape, who: str) -> None:
    """Raise :class:`ShapeError` unless ``x`` is ``(B, *expected)``."""
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(expected):
        got = "x".join(map(str, x.shape[1:])) if x.dim() == 4 else f"a {x.dim()}-D tensor"
        want = "x".join(map(str, expected))
        raise ShapeError(
            f"{who} expects images of shape (B, {', '.join(map(str, expected))}) = {want}, "
            f"got {got}; resize/pad the data or build the model for this shape"
        )


__all__ = [
    "FlowSequential",
    "Inverse",
    "InvertibleModule",
    "Shape",
    "check_image",
    "pending_initialization",
    "require_cond",
    "set_gradient_checkpointing",
    "sum_except_batch",
    "zero_logdet",
]


T = TypeVar("T")


def evaluation_context(model: nn.Module) -> AbstractContextManager:
    """``torch.inference_mode()`` for evaluating ``model``, or ``torch.no_grad()`` when its
    density needs autograd inside (a continuous flow's trace is a vector-Jacobian product,
    which inference tensors cannot take part in)."""
    return torch.no_grad() if getattr(model, "density_needs_autograd", False) else torch.inference_mode()


def evaluates(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator: run ``fn(model, ...)`` under :func:`evaluation_context` of its first argument."""

    @functools.wraps(fn)
    def wrapper(model: nn.Module, *args: Any, **kwargs: Any) -> T:
        with evaluation_context(model):
            return fn(model, *args, **kwargs)

    return wrapper

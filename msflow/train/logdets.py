r"""Per-block log-determinants during training: the early warning of Liao & He (paper 004, sec. 2.2).

Maximum likelihood rewards volume expansion, so an unconstrained block's log-det can keep growing
(Glow's 1x1 convolution in their Figure 2) until the gradients of earlier layers explode
(Proposition 1): the growth shows before the loss diverges.

What is measured: for integer images ``x`` with ``D = C H W`` dimensions, one seeded dequantization
draw ``v`` and a no-grad forward pass in eval mode, block ``b`` gets

.. math::

    \ell_b = \frac{1}{B D} \sum_{i=1}^{B} \log\left|\det \frac{\partial h_b}{\partial h_{b-1}}\right|(v_i)

in nats per dimension of the *whole image*, also after splits, where a block sees fewer
dimensions: all levels share one scale and the values add up to ``log|det d eps / d v| / D``, the
model's log-det term of the bits/dim. The blocks are the direct children of every
:class:`~msflow.core.FlowSequential` (nested ones are entered) and the invertible direct children of
the model (``MultiScaleFlow.preprocess``), named like ``level0.block2.InvConv1x1``.

Warning rule: a block warns once (an :class:`UnstableLogdetWarning`) when its value rose at each of
its last ``window`` measurements and by more than ``threshold`` nats/dim over them.

Example:
    >>> import torch
    >>> from msflow import create_model
    >>> model = create_model("glow-mnist", image_shape=[1, 8, 8], levels=1, steps=1, hidden=4)
    >>> x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    >>> _ = model.bits_per_dim(x)  # the data-dependent ActNorm initialisation
    >>> list(block_logdets(model, x))[:3]
    ['preprocess.Affine', 'level0.block0.Squeeze', 'level0.block1.ActNorm']
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from msflow._io import atomic_write
from msflow.core import FlowSequential, InvertibleModule, pending_initialization
from msflow.errors import MsflowError
from msflow.train.metrics_log import MetricsLog

LOGDETS, PLOT = "logdets.jsonl", "logdets.png"


class UnstableLogdetWarning(RuntimeWarning):
    """A block's log-det keeps growing: the flow may be going unstable (Liao & He sec. 2.2)."""


def flow_blocks(model: nn.Module) -> dict[str, InvertibleModule]:
    """The blocks whose log-dets are tracked, by name (see the module docstring)."""
    found: dict[str, InvertibleModule] = {}

    def visit(module: nn.Module, path: str, tracked: bool) -> None:
        if isinstance(module, FlowSequential):
            label = re.sub(r"s?\.(\d+)", r"\1", path) or "flow"  # levels.0 -> level0
            for i, block in enumerate(module.blocks):
                visit(block, f"{label}.block{i}", True)
        elif tracked:
            found[f"{path}.{type(module).__name__}"] = module
        else:
            for name, child in module.named_children():
                visit(child, f"{path}.{name}" if path else name, not path and isinstance(child, InvertibleModule))

    visit(model, "", False)
    return found


@torch.no_grad()
def block_logdets(
    model: nn.Module, x: Tensor, generator: torch.Generator | None = None, cond: Any = None
) -> dict[str, float]:
    """Each block's mean log-det per image dimension on integer images ``x``, in the order applied.

    Runs ``model.bits_per_dim(x, cond=cond, generator=generator)`` once without gradients in eval
    mode, with forward hooks that exist only during the call; the mode and the global RNG state are
    restored. Blocks that did not run are left out; a block that ran twice has both log-dets added.

    Raises:
        ValueError: a data-dependent initialisation (ActNorm) is still pending; measuring would
            perform it, so measure after the first training step.
    """
    if pending_initialization(model) is not None:
        raise ValueError("ActNorm is not initialised yet; measure log-dets after the first training step")
    sums: dict[str, Tensor] = {}

    def hook_for(name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            total = output[1].detach().to(torch.float64).sum()
            sums[name] = sums[name] + total if name in sums else total

        return hook

    handles = [block.register_forward_hook(hook_for(name)) for name, block in flow_blocks(model).items()]
    was_training = model.training
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            model.eval()
            model.bits_per_dim(x, cond=cond, generator=generator)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    scale = x.shape[0] * x[0].numel()
    return {name: total.item() / scale for name, total in sums.items()}


def read_logdets(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``logdets.jsonl`` file; a line cut short by a crash is skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return records


def growth_warnings(records: list[dict[str, Any]], window: int = 5, threshold: float = 0.1) -> dict[str, str]:
    """``{block: message}`` for the blocks whose last ``window + 1`` values in ``records`` (step order)
    rise strictly, by more than ``threshold`` in all; ``None`` (non-finite) never counts as growth."""
    messages = {}
    for name in records[-1]["logdet_per_dim"] if records else []:
        series = [(r["step"], r["logdet_per_dim"].get(name)) for r in records[-window - 1 :]]
        values = [math.nan if v is None else v for _, v in series]
        rising = len(values) == window + 1 and all(a < b for a, b in zip(values, values[1:], strict=False))
        if rising and values[-1] - values[0] > threshold:
            messages[name] = (
                f"block {name}'s log-det grew from {values[0]:.4g} to {values[-1]:.4g} nats/dim over steps "
                f"{series[0][0]}-{series[-1][0]}; the flow may be going unstable (Liao & He sec. 2.2); "
                "lower optim.lr or use a bounded block"
            )
    return messages


class LogdetTracker:
    """Appends per-block log-dets to ``run_dir/logdets.jsonl`` and warns about growing blocks.

    Args:
        model: the flow being trained.
        run_dir: the run folder.
        resume_step: the checkpoint's step; lines past it are dropped, as in :class:`MetricsLog`.
        seed: the dequantization noise of step ``s`` comes from its own generator seeded with
            ``(seed, s)``, never from the training generator.
        window: measurements in a row that must each show growth before a warning.
        threshold: total growth over ``window`` measurements, in nats/dim, needed for a warning.
    """

    def __init__(
        self,
        model: nn.Module,
        run_dir: str | Path,
        resume_step: int = 0,
        seed: int = 0,
        window: int = 5,
        threshold: float = 0.1,
    ) -> None:
        self.model, self.run_dir, self.seed = model, Path(run_dir), seed
        self.window, self.threshold = window, threshold
        self.log = MetricsLog(self.run_dir / LOGDETS, resume_step=resume_step)
        records = read_logdets(self.log.path) if self.log.path.exists() else []
        self._growing = partial(growth_warnings, window=window, threshold=threshold)
        # Blocks that already warned before a resume do not warn again.
        self.warned = {name for i in range(len(records)) for name in self._growing(records[max(0, i - window) : i + 1])}
        self.records = records[-window - 1 :]  # all that the rule looks at

    def measure(self, x: Tensor, step: int, cond: Any = None) -> dict[str, float]:
        """Measure ``x`` (integer images) at ``step`` with :func:`block_logdets`, then :meth:`record` it."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        values = block_logdets(self.model, x, generator, cond)
        self.record(step, values)
        return values

    def record(self, step: int, values: dict[str, float]) -> None:
        """Append one line ``{"step", "logdet_per_dim"}`` and warn once per block that keeps growing."""
        record = {"step": step, "logdet_per_dim": {k: v if math.isfinite(v) else None for k, v in values.items()}}
        self.log.write(record)
        self.records = [*self.records[-self.window :], record]
        for name, message in self._growing(self.records).items():
            if name not in self.warned:
                self.warned.add(name)
                warnings.warn(message, UnstableLogdetWarning, stacklevel=3)  # where measure() is called

    def plot(self) -> Path | None:
        """Write ``logdets.png`` in the run folder; ``None`` (with a warning without matplotlib) if it cannot."""
        if not self.records:
            return None
        try:
            return plot_logdets(self.run_dir)
        except ImportError as err:
            warnings.warn(str(err), stacklevel=2)
            return None


def plot_logdets(run: str | Path, out: str | Path | None = None) -> Path:
    """Plot a run's ``logdets.jsonl`` (Liao & He Figs. 2 and 4c): one line per block, coloured by type.

    The blocks outside the flow's sequences (the parameter-free preprocessing, whose log-det of
    several nats/dim only follows the data) are left out so they do not flatten the other lines.

    Args:
        run: a run folder or a ``logdets.jsonl`` file.
        out: the PNG to write (default ``logdets.png`` next to the JSONL file).
    """
    path = Path(run) / LOGDETS if Path(run).is_dir() else Path(run)
    records = read_logdets(path) if path.is_file() else []
    if not records:
        raise MsflowError(f"no log-det measurements in {path}; train with train.logdet_every=N (N > 0)")
    try:
        from matplotlib.figure import Figure  # optional (the `data` extra); Figure needs no pyplot backend
    except ImportError:
        raise ImportError("plotting log-dets needs matplotlib: pip install matplotlib") from None
    fig = Figure(figsize=(8, 5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    colours: dict[str, str] = {}  # one colour and one legend entry per block type
    for name in dict.fromkeys(name for r in records for name in r["logdet_per_dim"] if ".block" in name):
        kind = name.rsplit(".", 1)[-1]
        label = "_nolegend_" if kind in colours else kind
        colour = colours.setdefault(kind, f"C{len(colours) % 10}")
        seen = [r for r in records if name in r["logdet_per_dim"]]
        values = np.array([r["logdet_per_dim"][name] for r in seen], dtype=float)  # None (non-finite) -> NaN
        ax.plot([r["step"] for r in seen], values, color=colour, label=label, lw=1, alpha=0.8, marker=".", ms=3)
    ax.axhline(0.0, color="0.6", lw=0.5)
    ax.set(xlabel="step", ylabel="log|det J| per image dimension (nats)", title="per-block log-determinant")
    ax.legend(title="block type", fontsize="small")
    target = Path(out) if out is not None else path.with_name(PLOT)
    atomic_write(target, lambda tmp: fig.savefig(tmp, format="png"))
    return target

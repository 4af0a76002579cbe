"""Data-parallel training across processes (``torchrun --nproc_per_node=N -m msflow train ...``).

Every rank holds the whole model and takes its slice of each global batch (``train.batch_size``
images split evenly over the ranks). After each backward pass the gradients are averaged with
one all-reduce per parameter, so every rank applies the same update and the weights, EMA and
optimizer state stay identical, exactly as in a one-process run with the global batch:

.. math::

    \\nabla \\frac{1}{B}\\sum_{i=1}^{B} \\ell_i = \\frac{1}{R}\\sum_{r=1}^{R}
        \\nabla \\frac{1}{B/R}\\sum_{i \\in \\text{slice}_r} \\ell_i

ActNorm's data-dependent start already uses the statistics of all ranks. Rank 0 alone writes
checkpoints, metrics, evaluations and sample grids; the others wait at barriers. The backend is
gloo on CPU and NCCL on CUDA; multi-node runs use torchrun's rendezvous flags (README).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from msflow.errors import ConfigError


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: ``rank`` of ``world`` (``world == 1``: not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """True on the rank that writes files."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op in a one-process run)."""
        if self.world > 1:
            dist.barrier()

    def mean(self, value: Tensor) -> Tensor:
        """The mean of ``value`` over the ranks (a copy; ``value`` itself in a one-process run)."""
        if self.world == 1:
            return value
        out = value.detach().clone()
        dist.all_reduce(out)
        return out / self.world

    def any(self, flag: bool) -> bool:
        """True if ``flag`` is true on any rank (so that all ranks take the same branch)."""
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def average_gradients(self, model: nn.Module) -> None:
        """Replace every gradient by its mean over the ranks."""
        if self.world == 1:
            return
        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(self.world)

    def shard(self, batch_size: int) -> tuple[int, int]:
        """``(start, stop)`` of this rank's rows in a global batch of ``batch_size`` images."""
        if batch_size % self.world:
            raise ConfigError(
                f"train.batch_size={batch_size} must divide evenly over {self.world} processes; "
                f"use a multiple of {self.world}"
            )
        per = batch_size // self.world
        return self.rank * per, (self.rank + 1) * per


def init_distributed(device: torch.device) -> Ranks:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Without ``WORLD_SIZE`` > 1 this does nothing and returns one rank of one.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; run one process")
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size())


def skip_noise(generator: torch.Generator, rows: int, shape: tuple[int, ...]) -> None:
    """Advance ``generator`` past the uniform dequantization noise of ``rows`` images of ``shape``.

    A rank skips the noise of the ranks before it, draws its own, then every rank skips to the
    end of the global batch, so each image gets the noise a one-process run would give it.
    """
    if rows > 0:
        torch.rand((rows, *shape), generator=generator)


__all__ = ["Ranks", "init_distributed", "skip_noise"]

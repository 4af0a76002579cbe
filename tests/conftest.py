"""Shared fixtures for the msflow test-suite.

Helpers are exposed as fixtures (not imported from this file) so the test modules stay plain
pytest modules. Math tests work in float64 by converting blocks with ``.double()`` and feeding
float64 inputs; the global default dtype is never changed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor, nn

# The suite runs as two xdist workers on two cores. One intra-op thread per process, and per
# subprocess a test starts (they inherit the variable), avoids OpenMP oversubscription: its
# spinning barriers made small-tensor tests 10-30x slower with two threads per process.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _keep_thread_count() -> Iterator[None]:
    """Give torch's thread count back after each test (the benchmark scripts set it process-wide)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same global RNG state, so failures reproduce."""
    torch.manual_seed(0)


def _randomize(module: nn.Module, std: float = 0.1, seed: int = 0) -> nn.Module:
    """Add seeded Gaussian noise to every parameter.

    msflow's coupling nets and split priors start as exact identities (zero-initialised last
    layers); a Jacobian or inversion test on them would be vacuous, so tests perturb them first.
    Noise is *added*, so 1x1 convolutions stay near their (well-conditioned) rotations.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            p.add_(noise.to(device=p.device, dtype=p.dtype) * std)
    return module


def _jacobian_logabsdet(fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """``(sign, log|det J|)`` of the full autograd Jacobian of a single-sample map ``fn``.

    ``x`` is one sample (no batch dimension); ``fn`` returns any shape with ``x.numel()``
    entries. The Jacobian is reshaped to ``D x D`` and its slogdet returned.
    """
    jac = torch.autograd.functional.jacobian(fn, x, vectorize=True)
    d = x.numel()
    assert jac.numel() == d * d, f"map is not square: {d} inputs, {jac.numel() // d} outputs"
    return torch.linalg.slogdet(jac.reshape(d, d))


@pytest.fixture(scope="session")
def randomize() -> Callable[..., nn.Module]:
    """``randomize(module, std=0.1, seed=0)`` perturbs every parameter in place and returns it."""
    return _randomize


@pytest.fixture(scope="session")
def jacobian_logabsdet() -> Callable[[Callable[[Tensor], Tensor], Tensor], tuple[Tensor, Tensor]]:
    """``jacobian_logabsdet(fn, x) -> (sign, logabsdet)`` of the autograd Jacobian of ``fn`` at one sample ``x``."""
    return _jacobian_logabsdet

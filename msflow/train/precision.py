"""Which subnet precision ``train.precision: auto`` means on this hardware.

bf16-mixed runs the subnets (coupling nets, conditioners, ODE vector fields) under bfloat16
autocast while every invertible operation stays float32 (``msflow.nn.subnets``). It pays only
where the hardware multiplies bf16 natively, so ``auto`` picks it on CPUs with AVX512-BF16 or
AMX (there compute bounds a step: the Glow benchmark trains 1.4x faster than in float32) and
float32 elsewhere. On CUDA ``auto`` also picks float32: cuDNN already runs float32 convolutions
in TF32, and at the sizes this library trains (batch 64, 28-32 pixel sides) a GPU step is bound
by kernel launches, which autocast's casts add to (measured on an H100: bf16-mixed trained the
Glow of ``benchmarks/peers.py`` at 0.81x the float32 speed). Ask for ``bf16-mixed`` explicitly
for large images on a GPU.

An explicit ``bf16-mixed`` is kept on any hardware, but on a CPU without bf16 units it warns
once per process (:data:`EMULATED_BF16`): there every bf16 product is emulated in software, and a
step runs several times (up to ~30x) slower than in float32.

Example:
    >>> import torch
    >>> resolve_precision("float32", torch.device("cpu"))
    'float32'
    >>> resolve_precision("auto", torch.device("cuda")), resolve_precision("bf16-mixed", torch.device("cuda"))
    ('float32', 'bf16-mixed')
    >>> native = bool({"avx512_bf16", "amx_bf16"} & cpu_flags())  # this CPU's /proc/cpuinfo flags
    >>> resolve_precision("auto", torch.device("cpu")) == ("bf16-mixed" if native else "float32")
    True
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch

#: /proc/cpuinfo flags of x86 CPUs with native bf16 matrix arithmetic.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

EMULATED_BF16 = (
    "train.precision=bf16-mixed, but this CPU has no bf16 units (avx512_bf16/amx_bf16): bf16 is emulated, "
    "typically several times slower than float32; use train.precision=auto or float32"
)
"""The warning an explicit ``bf16-mixed`` gives on a CPU without native bf16 arithmetic."""


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (empty where ``/proc/cpuinfo`` is not readable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def has_fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 natively (so bf16-mixed subnets run faster)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)
    return False


@functools.cache
def warn_emulated_bf16() -> None:
    """Warn (once per process: cached) that bf16-mixed is emulated on this CPU; see :data:`EMULATED_BF16`."""
    warnings.warn(EMULATED_BF16, RuntimeWarning, stacklevel=3)  # stacklevel 3: the caller of resolve_precision


def resolve_precision(name: str, device: torch.device) -> str:
    """``"auto"`` -> ``"bf16-mixed"`` on a CPU that :func:`has_fast_bf16`, else ``"float32"``; others unchanged.

    An explicit ``"bf16-mixed"`` on a CPU without bf16 units is kept, with one warning per process
    (:func:`warn_emulated_bf16`), since a user may want it (to check a bf16 run's numbers, say).
    """
    if name == "bf16-mixed" and device.type == "cpu" and not has_fast_bf16(device):
        warn_emulated_bf16()
    if name != "auto":
        return name
    return "bf16-mixed" if device.type == "cpu" and has_fast_bf16(device) else "float32"

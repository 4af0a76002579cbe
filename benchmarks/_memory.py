"""Peak-memory measurement shared by the benchmarks: the extra resident memory one piece of work needs.

``tracemalloc`` does not see torch's allocations, and RSS deltas in a long-running process mix in
whatever the allocator kept from earlier work. So a benchmark measures in a **fresh process**: the
worker builds its model and runs the work once (one-time costs paid), then :func:`measure_peak`
returns freed heap to the OS (``malloc_trim``), resets the kernel's RSS high-water mark
(``/proc/self/clear_refs``), runs the work again and reports peak RSS (``VmHWM``) minus the RSS
before it. The parent spawns such workers with :func:`median_of_processes`. On a GPU no fresh
process is needed: :func:`measure_cuda_peak` reads the caching allocator's own peak counter.
(:func:`cpu_name` and :func:`cpu_bf16_units` are here too: the reports' headers name the machine
the figures belong to.)

Example (in a worker process)::

    step(x)  # one-time costs: thread pools, kernels, the autograd engine, optimiser state
    print(json.dumps(measure_peak(lambda: step(x))))  # the parent reads the last stdout line

``benchmarks/`` is a folder of scripts, not a package: scripts run from it import this file as
``_memory`` (their folder is first on ``sys.path``). Importing it tunes the CPU allocator as the
``msflow`` command does (``msflow.tune_cpu_allocator``), so every benchmark measures msflow as a user
runs it.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import platform
import resource
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from msflow import tune_cpu_allocator

# The benchmarks measure msflow as its entry points (the `msflow` command, msflow.train.train) run
# it: with the CPU allocator tuned (msflow/_allocator.py), for every library in the process alike.
# Every benchmark script and worker process imports this file before it builds a model, so this one
# call covers them all; MSFLOW_TUNE_MALLOC=0 turns it off (benchmarks/allocator.py compares both).
tune_cpu_allocator()


def _proc_status_mib(key: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process from ``/proc/self/status`` (Linux), in MiB."""
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # reported in kB
    return None


def rss_mib() -> float:
    """Current resident set size, in MiB."""
    return _proc_status_mib("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mib() -> float:
    """Peak resident set size since the last reset, in MiB.

    ``VmHWM`` rather than ``getrusage().ru_maxrss``: Linux carries ``ru_maxrss`` across
    ``fork`` + ``exec``, so a worker spawned by a large benchmark process would report the
    parent's peak; ``VmHWM`` belongs to the worker's own address space and can be reset.
    """
    return _proc_status_mib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Return freed heap to the OS and reset the kernel's RSS high-water mark (Linux >= 4.0)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_peak(work: Callable[[], Any]) -> dict[str, Any]:
    """Peak RSS while ``work()`` runs over the RSS before it, in MiB (run ``work`` once before)."""
    gc.collect()
    was_reset = reset_peak_rss()
    before = rss_mib()
    work()
    peak = peak_rss_mib()
    return {"rss_before_mib": before, "peak_rss_mib": peak, "peak_delta_mib": peak - before, "peak_reset": was_reset}


def measure_cuda_peak(work: Callable[[], Any], device: Any) -> dict[str, Any]:
    """Peak CUDA memory allocated while ``work()`` runs over the memory allocated before it, in MiB.

    Counts tensors (``torch.cuda.max_memory_allocated``), not the caching allocator's reserved
    pool, so what earlier work left cached does not count; run ``work`` once before, as for
    :func:`measure_peak`.
    """
    import torch

    gc.collect()
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device) / 2**20
    torch.cuda.reset_peak_memory_stats(device)
    work()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20
    return {"allocated_before_mib": before, "peak_allocated_mib": peak, "peak_delta_mib": peak - before}


def cpu_name() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), for the reports' headers."""
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    return cpu


def cpu_bf16_units() -> list[str]:
    """The CPU's bf16 instruction sets among ``avx512_bf16`` and ``amx_bf16`` (Linux ``/proc/cpuinfo``).

    bf16-mixed is only faster than fp32 on a CPU that has them; the reports' headers say which.
    """
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            flags = next((set(ln.split(":", 1)[1].split()) for ln in f if ln.startswith("flags")), set())
    return [unit for unit in ("avx512_bf16", "amx_bf16") if unit in flags]


CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_features() -> dict[str, bool]:
    """Which of the instruction sets that decide float32 and bf16 speed this CPU has (``/proc/cpuinfo``).

    A report records them beside the model name: speed ratios depend on them (AMX makes bf16
    matrix work several times faster than AVX512-BF16 alone).
    """
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            flags = next((set(ln.split(":", 1)[1].split()) for ln in f if ln.startswith("flags")), set())
    return {name: name in flags for name in CPU_FEATURES}


def worker_command(script: str, *args: str) -> list[str]:
    """The command line that runs ``script`` (a path) with ``args`` in a fresh interpreter."""
    return [sys.executable, os.path.abspath(script), *args]


def run_worker(cmd: list[str], what: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a worker command (with ``env`` added to the environment) and return the JSON object it
    printed on its last stdout line."""
    full_env = {**os.environ, **env} if env else None
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=full_env)
    if out.returncode != 0:
        raise RuntimeError(f"worker {what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_of_processes(cmd: list[str], repeats: int, what: str) -> dict[str, Any]:
    """The median of ``repeats`` fresh-process measurements (the allocator varies by a few MiB).

    Returns the middle run's :func:`measure_peak` figures plus ``peak_delta_mib_samples``, every
    run's ``peak_delta_mib`` in the order they ran.
    """
    return median_run([run_worker(cmd, what) for _ in range(repeats)])


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median ``peak_delta_mib`` (the lower middle one of an even count).

    Returned with ``peak_delta_mib_samples`` added: every run's ``peak_delta_mib``, in order.
    """
    middle = sorted(runs, key=lambda m: m["peak_delta_mib"])[(len(runs) - 1) // 2]
    return middle | {"peak_delta_mib_samples": [m["peak_delta_mib"] for m in runs]}

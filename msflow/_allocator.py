"""Keep freed CPU tensor memory inside the process, so the next batch does not fault it back in.

PyTorch allocates CPU tensors with the C library's ``malloc``. glibc hands large blocks back to
the kernel when they are freed (``munmap``, or trimming the top of the heap), so a flow whose
activations are a few MiB each gets *fresh* pages on every batch: each 4 KiB page costs a page
fault and a zero-fill before the first write. On this project's 2-core VM
(``python benchmarks/allocator.py --rounds 3 --phases eval train``), msflow's Glow evaluation
(3x32x32, batch 64) took 7,336 minor page faults per batch (29 MiB zeroed by the kernel for
nothing) and normflows' training step 68,808; tuned, 25 and 256.

:func:`tune_cpu_allocator` raises glibc's trim threshold and fixes its mmap threshold at the
largest value glibc accepts (32 MiB), so freed blocks are reused by the next batch. It is
process-wide (every library in the process shares ``malloc``) and does nothing on other C
libraries. The cost: freed memory stays resident (up to the trim threshold) until the process
reuses it.

Importing msflow changes nothing. The entry points call it once: the ``msflow`` command
(:func:`msflow.cli.main`) and :func:`msflow.train.train`; a program that uses msflow's models in
its own loop calls ``msflow.tune_cpu_allocator()`` once at its start. ``MSFLOW_TUNE_MALLOC=0`` in
the environment turns every call into a no-op.

Example:
    >>> import msflow
    >>> applied = msflow.tune_cpu_allocator()  # once, at the start of a program
    >>> applied == _applies()  # glibc took both settings wherever it is glibc's malloc (not opted out)
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt(3) parameter numbers (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc rejects larger values on 64-bit systems
_TRIM_THRESHOLD = 1 << 30


def _applies() -> bool:
    """Whether :func:`tune_cpu_allocator` acts here: glibc's malloc, and not ``MSFLOW_TUNE_MALLOC=0``."""
    opted_out = os.environ.get("MSFLOW_TUNE_MALLOC", "1") == "0"
    return not opted_out and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def tune_cpu_allocator(trim_threshold: int = _TRIM_THRESHOLD, mmap_threshold: int = _MMAP_THRESHOLD_MAX) -> bool:
    """Ask glibc to keep up to ``trim_threshold`` bytes of freed heap and to serve blocks below
    ``mmap_threshold`` from the heap; return whether both settings were accepted.

    Returns ``False`` (and changes nothing) off Linux/glibc, or when ``MSFLOW_TUNE_MALLOC=0``.
    Calling it again is harmless: it sets the same values.
    """
    if not _applies():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok_trim = mallopt(_M_TRIM_THRESHOLD, min(trim_threshold, 2**31 - 1)) == 1
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, min(mmap_threshold, _MMAP_THRESHOLD_MAX)) == 1
    return ok_trim and ok_mmap

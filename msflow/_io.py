"""Crash-safe file writes shared by checkpoints, grids and logs."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any


def _current_umask() -> int:
    # The only portable way to read the umask is to set it and put it back.
    mask = os.umask(0)
    os.umask(mask)
    return mask


_TMP_SUFFIX = ".tmp"


def remove_stale_temp_files(folder: Path) -> None:
    """Delete temporary files that a crash during :func:`atomic_write` left in ``folder``."""
    for tmp in folder.glob(f".*{_TMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then atomically move the result to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file owner-only (and writers may recreate it): give it the
        # permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_current_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_text(path: Path, text: str) -> None:
    """Atomically replace ``path`` with ``text``: readers see the old or the new file, never half."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None``: NaN and Infinity are not JSON.

    Example:
        >>> finite_json({"bpd": float("inf"), "n": [1.5, float("nan")]})
        {'bpd': None, 'n': [1.5, None]}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value

"""Checks shared by the readers of users' own data: the folder must be given and exist."""

from __future__ import annotations

import os
from pathlib import Path

from msflow.errors import DataError


def require_root(root: str | os.PathLike[str] | None, name: str, expects: str) -> Path:
    """Return ``root`` as an existing, non-empty directory, else raise :class:`DataError`.

    ``expects`` describes what the folder should hold; it ends every message so the user
    knows what to put there.

    Example:
        >>> import tempfile
        >>> require_root(tempfile.gettempdir(), "folder", "images").is_dir()
        True
    """
    if root is None:
        raise DataError(f"dataset {name!r} reads your own files: pass root=FOLDER holding {expects}")
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"dataset folder {path} does not exist: create it and put {expects} there")
    if not path.is_dir():
        raise DataError(f"dataset root {path} is not a folder: pass the folder holding {expects}")
    if not any(path.iterdir()):
        raise DataError(f"dataset folder {path} is empty: put {expects} there")
    return path

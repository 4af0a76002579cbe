"""One writer per run folder: ``msflow train`` holds an OS lock on its run folder while it runs.

Two trainers writing one folder interleave their metrics and overwrite each other's
checkpoints, so the second refuses at once, naming the first one's process. The lock is an
``fcntl.flock`` on ``RUN/.msflow-lock``: the OS drops it when the holder exits, however it
exits (SIGKILL included), so a crashed run never leaves a stale lock behind. Where ``fcntl`` does
not exist (Windows) no lock is taken.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> with run_lock(folder):
    ...     (folder / LOCK_FILE).exists()
    True
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from msflow.errors import MsflowError

LOCK_FILE = ".msflow-lock"


class RunLocked(MsflowError):
    """Another process is training into the same run folder."""


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock for the block (the folder is created if needed).

    Raises:
        RunLocked: another live process holds it; the message names its PID.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks of this kind
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            raise RunLocked(
                f"{run_dir} is being trained by another msflow process (PID {holder}); wait for it to end, "
                "or train into another folder with --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock

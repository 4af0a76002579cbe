"""One writer per run folder: ``msflow train`` holds an OS lock on its run folder while it runs.

Two trainers writing one folder interleave their metrics and overwrite each other's
checkpoints, so the second refuses at once, naming the first one's process. The lock is an
``fcntl.flock`` on ``RUN/.msflow-lock``: the OS drops it when the holder exits, however it
exits (SIGKILL included), so a crashed run never leaves a stale lock behind; a run folder created
for the lock is removed again if the run wrote nothing into it. Where ``fcntl`` does not exist
(Windows) no lock is taken.

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

_HELD: set[int] = set()  # descriptors of the locks this process holds


def _close_in_child() -> None:
    # A forked child (a data-loader worker) shares the lock's open file, which would keep the
    # folder locked after its parent died, until the child noticed. Its copy of the descriptor
    # is closed (never unlocked: that would release the parent's lock too).
    for fd in _HELD:
        os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class RunLocked(MsflowError):
    """Another process is training into the same run folder."""


def _holder(fd: int) -> str:
    """The PID holding a lock on the file of ``fd``, read from ``/proc/locks`` (Linux), or "unknown".

    Nothing is written into the lock file, so a refused trainer changes nothing in the run folder.
    """
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return "unknown"
    for line in lines:
        fields = line.split()
        if "FLOCK" in fields and inode in fields and "->" not in fields:
            return fields[fields.index(inode) - 1]
    return "unknown"


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
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(
                f"{run_dir} is being trained by another msflow process (PID {_holder(fd)}); wait for it to end, "
                "or train into another folder with --out"
            ) from None
        _HELD.add(fd)
        yield
    finally:
        _HELD.discard(fd)
        os.close(fd)  # closing the descriptor releases the lock
        if created and [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:
            # A run that failed before writing anything leaves no folder behind.
            (run_dir / LOCK_FILE).unlink()
            run_dir.rmdir()

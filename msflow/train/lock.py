"""One writer per run folder: ``msflow train`` holds an OS lock on its run folder while it runs.

Two trainers writing one folder interleave their metrics and overwrite each other's
checkpoints, so the second refuses at once, naming the first one's process. The lock is an
``fcntl.flock`` on ``RUN/.msflow-lock``: the OS drops it when the holder exits, however it
exits (SIGKILL included), so a crashed run never leaves a stale lock behind (a killed run leaves
the empty lock file, which the next trainer simply locks). Where ``fcntl`` does not exist
(Windows) no lock is taken.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp()) / "run"
    >>> with run_lock(folder):
    ...     (folder / LOCK_FILE).exists()
    True
    >>> folder.exists()  # released, and nothing was written: the folder it made is gone too
    False
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


_REGISTERED: list[bool] = []  # the fork hook is installed by the first lock, not at import


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

    The lock file exists only while a trainer holds it: it is removed on release, so a run folder
    is left as the run wrote it (and a folder created for nothing is removed again).

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
    path = run_dir / LOCK_FILE
    fd = _acquire(path, fcntl)
    _HELD.add(fd)
    if not _REGISTERED:  # importing msflow has no process-wide side effects: the hook comes with a lock
        os.register_at_fork(after_in_child=_close_in_child)
        _REGISTERED.append(True)
    try:
        yield
    finally:
        _HELD.discard(fd)
        path.unlink(missing_ok=True)  # still locked: a newcomer that opened it sees it gone and retries
        os.close(fd)  # closing the descriptor releases the lock
        if created and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a run that failed before writing anything leaves no folder behind


def _acquire(path: Path, fcntl: Any) -> int:
    """A descriptor of ``path`` holding its exclusive lock, or :class:`RunLocked`."""
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunLocked(
                f"{path.parent} is being trained by another msflow process (PID {holder}); wait for it to end, "
                "or train into another folder with --out"
            ) from None
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return fd
        os.close(fd)  # locked a file its holder removed as it finished: lock the new one
    raise RunLocked(f"could not lock {path.parent}: other trainers keep starting and ending there; retry")

"""A PID file that is also a lock: ``flock(LOCK_EX | LOCK_NB)`` held for the owner's life.

The kernel releases it when the owner dies (no stale-PID guessing), and the
file names the owner for the message of whoever finds it taken. It is the
owner's alone (mode 0600, made so if an older hollowd left it wider): a reader
that could open it could flock it and keep the daemon from starting
(docs/decisions.md §33).
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path


class NotRegularError(OSError):
    """Something other than a regular file is where the lock should be."""


class HeldError(Exception):
    """The lock is held by another process; *holder* is the PID its file names."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def acquire(path: Path) -> int:
    """Take the lock at *path* and write our PID in it; the fd holds it until closed.

    OSError when *path* is a symlink; :class:`NotRegularError` when something other than a
    regular file is there (a FIFO would hang a plain open)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegularError(f"{path} is not a regular file; remove it")
    if stat.S_IMODE(st.st_mode) != 0o600:
        os.fchmod(fd, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise HeldError(holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd

"""A PID file that is also a lock: ``flock(LOCK_EX | LOCK_NB)`` held for the owner's life.

The kernel releases it when the owner dies (no stale-PID guessing), and the
file names the owner for the message of whoever finds it taken.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class HeldError(Exception):
    """The lock is held by another process; *holder* is the PID its file names."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def acquire(path: Path, mode: int = 0o644) -> int:
    """Take the lock at *path* and write our PID in it; the fd holds it until closed."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise HeldError(holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd

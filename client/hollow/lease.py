"""Leases: a shared flock(2) on ``<ns>/<version>.lock`` while a process has that version.

The producer reclaims a version only if it can take an exclusive lock on the
lockfile without blocking (``LOCK_EX | LOCK_NB`` on a fd of its own, never by
converting a lock: flock(2) NOTES), and it unlinks the state file and then the
lockfile while holding that lock. So:

* a reader that holds its shared lock keeps its version on disk;
* a reader that gets its lock after the producer unlinked the lockfile sees a
  link count of 0 on it (fstat) and knows the version is gone;
* the kernel drops a dead process's locks: ``kill -9`` leaks no lease.

flock locks belong to the open file description, which fork(2) shares: a child
that kept an inherited lease fd would keep the parent's lease alive after the
parent released it (and one ``LOCK_UN`` in either drops both). So a child never
uses an inherited :class:`Lease`: :meth:`Lease.forget` closes the inherited fd
(without unlocking, which would drop the parent's lease) and the child takes a
lease of its own. Releasing is always by ``close``, never ``LOCK_UN``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from hollow.errors import PermissionDeniedError, VersionNotFoundError


def lock_path(ns_dir: Path, version: int) -> Path:
    return ns_dir / f"{version}.lock"


class Lease:
    """A shared lock on one version's lockfile, held until :meth:`release`."""

    __slots__ = ("_fd", "path", "version")

    def __init__(self, ns_dir: Path, version: int) -> None:
        self.version = version
        self.path = lock_path(ns_dir, version)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise VersionNotFoundError(f"version {version} is gone (no lockfile {self.path})") from None
        except PermissionError as e:
            raise PermissionDeniedError.of(self.path, e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # the producer holds it exclusively: it is removing this version right now
            raise VersionNotFoundError(f"version {version} is being reclaimed") from None
        if os.fstat(fd).st_nlink == 0:
            os.close(fd)  # we won the lock after the producer unlinked it: the version is gone
            raise VersionNotFoundError(f"version {version} was reclaimed") from None
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the lease (close; see the module docstring for why never LOCK_UN)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def forget(self) -> None:
        """In a forked child: close the inherited fd without touching the parent's lock."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __repr__(self) -> str:
        return f"<Lease on version {self.version} ({'held' if self.held else 'released'})>"


def try_exclusive(path: Path) -> int | None:
    """For the producer: an fd holding ``LOCK_EX`` on *path*, or None if any process holds a lease.

    Uses a fd of its own and never converts a lock (flock(2): conversion is not atomic).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def holders(path: Path) -> list[int]:
    """PIDs holding a lock on *path*, from /proc/locks (proc(5)). Empty if it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return []
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    pids: list[int] = []
    try:
        with open("/proc/locks") as f:
            lines = f.readlines()
    except OSError:
        return []
    for line in lines:
        parts = line.split()
        if "->" in parts:  # a blocked waiter, not a holder
            continue
        try:
            pid = int(parts[4])
            major, minor, inode = parts[5].split(":")
            where = (int(major, 16), int(minor, 16), int(inode))
        except (IndexError, ValueError):
            continue
        if where == want and pid not in pids:
            pids.append(pid)
    return sorted(pids)

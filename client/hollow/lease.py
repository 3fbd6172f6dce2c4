"""Leases: a shared lock on ``<ns>/<version>.lock`` while a process has that version.

A lease is an open file description lock (fcntl(2) ``F_OFD_SETLK``), a read
lock over the whole file, taken through a read-only fd. Unlike flock(2), whose
``LOCK_EX`` any reader can take through a read-only fd, an OFD *write* lock
needs a fd open for writing, and only the producer may write a lockfile (mode
0640: docs/decisions.md §33). So a reader can hold leases, but it cannot block
another reader's lease or a removal it has no lease on. Each lease also holds
a shared flock(2) on the same fd, best effort, only as a name tag: OFD locks
show no PID in /proc/locks, flocks do (:func:`holders`).

The producer reclaims a version only if it can take the write lock without
blocking (on a fd of its own, never by converting a lock: fcntl(2) and flock(2)
NOTES), and it unlinks the state file and then the lockfile while holding it.
So:

* a reader that holds its shared lock keeps its version on disk;
* a reader that gets its lock after the producer unlinked the lockfile sees a
  link count of 0 on it (fstat) and knows the version is gone;
* the kernel drops a dead process's locks: ``kill -9`` leaks no lease.

OFD locks and flocks belong to the open file description, which fork(2) shares: a child
that kept an inherited lease fd would keep the parent's lease alive after the
parent released it (and one ``LOCK_UN`` in either drops both). So a child never
uses an inherited :class:`Lease`: :meth:`Lease.forget` closes the inherited fd
(without unlocking, which would drop the parent's lease) and the child takes a
lease of its own. Releasing is always by ``close``, never ``LOCK_UN``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
from pathlib import Path

from hollow.errors import CorruptStateError, PermissionDeniedError, VersionNotFoundError

#: ``struct flock`` on 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks), padding.
_FLOCK = struct.Struct("hhqqi4x")
#: Permission bits of a lockfile: the producer writes (to take its write lock), readers read.
LOCK_MODE = 0o640


def lock_path(ns_dir: Path, version: int) -> Path:
    return ns_dir / f"{version}.lock"


#: The ``struct flock`` of a whole-file lock of each kind, packed once.
_WHOLE = {kind: _FLOCK.pack(kind, os.SEEK_SET, 0, 0, 0) for kind in (fcntl.F_RDLCK, fcntl.F_WRLCK)}


def _ofd_lock(fd: int, kind: int) -> bool:
    """Take an OFD lock of *kind* (F_RDLCK, F_WRLCK) on all of *fd*'s file without waiting; False if held."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _WHOLE[kind])
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _open_lockfile(path: Path, flags: int) -> int:
    """Open a lockfile that must be a regular file: O_NOFOLLOW, and O_NONBLOCK so that a FIFO
    planted under its name cannot hang us. FileNotFoundError when it is not there."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CorruptStateError(f"{path}: not a regular file; a lockfile was replaced (remove it)")
    return fd


class Lease:
    """A shared lock on one version's lockfile, held until :meth:`release`."""

    __slots__ = ("_fd", "_path", "version")

    def __init__(self, ns_dir: str | os.PathLike[str], version: int) -> None:
        self.version = version
        # A string (lock_path's), not a Path: pathlib costs a fresh process's first open (§80).
        self._path = path = f"{os.fspath(ns_dir)}/{version}.lock"
        try:
            # O_NONBLOCK: a FIFO planted under its name must not hang us (it is found by the fstat below).
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise VersionNotFoundError(f"version {version} is gone (no lockfile {path})") from None
        except PermissionError as e:
            raise PermissionDeniedError.of(path, e) from e
        except OSError as e:
            raise CorruptStateError(f"{path}: cannot open the lockfile ({e.strerror}); is it a symlink?") from e
        # One fstat, once the lock is held, says both whether it is a lockfile at all and whether the
        # producer unlinked it before we won the lock (a fresh process's first open: docs/decisions.md §80).
        try:
            leased = _ofd_lock(fd, fcntl.F_RDLCK)
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise CorruptStateError(f"{path}: not a regular file; a lockfile was replaced (remove it)")
        if not leased:
            os.close(fd)  # the producer holds its write lock: it is removing this version right now
            raise VersionNotFoundError(f"version {version} is being reclaimed")
        if st.st_nlink == 0:
            os.close(fd)  # we won the lock after the producer unlinked it: the version is gone
            raise VersionNotFoundError(f"version {version} was reclaimed") from None
        with contextlib.suppress(OSError):  # the name tag only (see the module docstring)
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        self._fd: int | None = fd

    @property
    def path(self) -> Path:
        """The lockfile."""
        return Path(self._path)

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
    """For the producer: an fd holding the write lock on *path*, or None if any process holds a lease.

    Uses a fd of its own, open for writing (which readers cannot have), and never converts a lock.
    A lockfile made read-only by an older hollowd is given :data:`LOCK_MODE` first (it is ours).
    """
    try:
        try:
            fd = _open_lockfile(path, os.O_RDWR)
        except PermissionError:
            os.chmod(path, LOCK_MODE, follow_symlinks=False)
            fd = _open_lockfile(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    if not _ofd_lock(fd, fcntl.F_WRLCK):
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
        if where == want and pid > 0 and pid not in pids:  # an OFD lock shows PID -1: its flock names it
            pids.append(pid)
    return sorted(pids)

"""Doorbells: one POSIX named semaphore per following reader, posted on every announcement.

A semaphore wakes one waiter and keeps posts nobody waited for
(sem_overview(7); docs/pitfalls.md 12), so broadcast means one semaphore per
follower, and a post means only "look": the announced version in the
announcement file is the truth. The producer finds followers by name in
/dev/shm (``sem.hollow.<root id>.<namespace id>.<pid>.<n>``: ids, so that the
names tell no one which namespaces exist) and posts each from a helper process
(``hollow.ring``).

Only the follower and the namespace's producer may write a doorbell: it is made
mode 0600, and when the producer is another user (the owner of the namespace
directory), an ACL entry gives that user read and write too (docs/decisions.md
§30). Anyone else can neither post it nor damage it (a truncated semaphore
kills whoever waits on it with SIGBUS). Never unlink a semaphore a live process
may wait on (it would be stranded).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import struct
import threading
import weakref
from pathlib import Path

import posix_ipc
import xxhash

from hollow import ring

SEM_DIR = Path("/dev/shm")  # noqa: S108 - where glibc keeps named semaphores (sem_overview(7))
SEM_SIZE = ring.SEM_SIZE
log = logging.getLogger("hollow")
_serial = itertools.count()
_open_bells: weakref.WeakSet[Doorbell] = weakref.WeakSet()
_bells_lock = threading.Lock()  # a doorbell is made and registered, or removed at exit, not both at once
_exiting: list[bool] = []


class ExitingError(RuntimeError):
    """No doorbell is made once the process has begun to exit."""


def _after_fork_in_child() -> None:
    global _bells_lock
    _bells_lock = threading.Lock()  # a thread of the parent may have held it at fork


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _unlink_at_exit() -> None:
    """A process that exits without closing its datasets still removes its doorbells: their names only.
    A follower thread may still be waiting on one; closing it would unmap the semaphore under that
    wait, and the wait's end would then crash the process (SIGSEGV) as it exits. No doorbell is made
    after this (a follower thread still starting up would leave one behind)."""
    with _bells_lock:
        _exiting.append(True)
        for bell in list(_open_bells):
            bell.unlink()


def root_id(root: Path) -> str:
    """A short stable id of a root directory, so that two roots never share doorbells."""
    return xxhash.xxh3_64_hexdigest(os.path.realpath(root).encode())[:12]


def prefix(root: Path, namespace: str) -> str:
    """``hollow.<root id>.<namespace id>.``: the start of every doorbell name of *namespace* under *root*."""
    return f"hollow.{root_id(root)}.{xxhash.xxh3_64_hexdigest(namespace.encode())[:12]}."


def _acl(owner_perm: int, user: int, user_perm: int) -> bytes:
    """A POSIX access ACL as the ``system.posix_acl_access`` xattr holds it (acl(5); linux/posix_acl_xattr.h):
    the owner, one more user, no group, no others."""
    undefined = 0xFFFFFFFF
    entries = [(0x01, owner_perm, undefined), (0x02, user_perm, user), (0x04, 0, undefined)]
    entries += [(0x10, user_perm, undefined), (0x20, 0, undefined)]  # mask, other
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


class Doorbell:
    """The semaphore a following reader waits on."""

    def __init__(self, root: Path, namespace: str, *, producer_uid: int | None = None) -> None:
        """*producer_uid*: the user that rings it (the namespace directory's owner); default: ours."""
        sweep()
        self.name = f"/{prefix(root, namespace)}{os.getpid()}.{next(_serial)}"
        self.pid = os.getpid()
        with _bells_lock:
            if _exiting:
                raise ExitingError("the process is exiting: no new doorbell")
            self._sem: posix_ipc.Semaphore | None = posix_ipc.Semaphore(
                self.name, posix_ipc.O_CREX, mode=0o600, initial_value=0
            )
            _open_bells.add(self)
        if producer_uid is not None and producer_uid != os.geteuid():
            self._let_ring(producer_uid)

    def _let_ring(self, uid: int) -> None:
        """Give the producer's user (and only it) read and write access, by an ACL entry."""
        path = SEM_DIR / f"sem.{self.name[1:]}"
        try:
            os.setxattr(path, "system.posix_acl_access", _acl(6, uid, 6))
        except OSError as e:
            log.warning(
                "hollow: cannot let uid %d ring doorbell %s (%s: /dev/shm without POSIX ACLs?); "
                "following by inotify and the safety poll only",
                uid,
                path,
                e.strerror,
            )

    def wait(self, timeout: float) -> bool:
        """Block until rung or *timeout* seconds pass; True when rung."""
        sem = self._sem
        if sem is None:
            return False
        try:
            sem.acquire(timeout)
        except posix_ipc.BusyError:
            return False
        # Posts that arrived meanwhile say the same thing: drain them.
        with contextlib.suppress(posix_ipc.BusyError):
            while True:
                sem.acquire(0)
        return True

    def present(self) -> bool:
        """Whether our semaphore still has its name (systemd's RemoveIPC may have removed it)."""
        return (SEM_DIR / f"sem.{self.name[1:]}").exists()

    def ring(self) -> None:
        """Wake our own waiter (used by the inotify path and by close)."""
        if self._sem is not None:
            self._sem.release()

    def unlink(self) -> None:
        """Remove the name (if this process made it), and keep the semaphore itself open and mapped."""
        sem = self._sem
        if sem is not None and self.pid == os.getpid():
            with contextlib.suppress(posix_ipc.ExistentialError):
                sem.unlink()

    def close(self, *, unlink: bool = True) -> None:
        """Close; unlink too unless this object was inherited across fork (the parent's name)."""
        sem, self._sem = self._sem, None
        if sem is None:
            return
        if unlink and self.pid == os.getpid():
            with contextlib.suppress(posix_ipc.ExistentialError):
                sem.unlink()
        sem.close()


def sweep() -> int:
    """Remove our own user's doorbells of dead processes under any root (those a producer never
    visits again once its root is gone). Others' are left alone: /dev/shm is sticky."""
    _, dead = ring.doorbells("sem.hollow.")
    removed = 0
    me = os.geteuid()
    for entry in dead:
        path = SEM_DIR / entry
        with contextlib.suppress(OSError):  # gone meanwhile, or a directory planted under the name
            if path.lstat().st_uid == me:
                path.unlink()
                removed += 1
    return removed


def ringer(root: Path, namespace: str) -> ring.Ringer:
    """The producer's ringer of *namespace*'s followers under *root* (``hollow.ring``)."""
    return ring.Ringer("sem." + prefix(root, namespace))


def followers(root: Path, namespace: str) -> list[int]:
    """PIDs of live processes following *namespace*, by their doorbells (ones other users planted do not count)."""
    live, _ = ring.doorbells("sem." + prefix(root, namespace))
    return sorted({p for p in (ring.pid_of(e) for e, _ in live) if p is not None})

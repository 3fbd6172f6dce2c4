"""Doorbells: one POSIX named semaphore per following reader, posted on every announcement.

A semaphore wakes one waiter and keeps posts nobody waited for
(sem_overview(7); docs/pitfalls.md 12), so broadcast means one semaphore per
follower, and a post means only "look": the announced version in the
announcement file is the truth. The producer finds followers by name in
/dev/shm (``sem.hollow.<root id>.<namespace>.<pid>.<n>``), posts each, and
removes those whose process is gone.

Never unlink a semaphore a live process may wait on (it would be stranded), and
treat a ``sem.*`` file that is not 32 bytes as corrupt rather than map it
(posix_ipc #51: SIGBUS). Semaphores are made mode 0666 so that a daemon running
as another user can post them; the worst a stranger can do with one is wake a
reader that then finds nothing new.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import weakref
from pathlib import Path

import posix_ipc
import xxhash

SEM_DIR = Path("/dev/shm")  # noqa: S108 - where glibc keeps named semaphores (sem_overview(7))
SEM_SIZE = 32  # sizeof(sem_t) on Linux
_serial = itertools.count()
_open_bells: weakref.WeakSet[Doorbell] = weakref.WeakSet()


@atexit.register
def _unlink_at_exit() -> None:
    """A process that exits without closing its datasets still removes its doorbells."""
    for bell in list(_open_bells):
        bell.close()


def root_id(root: Path) -> str:
    """A short stable id of a root directory, so that two roots never share doorbells."""
    return xxhash.xxh3_64_hexdigest(os.path.realpath(root).encode())[:12]


def prefix(root: Path, namespace: str) -> str:
    return f"hollow.{root_id(root)}.{namespace}."


class Doorbell:
    """The semaphore a following reader waits on."""

    def __init__(self, root: Path, namespace: str) -> None:
        sweep()
        self.name = f"/{prefix(root, namespace)}{os.getpid()}.{next(_serial)}"
        self._sem: posix_ipc.Semaphore | None = posix_ipc.Semaphore(
            self.name, posix_ipc.O_CREX, mode=0o666, initial_value=0
        )
        with contextlib.suppress(OSError):
            # undo the umask: the daemon may be another user (see the module docstring)
            os.chmod(SEM_DIR / f"sem.{self.name[1:]}", 0o666)  # noqa: S103
        self.pid = os.getpid()
        _open_bells.add(self)

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

    def close(self, *, unlink: bool = True) -> None:
        """Close; unlink too unless this object was inherited across fork (the parent's name)."""
        sem, self._sem = self._sem, None
        if sem is None:
            return
        if unlink and self.pid == os.getpid():
            with contextlib.suppress(posix_ipc.ExistentialError):
                sem.unlink()
        sem.close()


class Ringer:
    """The producer's side: posts every follower's doorbell of one namespace.

    Keeps the semaphores it opened between announcements (sem_open maps a page
    each time), drops those whose name is gone, and removes those of dead
    processes and files that are not 32 bytes.
    """

    def __init__(self, root: Path, namespace: str) -> None:
        self.start = "sem." + prefix(root, namespace)
        self._open: dict[str, posix_ipc.Semaphore] = {}

    def ring(self) -> tuple[int, int]:
        """Post every live follower; returns (rung, removed)."""
        try:
            names = {n for n in os.listdir(SEM_DIR) if n.startswith(self.start)}
        except FileNotFoundError:
            names = set()
        for gone in set(self._open) - names:
            self._open.pop(gone).close()
        rung = removed = 0
        for entry in names:
            pid = _pid_of(entry)
            if pid is None:
                continue
            if not _alive(pid) or (entry not in self._open and _corrupt(SEM_DIR / entry)):
                stale = self._open.pop(entry, None)
                if stale is not None:
                    stale.close()
                with contextlib.suppress(FileNotFoundError):
                    (SEM_DIR / entry).unlink()
                removed += 1
                continue
            sem = self._open.get(entry) or self._adopt(entry)
            if sem is not None:
                sem.release()
                rung += 1
        return rung, removed

    def _adopt(self, entry: str) -> posix_ipc.Semaphore | None:
        try:
            sem = posix_ipc.Semaphore("/" + entry[len("sem.") :])
        except (posix_ipc.ExistentialError, posix_ipc.PermissionsError):
            return None  # closed meanwhile, or not ours to post
        self._open[entry] = sem
        return sem

    def close(self) -> None:
        for sem in self._open.values():
            sem.close()
        self._open.clear()


def ring_all(root: Path, namespace: str) -> tuple[int, int]:
    """Post every follower's doorbell for *namespace* under *root* once; returns (rung, removed)."""
    ringer = Ringer(root, namespace)
    try:
        return ringer.ring()
    finally:
        ringer.close()


def sweep() -> int:
    """Remove the doorbells of dead processes under any root (those a producer never visits
    again once its root is gone). Only our own user's can be removed: /dev/shm is sticky."""
    removed = 0
    try:
        names = [n for n in os.listdir(SEM_DIR) if n.startswith("sem.hollow.")]
    except FileNotFoundError:
        return 0
    for entry in names:
        pid = _pid_of(entry)
        if pid is not None and not _alive(pid):
            with contextlib.suppress(FileNotFoundError, PermissionError):
                (SEM_DIR / entry).unlink()
                removed += 1
    return removed


def followers(root: Path, namespace: str) -> list[int]:
    """PIDs of live processes following *namespace* (by their doorbells)."""
    start = "sem." + prefix(root, namespace)
    try:
        names = [n for n in os.listdir(SEM_DIR) if n.startswith(start)]
    except FileNotFoundError:
        return []
    return sorted({p for p in map(_pid_of, names) if p is not None and _alive(p)})


def _pid_of(entry: str) -> int | None:
    parts = entry.rsplit(".", 2)
    try:
        return int(parts[-2])
    except (IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _corrupt(path: Path) -> bool:
    try:
        return path.stat().st_size != SEM_SIZE
    except FileNotFoundError:
        return False

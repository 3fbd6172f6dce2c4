"""The second path for announcements: inotify on ``<ns>/announce/``, through watchdog.

One watchdog observer (one inotify instance, one thread) serves every Dataset
of the process; each Dataset schedules its namespace directory and gets called
when ``announced`` is replaced. inotify(7) coalesces and can overflow, and
writes through mmap produce no event at all, so an event only says "look":
the caller re-reads the announcement. Publishing by rename gives IN_MOVED_TO,
which watchdog delivers as ``on_moved`` with the new name as ``dest_path``
(docs/pitfalls.md 14).

inotify instances are limited (fs.inotify.max_user_instances, 128 per user by
default). When none can be had, :func:`watch` logs a warning and returns None;
the Dataset still follows through its doorbell and the safety poll.

Threads do not survive fork(2): a child gets a fresh observer on first use.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hollow import layout

log = logging.getLogger("hollow")


def _handler(callback: Callable[[], None]) -> Any:
    """A watchdog handler calling *callback* when ``announced`` is replaced.

    watchdog is imported here, on the first watch, not with ``hollow``: it costs
    about 25 ms of import time that processes which never follow need not pay.
    """
    from watchdog.events import FileSystemEvent, FileSystemEventHandler  # noqa: PLC0415

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            path = str(getattr(event, "dest_path", "") or event.src_path)
            if os.path.basename(path) == layout.ANNOUNCED:
                callback()

    return Handler()


class _Shared:
    """The process's observer and how many watches it serves."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.observer: Any = None
        self.users = 0
        self.pid = os.getpid()


_shared = _Shared()


def _after_fork_in_child() -> None:
    """The parent's observer thread does not exist here: start afresh, and close the parent's
    inotify descriptors, which would otherwise stay open (and, with watchdog 7's one shared
    inotify instance per process, be reused here without a thread reading them)."""
    global _shared
    old, _shared = _shared, _Shared()
    fds: set[int] = set()
    for emitter in list(getattr(old.observer, "emitters", ()) or ()):
        fds.update(_inotify_fds(getattr(emitter, "_inotify", None)))
    inotify_c = sys.modules.get("watchdog.observers.inotify_c")
    shared_fd = getattr(inotify_c, "InotifyFD", None)
    if shared_fd is not None and hasattr(shared_fd, "_instance"):
        fds.update(_inotify_fds(shared_fd._instance))
        shared_fd._instance = None
        shared_fd._global_lock = threading.Lock()  # a parent's thread may have held it at fork
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _inotify_fds(obj: Any, depth: int = 3) -> set[int]:
    """The inotify descriptors (and watchdog 7's wake-up pipe) of a watchdog object, whatever its version:
    ``_inotify_fd`` ints, found through ``_inotify``/``_inotify_fd`` attributes."""
    found: set[int] = set()
    if obj is None or depth == 0:
        return found
    for name in ("_inotify_fd", "_kill_r", "_kill_w"):
        value = getattr(obj, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            found.add(value)
        elif value is not None and name == "_inotify_fd":
            found |= _inotify_fds(value, depth - 1)
    found |= _inotify_fds(getattr(obj, "_inotify", None), depth - 1)
    return found


os.register_at_fork(after_in_child=_after_fork_in_child)


class Watch:
    """One scheduled watch; :meth:`close` unschedules it (and stops the observer with the last one)."""

    def __init__(self, shared: _Shared, handle: Any) -> None:
        self._shared = shared
        self._handle = handle

    def close(self) -> None:
        shared, handle = self._shared, self._handle
        self._handle = None
        if handle is None or shared is not _shared:
            return  # inherited across fork: the observer it belonged to is not in this process
        with shared.lock:
            observer = shared.observer
            if observer is None:
                return
            with contextlib.suppress(KeyError):
                observer.unschedule(handle)
            shared.users -= 1
            if shared.users == 0:
                shared.observer = None
                observer.stop()
                observer.join()


def watch(announce_dir: Path, callback: Callable[[], None]) -> Watch | None:
    """Call *callback* whenever ``announce_dir/announced`` is replaced; None if inotify is unavailable."""
    from watchdog.events import FileMovedEvent  # noqa: PLC0415 - see _handler
    from watchdog.observers import Observer  # noqa: PLC0415

    shared = _shared
    with shared.lock:
        try:
            if shared.observer is None:
                observer = Observer()
                observer.daemon = True
                observer.start()
                shared.observer = observer
            # Moves only (an announcement is a rename): without a filter inotify reports every
            # open and close in the directory, and each attach would wake every follower.
            handle = shared.observer.schedule(
                _handler(callback), str(announce_dir), recursive=False, event_filter=[FileMovedEvent]
            )
        except OSError as e:
            log.warning(
                "hollow: no inotify watch on %s (%s); following through the doorbell and the safety poll only. "
                "Raise fs.inotify.max_user_instances or max_user_watches if this is unexpected.",
                announce_dir,
                e,
            )
            if shared.observer is not None and shared.users == 0:
                shared.observer.stop()
                shared.observer.join()
                shared.observer = None
            return None
        shared.users += 1
        return Watch(shared, handle)

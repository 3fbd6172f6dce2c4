"""Dataset and Snapshot: the reader's two nouns.

A :class:`Dataset` is a namespace opened by one process. By default it follows
announcements in a background thread: the producer rings the dataset's
doorbell (a POSIX semaphore, see ``hollow.doorbell``), inotify on the
namespace directory is a second path (``hollow.watch``), and a slow safety
poll covers the case where both fail. The announced version in the
announcement file is always the truth; a wake-up only says "look".

``ds.snapshot()`` hands out the newest attached version as a :class:`Snapshot`,
which keeps that one version for the whole ``with`` block, across every record
type. A new version is attached (and leased, ``hollow.lease``) before it is
handed out, so ``snapshot()`` never waits for I/O; an old version is released
as soon as the last snapshot of it ends.

Fork-safe: a child process never uses its parent's leases, doorbell, watch or
thread. On its first call after fork(2) a Dataset takes leases of its own and
starts following again (gunicorn ``--preload`` works).
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

from hollow import layout, schema, watch
from hollow.doorbell import Doorbell, ExitingError
from hollow.errors import (
    ClosedError,
    CorruptStateError,
    Error,
    NamespaceNotFoundError,
    PermissionDeniedError,
    UntrustedDirectoryError,
    VersionNotFoundError,
)
from hollow.lease import Lease
from hollow.state import StateFile
from hollow.view import TypeView

_RACE_RETRIES = 5
#: Seconds the follower thread leaves the opening thread alone (its doorbell, watchdog's import and
#: observer would compete with it for the GIL) before it makes its doorbell and sets up inotify, then
#: looks at the announcement once for anything announced meanwhile (docs/decisions.md §61).
WATCH_DELAY = 0.05
#: Seconds between safety polls when neither the doorbell nor inotify says anything.
POLL_INTERVAL = 5.0
log = logging.getLogger("hollow")


class _Fork:
    """Counts forks, so a Dataset can tell it is running in a child (os.register_at_fork)."""

    generation = 0
    datasets: ClassVar[weakref.WeakSet[Dataset]] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    _Fork.generation += 1
    for ds in list(_Fork.datasets):
        # A lock held by a parent's thread at fork time would stay locked forever here.
        ds._new_locks()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Attached:
    """One version attached by this process: its mapping, its lease, and its open snapshots."""

    __slots__ = ("lease", "state", "users", "version")

    def __init__(self, state: StateFile, lease: Lease | None) -> None:
        self.state = state
        self.lease = lease
        self.version = state.version
        self.users = 0


class Snapshot:
    """One version of a dataset, held for the span of a block.

    ``snap["Movie"]`` is a :class:`~hollow.view.TypeView`; ``snap.version`` the
    version number. Use as a context manager; after ``close()`` it raises
    :class:`~hollow.ClosedError`.
    """

    __slots__ = ("_att", "_ds", "version")

    def __init__(self, ds: Dataset, att: _Attached) -> None:
        self._ds: Dataset | None = ds
        self._att: _Attached | None = att
        self.version = att.version

    def __getitem__(self, type_name: str) -> TypeView:
        att = self._att
        if att is None:
            raise ClosedError(f"snapshot of version {self.version} is closed")
        try:
            return att.state.type(type_name)
        except CorruptStateError as e:
            if self._ds is not None:
                self._ds._failed_on_use(att, e)
            raise

    @property
    def types(self) -> list[str]:
        """Names of the record types in this version."""
        return self._live().type_names

    @property
    def published_at_ns(self) -> int:
        return self._live().published_at_ns

    @property
    def parent_version(self) -> int:
        """The version this one was produced after (0 for a namespace's first)."""
        return self._live().header.parent_version

    @property
    def base(self) -> tuple[int, int] | None:
        """(version, bytes) of the base file this version is built on and shares with others;
        None when the version's file holds every record itself."""
        base = self._live().base
        return None if base is None else (base.version, base.header.file_length)

    @property
    def schema_source(self) -> str:
        """The text of the schema the producer published this version with."""
        return str(self._live().schema_source)

    def _live(self) -> StateFile:
        if self._att is None:
            raise ClosedError(f"snapshot of version {self.version} is closed")
        return self._att.state

    def close(self) -> None:
        """End the snapshot; its version may then be released. Idempotent."""
        att, ds = self._att, self._ds
        self._att = self._ds = None
        if att is not None and ds is not None:
            ds._release(att)

    __del__ = close

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._att is None else "open"
        return f"<Snapshot version {self.version} ({state})>"


class Dataset:
    """A namespace opened for reading. Create it with :func:`hollow.open`."""

    _launched: _Launch | None  # the follower thread's start, under way or done (_start_following)
    _changed: threading.Condition | None  # on _lock, made by the first wait_for (_notify_waiters)
    # Made with the follower thread, by the helper that starts it (_launch): an open makes neither.
    _wake: threading.Event | None  # the head start ends, or it has no doorbell and is rung
    _armed: threading.Event | None  # the follower has its doorbell and watch (wait_following)

    def __init__(
        self,
        namespace: str,
        *,
        root: str | os.PathLike[str] | None = None,
        schema: str | os.PathLike[str] | Any = None,
        follow: bool = True,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.namespace = layout.check_namespace(namespace)
        # Strings on the attach path: a fresh process's first pathlib operations cost 5-35 µs each
        # (docs/decisions.md §80); ``root`` and ``dir`` are made as Paths when asked for.
        self._root = layout.root_str(root)
        self._dir = os.path.join(self._root, namespace)
        self._announced = f"{self._dir}/{layout.ANNOUNCE_DIR}/{layout.ANNOUNCED}"
        self.follow = follow
        self.poll_interval = poll_interval
        self._reader_schema = _reader_schema(schema)
        self._new_locks()
        self._attached: dict[int, _Attached] = {}
        self._current: _Attached | None = None
        self._on_pin = False  # the current version came from an operator pin
        self._pinned: int | None = None  # reader pin
        self._announce_stamp: tuple[int, int] | None = None
        self._read_stamp: tuple[int, int] | None = None  # (inode, mtime) of the announcement last read
        self._previous: int | None = None  # the version current before this one
        self._refused: int | None = None  # a version that failed on first use: not followed again
        self._callbacks: list[Callable[[int], None]] = []
        self._closed = False
        self._generation = _Fork.generation
        self._doorbell: Doorbell | None = None
        self._watch: watch.Watch | None = None
        self._thread: threading.Thread | None = None
        #: The error that kept this process from following the last announcement, if any.
        self.last_error: Error | None = None
        _Fork.datasets.add(self)
        self._producer_uid = self._check_tree().st_uid
        self._tree_just_checked = True  # the first attach, just below, need not check it again
        self._refresh(initial=True)
        if follow:
            self._start_following()

    # -- the public surface -------------------------------------------------

    @property
    def root(self) -> Path:
        """The root directory the namespace is under."""
        return Path(self._root)

    @property
    def dir(self) -> Path:
        """The namespace's directory."""
        return Path(self._dir)

    @property
    def version(self) -> int:
        """The version the next snapshot would get."""
        return self._now().version

    def snapshot(self) -> Snapshot:
        """The newest attached version, held until the snapshot's block ends."""
        att = self._now()
        with self._lock:
            att = self._current or att
            att.users += 1
        return Snapshot(self, att)

    def attach(self, version: int) -> Snapshot:
        """A snapshot of one given version, announced or not (it must still exist)."""
        self._check()
        att = self._attach(version)
        with self._lock:
            att.users += 1
        return Snapshot(self, att)

    def wait_for(self, version: int, timeout: float | None = None) -> bool:
        """Block until this dataset is on *version* or later; False on timeout."""
        self._check()
        if not self.follow:
            raise Error("wait_for needs a following dataset: hollow.open(..., follow=True)")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            changed = self._changed
            if changed is None:  # the first waiter makes it (docs/decisions.md §110)
                changed = self._changed = threading.Condition(self._lock)
            while self._current is None or self._current.version < version:
                if self._closed:
                    raise ClosedError(f"dataset {self.namespace!r} was closed while waiting")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                changed.wait(left)
            return True

    def wait_following(self, timeout: float | None = None) -> bool:
        """Block until the follower thread is set up: its doorbell made and inotify watching (or found
        unavailable). From then on an announcement wakes it at once, and ``hollow status`` counts this
        process among the followers. ``hollow.open`` does not wait for this, and need not: a version
        announced meanwhile is followed all the same (docs/decisions.md §61). False on timeout, and at
        once when there is no follower thread (it could not be started: that is logged)."""
        self._check()
        if not self.follow:
            raise Error("wait_following needs a following dataset: hollow.open(..., follow=True)")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = 0.05 if deadline is None else max(0.0, min(0.05, deadline - time.monotonic()))
            with self._lock:
                thread, launched, armed = self._thread, self._launched, self._armed
            if armed is not None:  # (made by the helper that starts the thread, with the thread)
                if armed.wait(step):
                    return True
            elif launched is not None and launched.done.acquire(timeout=step):
                launched.done.release()  # the helper is done: look again
                continue
            started = launched is None or not launched.done.locked()
            if started and (thread is None or not thread.is_alive()):
                if self._launch_failed:
                    self._say_launch_failed()
                return armed is not None and armed.is_set()  # no follower thread (it could not start, or ended)
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def on_update(self, callback: Callable[[int], None]) -> Callable[[int], None]:
        """Call ``callback(version)`` (in the follower thread) after each switch to a new version."""
        self._callbacks.append(callback)
        return callback

    def pin(self, version: int) -> None:
        """Stay on *version* in this process, whatever is announced, until :meth:`unpin`."""
        self._check()
        att = self._attach(version)
        with self._lock:
            self._pinned = version
            self._switch(att)
        self._notify(version)

    def unpin(self) -> None:
        """Follow the announcements again (moves to the announced version now)."""
        self._check()
        self._pinned = None
        self._announce_stamp = None
        self._refresh()

    @property
    def pinned(self) -> int | None:
        """The version this process pinned with :meth:`pin`, if any."""
        return self._pinned

    def close(self) -> None:
        """Stop following and drop this process's hold on the namespace.

        Snapshots still open keep their version until they end. Idempotent.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._notify_waiters()
        self._stop_following()
        with self._lock:
            current, self._current = self._current, None
            if current is not None and current.users == 0:
                self._drop(current)

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        cur = self._current
        return f"<Dataset {self.namespace} at {self.root}, version {cur.version if cur else None}>"

    # -- following ----------------------------------------------------------

    def _start_following(self) -> None:
        """Start the follower thread without waiting for it: it makes its doorbell and sets up inotify
        itself, so that ``hollow.open`` and the first snapshot wait neither for those nor for the
        thread to be scheduled (``Thread.start`` waits until the new thread runs: milliseconds on a
        busy machine), docs/decisions.md §21 and §61. A helper thread of the ``_thread`` module (no
        waiting, no Thread object) makes the ``threading.Thread`` and starts it: making one costs the
        opener about 40 µs more (docs/decisions.md §80)."""
        launched = _Launch()
        with self._lock:
            self._thread, self._launched = None, launched
        _thread.start_new_thread(_launch, (self, launched))

    def _start_watch(self) -> None:
        """In the follower thread: inotify on the announcement's directory, a second path after the doorbell."""
        w = watch.watch(self.dir / layout.ANNOUNCE_DIR, self._ring)
        with self._lock:
            if self._stopped() or self._thread is not threading.current_thread():
                stale = True
            else:
                self._watch, stale = w, False
        if stale and w is not None:
            w.close()

    def _ring(self) -> None:
        bell = self._doorbell
        if bell is not None:
            bell.ring()
        else:
            wake = self._wake  # no doorbell (yet, or it could not be made): the thread waits on this
            if wake is not None:  # (None: no thread yet, and it looks at the announcement once it runs)
                wake.set()

    def _check_tree(self) -> os.stat_result:
        """The namespace directory's lstat, once the root and it are found trustworthy (layout.check_trusted)."""
        try:
            return layout.check_namespace_tree(self._dir)
        except PermissionError as e:
            raise PermissionDeniedError.of(self.dir.parent, e) from e
        except (FileNotFoundError, NotADirectoryError):
            raise NamespaceNotFoundError(
                f"namespace {self.namespace!r} does not exist under {self.root} "
                "(is hollowd running, and is HOLLOW_ROOT or root= the same for both?)"
            ) from None

    def _make_doorbell(self) -> Doorbell:
        """A doorbell that the namespace's producer (the owner of its directory) may ring."""
        return Doorbell(self.root, self.namespace, producer_uid=self._producer_uid)

    def _new_doorbell(self, old: Doorbell) -> Doorbell:
        """Replace a doorbell whose name was removed under us (RemoveIPC; docs/pitfalls.md 17)."""
        log.warning("hollow: %s: doorbell %s was removed; making a new one", self.namespace, old.name)
        bell = self._make_doorbell()
        with self._lock:
            self._doorbell = bell
        old.close(unlink=False)
        return bell

    def _stop_following(self) -> None:
        with self._lock:
            thread, launched = self._thread, self._launched
            self._thread = self._launched = None
        if launched is not None:
            with launched.done:  # the helper has started the thread (or failed to, or found it not wanted)
                pass
            thread = launched.thread
        wake = self._wake
        if wake is not None:
            wake.set()  # the end of the thread's head start
        if thread is not None:
            while thread.is_alive():
                self._ring()  # the thread may have made or replaced its doorbell meanwhile
                thread.join(0.1)
        with self._lock:
            w, self._watch = self._watch, None
        if w is not None:
            w.close()
        with self._lock:
            bell, self._doorbell = self._doorbell, None
        if bell is not None:
            bell.close()

    def _follow_loop(self, wake: threading.Event, armed: threading.Event) -> None:
        """The follower thread. The opener gets a head start; then the doorbell, inotify, and one look
        at the announcement: anything announced before the doorbell existed is seen by that look,
        anything after rings it (docs/decisions.md §61). *wake* and *armed* are the dataset's
        ``_wake`` and ``_armed``, made with this thread (:func:`_launch`)."""
        wake.wait(WATCH_DELAY)
        bell = self._first_doorbell()
        if self._stopped():
            return
        self._start_watch()
        armed.set()
        rung = True  # the first look
        while not self._stopped():
            if not rung and bell is not None and not bell.present():
                bell = self._new_doorbell(bell)
            try:
                self._refresh()
            except Error as e:
                log.error("hollow: %s: cannot follow: %s", self.namespace, str(e))
            except Exception:  # keep following whatever one refresh did
                log.exception("hollow: %s: follower error", self.namespace)
            if bell is not None:
                rung = bell.wait(self.poll_interval)
            else:
                rung = wake.wait(self.poll_interval)
                wake.clear()

    def _first_doorbell(self) -> Doorbell | None:
        """In the follower thread: its doorbell; None if stopped meanwhile or it cannot be made (then
        inotify and the safety poll remain)."""
        if self._stopped():
            return None
        try:
            bell = self._make_doorbell()
        except ExitingError:
            return None
        except Exception as e:  # noqa: BLE001 - posix_ipc's errors, OSError: /dev/shm full or not ours
            log.warning(
                "hollow: %s: cannot make a doorbell (%s: %s); following by inotify and the safety poll only",
                self.namespace,
                type(e).__name__,
                e,
            )
            return None
        with self._lock:
            stale = self._stopped() or self._thread is not threading.current_thread()
            if not stale:
                self._doorbell = bell
        if stale:
            bell.close()
            return None
        return bell

    def _now(self) -> _Attached:
        """The current version; on a non-following dataset, after a cheap check of the announcement."""
        self._check()
        if not self.follow and self._pinned is None:
            self._refresh()
        current = self._current
        if current is None:
            raise ClosedError(f"dataset {self.namespace!r} is closed")
        return current

    def _new_locks(self) -> None:
        # Reentrant: Snapshot.__del__ may run (GC) while this thread holds it.
        self._lock = threading.RLock()
        self._changed = None  # (docs/decisions.md §110: an open that no one waits on makes none)
        self._refreshing = threading.Lock()
        self._rearming = threading.Lock()  # one thread re-arms a forked child's dataset (_check)
        self._wake = self._armed = None  # (made with the follower thread: _launch)
        self._launched = None
        self._launch_failed: list[BaseException] = []  # the follower thread could not be started

    def _say_launch_failed(self) -> None:
        with contextlib.suppress(IndexError):
            e = self._launch_failed.pop()
            log.error("hollow: %s: cannot start the follower thread (%s); this process does not follow "
                      "new versions", self.namespace, e)  # fmt: skip

    def _stopped(self) -> bool:
        return self._closed  # a call, so that type checkers do not assume it cannot change

    def _check(self) -> None:
        """Every public call starts here: closed is an error; a forked child re-arms first."""
        if self._closed:
            raise ClosedError(f"dataset {self.namespace!r} is closed")
        if self._launch_failed:
            self._say_launch_failed()
        if self._generation != _Fork.generation:
            with self._rearming:  # several threads of a child may make its first call at once
                if self._generation != _Fork.generation:
                    try:
                        self._after_fork()
                    finally:
                        self._generation = _Fork.generation

    def _refresh(self, *, initial: bool = False) -> None:
        """Move to the announced version if it changed.

        A version that cannot be attached (corrupt, truncated, foreign) is not
        fatal once this process has a good one: it stays on that one, logs the
        error, keeps it in :attr:`last_error`, and tries again when the
        announcement changes (docs/design.md invariant 5).
        """
        stamp: tuple[int, int] | None = None
        if not initial:  # (the first look needs no stat: the stamp comes from the file it reads)
            path = self._announced  # layout.announcement_path
            try:
                st = os.stat(path)
                stamp = (st.st_ino, st.st_mtime_ns)
            except FileNotFoundError:
                pass
            except PermissionError as e:
                raise PermissionDeniedError.of(path, e) from e
            if stamp == self._announce_stamp:
                return
        with self._refreshing:
            if self._pinned is not None or self._closed:
                return
            try:
                att, pinned = self._follow_announcement()
            except (
                CorruptStateError, VersionNotFoundError, PermissionDeniedError, UntrustedDirectoryError,
                NamespaceNotFoundError,
            ) as e:  # fmt: skip
                if self._current is None:
                    raise
                # Kept and logged without its traceback: its frames would keep the bad file mapped.
                self.last_error = _detached(e)
                log.error("hollow: %s; staying on version %d", str(e), self._current.version)
                self._announce_stamp = stamp
                return
            if att is not None or self._refused is None:
                self.last_error = None  # (a refused version's error stays until something else is followed)
            if att is not None:
                self._refused = None
            self._announce_stamp = self._read_stamp if initial else stamp
            if att is None:
                return
            with self._lock:
                if self._pinned is not None or self._stopped():
                    self._release_unused(att)
                    return
                self._on_pin = pinned
                self._switch(att)
        self._notify(att.version)

    def _follow_announcement(self) -> tuple[_Attached | None, bool]:
        """(the newly attached announced version or None if nothing changed, whether it is pinned)."""
        for attempt in range(_RACE_RETRIES):
            announcement, self._read_stamp = layout.read_announcement_stamped(self._dir)
            if announcement is None:
                raise NamespaceNotFoundError(f"namespace {self.namespace!r} has nothing announced yet")
            current = self._current
            if announcement.version == self._refused and current is not None:
                return None, self._on_pin  # failed on first use here; wait for the next announcement
            if current is not None:
                if current.version == announcement.version:
                    self._on_pin = announcement.pinned
                    return None, announcement.pinned
                if announcement.version < current.version and not (announcement.pinned or self._on_pin):
                    log.warning(
                        "hollow: %s: announced version %d is older than %d and not pinned; staying",
                        self.namespace,
                        announcement.version,
                        current.version,
                    )
                    return None, False
            try:
                return self._attach(announcement.version), announcement.pinned
            except VersionNotFoundError:
                # Reclaimed between reading the announcement and leasing it:
                # the announcement has moved on since; read it again.
                if attempt == _RACE_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _switch(self, att: _Attached) -> None:
        """Make *att* current (caller holds the lock); release the old one if no snapshot uses it."""
        old, self._current = self._current, att
        if old is not None and old is not att:
            self._previous = old.version
        if old is not None and old is not att and old.users == 0:
            self._drop(old)
        self._notify_waiters()

    def _notify_waiters(self) -> None:
        """Wake every :meth:`wait_for` (caller holds the lock). The condition is made by the first of
        them: an open that no one waits on makes none (docs/decisions.md §110)."""
        changed = self._changed
        if changed is not None:
            changed.notify_all()

    def _notify(self, version: int) -> None:
        for callback in list(self._callbacks):
            try:
                callback(version)
            except Exception:
                log.exception("hollow: %s: on_update callback failed", self.namespace)

    def _failed_on_use(self, att: _Attached, error: CorruptStateError) -> None:
        """A version that passed its checks failed when a type was first used: if it is current,
        go back to the version before it (when that still exists) and follow it no more."""
        # A copy without the traceback: the raised error's frames keep the bad file mapped.
        self.last_error = CorruptStateError(str(error))
        log.error("hollow: %s: version %d fails on use: %s", self.namespace, att.version, str(error))
        previous = self._previous
        if att is not self._current or previous is None or self._pinned is not None:
            return
        self._refused = att.version
        try:
            good = self._attach(previous)
        except Error as e:
            log.error("hollow: %s: cannot go back to version %d: %s", self.namespace, previous, str(e))
            return
        with self._lock:
            if self._current is att:
                self._switch(good)
                self._previous = None
            else:
                self._release_unused(good)
        log.warning("hollow: %s: back on version %d", self.namespace, previous)
        self._notify(previous)

    # -- attaching and releasing versions ----------------------------------

    def _attach(self, version: int) -> _Attached:
        with self._lock:
            att = self._attached.get(version)
            if att is not None:
                return att
        path = f"{self._dir}/{layout.state_name(version)}"
        if self._tree_just_checked:
            self._tree_just_checked = False
        else:
            self._check_tree()  # before trusting what is in it: it may have been changed since open
        try:
            lease = _lease(self._dir, version)
        except VersionNotFoundError as e:
            if os.path.exists(path):
                raise  # being reclaimed right now
            have = ", ".join(map(str, layout.list_versions(self.dir))) or "none"
            raise VersionNotFoundError(
                f"{self.namespace} version {version} does not exist under {self.root} (versions: {have})"
            ) from e
        try:
            state = StateFile(path, namespace=self.namespace, reader_schema=self._reader_schema)
            # Checked whole before it can become current (the follower thread pays, not a request);
            # a file seen before (a base shared by versions) is not hashed again (StateFile.verify).
            state.verify()
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        att = _Attached(state, lease)
        with self._lock:
            existing = self._attached.setdefault(version, att)
        if existing is not att and lease is not None:
            lease.release()  # another thread attached it first
        return existing

    def _release(self, att: _Attached) -> None:
        with self._lock:
            att.users -= 1
            if att.users <= 0 and att is not self._current:
                self._drop(att)

    def _release_unused(self, att: _Attached) -> None:
        if att.users <= 0 and att is not self._current:
            self._drop(att)

    def _drop(self, att: _Attached) -> None:
        """Forget a version no snapshot uses (caller holds the lock)."""
        if self._attached.get(att.version) is att:
            del self._attached[att.version]
        if att.lease is not None:
            att.lease.release()

    def _after_fork(self) -> None:
        """In a forked child: leases, doorbell, watch and thread of our own (see the module docstring).
        Called once per fork, by the first thread that calls in (``_check``, under ``_rearming``)."""
        with self._lock:
            for att in self._attached.values():
                if att.lease is not None:
                    att.lease.forget()
                    att.lease = None
            if self._doorbell is not None:
                self._doorbell.close(unlink=False)  # the parent's semaphore
            self._doorbell = None
            self._watch = None
            self._thread = None
            for att in list(self._attached.values()):
                with contextlib.suppress(VersionNotFoundError):
                    att.lease = _lease(self._dir, att.version)
        if self._closed:
            return
        self._announce_stamp = None
        self._refresh()
        if self.follow:
            self._start_following()


class _Launch:
    """One start of a dataset's follower thread: ``done`` is held until the helper has started the
    thread (or failed to, or found that the dataset no longer wants it); ``thread`` is the thread."""

    __slots__ = ("done", "thread")

    def __init__(self) -> None:
        self.done = _thread.allocate_lock()
        self.done.acquire()
        self.thread: threading.Thread | None = None


def _launch(ds: Dataset, launched: _Launch) -> None:
    """In a helper thread: make the follower thread and start it (``Thread.start`` waits for it to run),
    so that the opener does neither; then release ``launched.done``, which ``_stop_following`` waits
    on. Nothing is started if the dataset was closed, or forked, meanwhile (its ``_launched`` is no
    longer *launched*). A failure is put in the dataset's ``_launch_failed``, for its next call to log:
    logging here would make this thread, which is not a ``threading`` one, a stand-in Thread object
    that ``threading`` never removes."""
    failed = ds._launch_failed
    try:
        wake, armed = threading.Event(), threading.Event()
        thread = threading.Thread(
            target=ds._follow_loop, args=(wake, armed), name=f"hollow-follow-{ds.namespace}", daemon=True
        )
        with ds._lock:
            wanted = ds._launched is launched
            if wanted:
                ds._thread = launched.thread = thread
                ds._wake, ds._armed = wake, armed
        if wanted:
            thread.start()
    except Exception as e:  # noqa: BLE001 - cannot start a thread: the dataset still works, without following
        failed.append(e)
    finally:
        launched.done.release()


def _detached(e: Error) -> Error:
    """*e* without traceback or chained causes (whose frames hold mappings and fds)."""
    e.__cause__ = e.__context__ = None
    return e.with_traceback(None)


def _lease(ns_dir: str, version: int) -> Lease | None:
    """A lease on *version*; None for a state file that has no lockfile (written by hand, not by hollowd)."""
    try:
        return Lease(ns_dir, version)
    except VersionNotFoundError:
        if os.path.exists(f"{ns_dir}/{layout.state_name(version)}") and not os.path.exists(f"{ns_dir}/{version}.lock"):
            return None
        raise


def _reader_schema(schema_arg: Any) -> Any:
    if schema_arg is None:
        return None
    if isinstance(schema_arg, (str, os.PathLike)):
        return schema.load_schema_file(schema_arg)
    return schema_arg  # a module pycapnp already compiled


def open(  # noqa: A001 - hollow.open mirrors lmdb.open
    namespace: str,
    *,
    root: str | os.PathLike[str] | None = None,
    schema: str | os.PathLike[str] | Any = None,
    follow: bool = True,
    poll_interval: float = POLL_INTERVAL,
) -> Dataset:
    """Open *namespace* for reading.

    *root* defaults to ``$HOLLOW_ROOT`` or ``/dev/shm/hollow``. *schema* is
    optional: the data's own schema travels in every state file; pass your
    own ``.capnp`` (path or compiled module), older or newer, to read through
    it under Cap'n Proto's evolution rules. With *follow* (the default) the
    dataset moves to each newly announced version in the background; without
    it, each ``snapshot()`` checks the announcement itself (one stat).
    """
    return Dataset(namespace, root=root, schema=schema, follow=follow, poll_interval=poll_interval)

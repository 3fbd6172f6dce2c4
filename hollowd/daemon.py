"""``hollowd``: the daemon. Keeps each configured namespace fresh from its source.

The loop has the shape of gunicorn's arbiter: signal handlers only enqueue (or,
for SIGTERM in the middle of a cycle, abandon it: publishing is atomic, so an
abandoned cycle leaves nothing behind), and the main thread dispatches events
and runs cycles one at a time. Each namespace:

1. at start, re-materializes its last good version from the state directory if
   /dev/shm lost it (a reboot), before any source is read, so readers are
   served at once; versions never go back (the counter is kept there too);
2. runs a cycle (populate → validate → publish → verify → announce) at start,
   then whenever its source changes (files, debounced) or every ``interval``
   seconds (callables);
3. after each announced version, saves a durable copy of it.

A source of changes (a change log, an incremental callable) is applied through
``run_incremental`` from a cursor kept in the state directory, each change
exactly once across crashes (docs/decisions.md §19).

``READY=1`` goes to systemd once every namespace has an announced version.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import queue
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import hollow
from hollow import layout
from hollowd import blobs, pidlock, preflight, systemd
from hollowd.config import Config, NamespaceConfig, load, parse
from hollowd.control import ControlSocket, SocketTakenError
from hollowd.errors import (
    EXIT_CONFIG,
    EXIT_RUNNING,
    AlreadyRunningError,
    ConfigError,
    ConfigurationError,
    Error,
    ProducerLockedError,
    SchemaError,
    ValidationError,
    ValidationFailedError,
)
from hollowd.follower import Follower, FollowerThread, restore
from hollowd.metrics import Metrics
from hollowd.producer import Producer
from hollowd.replication import Publisher
from hollowd.sources import CallableSource, ChangeLogSource, FileSource, IncrementalSource, SourceError
from hollowd.store import StateStore
from hollowd.validators import MinimumRecordCount, RecordCountVariance, Validator, resolve

#: The longest the main loop waits for an event. CPython runs a signal's Python handler in the main
#: thread, but the kernel may deliver the signal to any thread: the main thread, waiting on a lock
#: with a timeout, is then not interrupted and runs the handler only when its wait ends. SIGHUP and
#: SIGTERM waited up to an hour in loaded test runs (docs/pitfalls.md 35).
SIGNAL_WAIT = 0.25

log = logging.getLogger("hollowd")
#: Seconds of start-up time asked of systemd before each cycle until ready (EXTEND_TIMEOUT_USEC).
FIRST_BUILD_GRACE = 600.0


class Stop(BaseException):
    """Raised from the SIGTERM handler to abandon a cycle in flight."""


@dataclass
class NamespaceRunner:
    """One namespace: its producer, its source and when it next runs."""

    config: NamespaceConfig
    producer: Producer
    source: Any
    store: StateStore
    due: float = 0.0  # monotonic time of the next cycle; inf: only when the source changes
    window: float = 0.0  # a change log: until when new lines wait (monotonic), opened by a cycle they set off
    woken: bool = False  # a change log: the next cycle is set off by new lines (it opens a window)
    watch: Any = None
    last_error: str | None = None
    last_good: float | None = None
    saved_version: int = 0
    cycles: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0})
    publisher: Publisher | None = None  # publish_to: the store this namespace's versions are left in
    store_error: str | None = None

    @property
    def name(self) -> str:
        return self.config.name


def _validators(cfg: NamespaceConfig) -> list[Validator]:
    checks: list[Validator] = [MinimumRecordCount(t, n) for t, n in cfg.validators.get("min_records", {}).items()]
    checks += [RecordCountVariance(t, p) for t, p in cfg.validators.get("max_change_percent", {}).items()]
    checks += [resolve(ref) for ref in cfg.validators.get("custom", ())]
    return checks


@dataclass(frozen=True)
class Flags:
    """What the command line set; it overrides the file's settings at start and at every reload."""

    root: Path | None = None
    state_dir: Path | None = None
    socket: Path | None = None

    def apply(self, cfg: Config) -> Config:
        from dataclasses import replace  # noqa: PLC0415

        origins = dict(cfg.origins)
        for setting, flag, value in (
            ("root", "--root", self.root),
            ("state_dir", "--state-dir", self.state_dir),
            ("control_socket", "--socket", self.socket),
        ):
            if value is not None:
                origins[setting] = flag
        return replace(
            cfg,
            root=self.root or cfg.root,
            state_dir=self.state_dir or cfg.state_dir,
            control_socket=self.socket or cfg.control_socket,
            origins=origins,
        )


class Daemon:
    """The daemon's state and loop (see the module docstring)."""

    def __init__(self, cfg: Config, flags: Flags | None = None) -> None:
        self.cfg = cfg
        self.flags = flags or Flags()
        # Signal handlers put events here: SimpleQueue.put is reentrant, Queue.put (a lock) is not.
        self.events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.control: ControlSocket | None = None
        self.metrics = Metrics(lambda: list(self.runners.values()), lambda: list(self.followers.values()))
        self.runners: dict[str, NamespaceRunner] = {}
        self.followers: dict[str, FollowerThread] = {}  # namespaces that follow another host's store
        self.in_cycle = False
        self.stopping = False
        self._ready_sent = False
        self._lock_fd: int | None = None
        self._pinger: systemd.Pinger | None = None

    # -- start ------------------------------------------------------------------------

    def start(self) -> None:
        self._lock_state_dir()
        for name, ns in self.cfg.namespaces.items():
            if ns.follow:
                self.followers[name] = self._follower(ns)
            else:
                self.runners[name] = self._runner(ns)
        for runner in self.runners.values():
            self._restore(runner)

    def _follower(self, ns: NamespaceConfig) -> FollowerThread:
        follower = Follower(
            blobs.open_store(ns.follow),
            ns.name,
            root=self.cfg.root,
            work_dir=self.cfg.state_dir / ns.name / "follow",
            interval=ns.watch_interval,
            retain=ns.retain,
            mode=ns.mode,
        )
        follower.local_pin = StateStore(self.cfg.state_dir, ns.name).pin  # hollow pin here: kept across restarts
        return FollowerThread(follower)

    def _lock_state_dir(self) -> None:
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        try:
            self._lock_fd = pidlock.acquire(self.cfg.state_dir / "hollowd.lock")
        except pidlock.NotRegularError as e:
            raise AlreadyRunningError(f"cannot lock the state directory: {e}") from None
        except pidlock.HeldError as e:
            raise AlreadyRunningError(
                f"another hollowd (PID {e.holder}) is running with state directory {self.cfg.state_dir}"
            ) from None

    def _runner(self, ns: NamespaceConfig) -> NamespaceRunner:
        store = StateStore(self.cfg.state_dir, ns.name)
        producer = Producer(
            ns.name,
            schema=ns.schema,
            primary_keys={t.name: list(t.primary_key) for t in ns.types.values()},
            indexes={t.name: [list(ix) for ix in t.indexes] for t in ns.types.values()},
            root=self.cfg.root,
            retain=ns.retain,
            max_versions=ns.max_versions,
            compact_share=ns.compact_percent / 100,
            compact_min=ns.compact_min,
            mode=ns.mode,
            validators=_validators(ns),
            versions_after=store.counter,
            reserve=store.reserve,
        )
        try:
            source: Any
            if ns.delivers_changes and ns.source_is_callable:
                source = IncrementalSource(ns.source, producer.schema, type_name=ns.type)
            elif ns.delivers_changes:
                source = ChangeLogSource(ns.source, producer.schema, type_name=ns.type)
            elif ns.source_is_callable:
                source = CallableSource(ns.source, allow_empty=ns.allow_empty)
            else:
                source = FileSource(
                    ns.source, producer.schema, fmt=ns.format, type_name=ns.type, allow_empty=ns.allow_empty
                )
            publisher = None
            if ns.publish_to:
                publisher = Publisher(
                    blobs.open_store(ns.publish_to),
                    producer,
                    snapshot_every=ns.snapshot_every,
                    store_retain=ns.store_retain,
                    owner=f"{socket.gethostname()}:{store.producer_id}",
                )
                try:
                    publisher.claim()  # a second producer of the namespace, on any host, stops here (exit 75)
                except blobs.StoreUnavailableError as e:
                    log.error("hollowd: event=store-failed namespace=%s error=%r (claimed later)", ns.name, str(e))
        except BaseException:
            producer.close()
            raise
        return NamespaceRunner(ns, producer, source, store, publisher=publisher)

    def _restore(self, runner: NamespaceRunner) -> None:
        """Serve the last good version at once if /dev/shm lost it (a reboot, an emptied tmpfs)."""
        ns_dir = runner.producer.dir
        announced = runner.producer.announcement()
        present = announced is not None and (ns_dir / layout.state_name(announced.version)).exists()
        if present:
            return
        if not runner.store.saved.exists():
            self._restore_from_store(runner)
            return
        try:
            version = runner.producer.materialize(runner.store.saved, pinned=runner.store.pin is not None)
        except (Error, hollow.Error, OSError) as e:
            log.error("hollowd: event=restore-failed namespace=%s error=%r", runner.name, str(e))
            return
        log.info("hollowd: event=restored namespace=%s version=%d from=%s", runner.name, version, runner.store.saved)

    def _restore_from_store(self, runner: NamespaceRunner) -> None:
        """A fresh host (nothing in /dev/shm nor the state directory): the store's announced version, so that
        the first cycle is a delta on it and the chain goes on."""
        if runner.publisher is None:
            return
        try:
            version = restore(runner.producer, runner.publisher.store, self.cfg.state_dir / runner.name / "restore")
        except (Error, hollow.Error, OSError) as e:
            log.error(
                "hollowd: event=restore-failed namespace=%s store=%s error=%r",
                runner.name,
                runner.publisher.store.url,
                str(e),
            )
            return
        if version:
            runner.store.save_counter(version)
            self._keep(runner, version)
            log.info(
                "hollowd: event=restored namespace=%s version=%d from=%s",
                runner.name,
                version,
                runner.publisher.store.url,
            )

    def _publish(self, runner: NamespaceRunner) -> None:
        """Leave the announced version in the namespace's store (blobs, header, then the announcement)."""
        if runner.publisher is None:
            return
        try:
            header = runner.publisher.publish()
        except (Error, hollow.Error, OSError) as e:
            runner.store_error = str(e)
            runner.due = min(runner.due, time.monotonic() + 2.0)  # try again soon, even with no new data
            log.error("hollowd: event=store-failed namespace=%s error=%r (kept here, retried)", runner.name, str(e))
            return
        runner.store_error = None
        log.info(
            "hollowd: event=stored namespace=%s version=%d blobs=%s",
            runner.name, header.version, ",".join(f"{k}:{v['size']}" for k, v in header.blobs.items()),
        )  # fmt: skip

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, lambda *_: self.events.put(("hup", "")))
        log.info(
            "hollowd: event=start root=%s state_dir=%s socket=%s config=%s namespaces=%s",
            self.cfg.root,
            self.cfg.state_dir,
            self.cfg.control_socket,
            self.cfg.path or "none (the bundled airports example)",
            ",".join(self.cfg.namespaces) or "none",
        )
        self.start()
        self.control = ControlSocket(
            self.cfg.control_socket,
            lambda request: self.events.put(("control", request)),
            mode=self.cfg.socket_mode,
            group=self.cfg.socket_group,
        )
        if self.cfg.metrics_port:
            self.metrics.serve(self.cfg.metrics_port)
        announced = self._announced_all()
        if announced:
            self._ready()
        for runner in self.runners.values():
            self._watch(runner)
            self.events.put(("cycle", runner.name))
        for follower in self.followers.values():
            follower.start()
        self._pinger = systemd.Pinger(lambda: self.in_cycle)
        try:
            while not self.stopping:
                now = time.monotonic()
                self._pinger.alive()
                wake = now + 0.5 if self.followers and not announced else now + 3600  # followers: until READY
                timeout = min([r.due for r in self.runners.values()] + [now + self._pinger.every, wake]) - now
                try:  # at most SIGNAL_WAIT: a signal another thread took runs its handler only then
                    kind, arg = self.events.get(timeout=max(0.0, min(timeout, SIGNAL_WAIT)))
                except queue.Empty:
                    kind, arg = "due", ""
                self._dispatch(kind, arg)
                if not announced and self._announced_all():
                    announced = True
                    self._ready()
        except Stop:
            log.info("hollowd: stopping; the cycle in flight was abandoned, nothing partial was published")
            self._keep_announced()
        systemd.stopping()
        self.close()
        return 0

    def _ready(self) -> None:
        self._ready_sent = True
        systemd.ready(self._status())
        log.info("hollowd: event=ready status=%r", self._status())

    def _dispatch(self, kind: str, arg: Any) -> None:
        if kind == "cycle" and arg in self.runners:
            self._cycle(self.runners[arg])
        elif kind == "hup":
            self._reload()
        elif kind == "control":
            try:
                answer = self._control(arg.doc)
            except Exception as e:  # one request never takes the daemon down (docs/decisions.md §31)
                log.exception("hollowd: event=control-failed request=%r", arg.doc)
                error = f"the daemon could not carry this out: {type(e).__name__}: {e}"
                answer = {"ok": False, "error": error, "code": 1}
            arg.reply(answer)
        now = time.monotonic()
        for runner in self.runners.values():
            if runner.due <= now:
                self._cycle(runner)

    def _control(self, doc: dict[str, Any]) -> dict[str, Any]:  # noqa: PLR0911 - one answer per command
        """Carry out one control-socket request (in the main thread)."""
        command, name = doc.get("command"), doc.get("namespace")
        if command == "status":
            reports = {n: self._report(r) for n, r in self.runners.items() if name in (None, n)}
            reports |= {n: f.follower.report() for n, f in self.followers.items() if name in (None, n)}
            return {"ok": True, "namespaces": reports}
        if str(name) in self.followers:
            return self._control_follower(self.followers[str(name)].follower, command, doc)
        runner = self.runners.get(str(name))
        if runner is None:
            return {"ok": False, "error": f"no namespace {name!r}; serving: {', '.join(self.runners)}", "code": 1}
        try:
            if command == "pin":
                version = doc["version"]  # an int >= 1: hollowd.control.parse checked it
                runner.producer.pin(version)
                runner.store.save_pin(version)
            elif command == "unpin":
                runner.producer.unpin()
                runner.store.save_pin(None)
            elif command == "cycle":
                self._cycle(runner)
                if runner.last_error:
                    return {"ok": False, "error": runner.last_error, "code": 1, **self._report(runner)}
            else:
                return {"ok": False, "error": f"unknown command {command!r}", "code": 2}
        except (KeyError, ValueError, TypeError) as e:
            return {"ok": False, "error": f"bad request: {e}", "code": 2}
        except (Error, hollow.Error) as e:
            return {"ok": False, "error": str(e), "code": 1}
        except Exception as e:  # noqa: BLE001 - a request fails alone (a full /dev/shm, a state directory gone)
            log.error("hollowd: event=control-failed command=%s namespace=%s error=%r", command, name, _describe(e))
            return {"ok": False, "error": _describe(e), "code": 1}
        systemd.status(self._status())
        return {"ok": True, **self._report(runner)}

    def _control_follower(self, follower: Follower, command: Any, doc: dict[str, Any]) -> dict[str, Any]:
        """pin / unpin on a follower namespace: this host only, overriding the store's announcement."""
        try:
            pins = StateStore(self.cfg.state_dir, follower.namespace)
            if command == "pin":
                version = int(doc["version"])
                follower.pin(version)
                pins.save_pin(version)  # durable: a restart (or a reboot) keeps this host on it
            elif command == "unpin":
                pins.save_pin(None)
                follower.pin(None)
            else:
                return {
                    "ok": False,
                    "error": f"{command!r} does not apply to a namespace that follows a store",
                    "code": 2,
                }
        except (KeyError, ValueError, TypeError) as e:
            return {"ok": False, "error": f"bad request: {e}", "code": 2}
        except (Error, hollow.Error) as e:
            return {"ok": False, "error": str(e), "code": 1}
        return {"ok": True, **follower.report()}

    def _report(self, runner: NamespaceRunner) -> dict[str, Any]:
        a = runner.producer.announcement()
        return {
            "namespace": runner.name,
            "announced": a.version if a else None,
            "pinned": bool(a and a.pinned),
            "latest": a.latest if a else None,
            "cycles_ok": runner.cycles["ok"],
            "cycles_failed": runner.cycles["failed"],
            "last_error": runner.last_error,
            "last_good": runner.last_good,
            **(
                {"store": runner.publisher.store.url, "store_error": runner.store_error}
                if runner.publisher is not None
                else {}
            ),
        }

    def _cycle(self, runner: NamespaceRunner) -> None:
        if not self._ready_sent:
            systemd.extend_timeout(FIRST_BUILD_GRACE)  # a first build of a big dataset may take minutes
        ns = runner.config
        runner.due = time.monotonic() + ns.interval if ns.source_is_callable else float("inf")
        started = time.monotonic()
        if runner.woken:  # new lines of a change log: those that come within the debounce wait for its end
            runner.woken = False
            runner.window = started + ns.debounce
        self.in_cycle = True
        changes = ""
        runner.producer.last_timings = {}  # a change log with nothing to apply runs no producer stage
        try:
            self._restore(runner)  # the namespace directory may have been removed since (issue 9, item 12)
            if ns.delivers_changes:
                version, count, read = self._apply_changes(runner)
                changes = f" changes={count} read={read:.3f}"
            else:
                version = self._full_cycle(runner)
                self.in_cycle = False  # announced: SIGTERM no longer abandons what follows (the durable copy)
                self._keep(runner, version)
            self._publish(runner)
        except Exception as e:  # noqa: BLE001 - a cycle is a boundary: whatever it raises fails it, not the daemon
            runner.cycles["failed"] += 1
            runner.last_error = _describe(e)
            self.metrics.cycle(runner.name, ok=False, timings=runner.producer.last_timings)
            log.error(
                "hollowd: event=cycle-failed namespace=%s error=%r (nothing announced)%s",
                runner.name,
                runner.last_error,
                f" validator={e.validator}" if isinstance(e, ValidationFailedError) else "",
            )
            return
        finally:
            self.in_cycle = False
        runner.cycles["ok"] += 1
        self.metrics.cycle(runner.name, ok=True, timings=runner.producer.last_timings)
        runner.last_error = None
        runner.last_good = time.time()
        stages = " ".join(f"{k}={v:.3f}" for k, v in runner.producer.last_timings.items())
        log.info(
            "hollowd: event=cycle namespace=%s version=%d seconds=%.3f%s %s",
            runner.name,
            version,
            time.monotonic() - started,
            changes,
            stages,
        )
        systemd.status(self._status())

    @staticmethod
    def _full_cycle(runner: NamespaceRunner) -> int:
        """A cycle of every record; an error of a file source's record is led by its ``FILE:LINE``."""
        source = runner.source
        try:
            return runner.producer.run_cycle(source)
        except ValidationError as e:
            if not isinstance(source, FileSource):
                raise
            located = source.locate(e)
            if located is e:
                raise
            raise located from e
        except (Error, hollow.Error):
            raise
        except Exception as e:
            if not isinstance(source, FileSource):
                raise
            raise SourceError(f"{source.path}: {_describe(e)}") from e

    def _keep_announced(self) -> None:
        """On the way out after an abandoned cycle: a version it announced before SIGTERM came is saved,
        so that a reboot does not bring back the one before (versions never go back)."""
        for runner in self.runners.values():
            if runner.config.delivers_changes:
                continue  # settled from cursor.pending at the next start (docs/decisions.md §19)
            a = runner.producer.announcement()
            latest = a.latest if a is not None else 0
            if latest and latest != runner.saved_version and (runner.producer.dir / str(latest)).exists():
                try:
                    self._keep(runner, latest)
                except OSError as e:
                    log.error(
                        "hollowd: event=save-failed namespace=%s version=%d error=%r", runner.name, latest, str(e)
                    )

    def _keep(self, runner: NamespaceRunner, version: int) -> None:
        """Save a durable copy of *version* (the newest) unless it is the one saved already."""
        if version != runner.saved_version:
            runner.store.save(runner.producer.dir / layout.state_name(version))
            runner.saved_version = version

    def _apply_changes(self, runner: NamespaceRunner) -> tuple[int, int, float]:
        """Apply a change source's next changes exactly once; returns the version, how many changes, and
        the seconds their reading and checking took (the cycle's log line shows them as ``read``).

        The cursor after them is staged, so that the reserve hook writes it next
        to the counter (``cursor.pending``) before a version is written; it is
        committed once that version is saved, or at once when they change
        nothing. A pending cursor left by a crash or a failed cycle is settled
        first: see :meth:`_settle`.
        """
        store = runner.store
        self._settle(runner)
        before = store.cursor
        started = time.monotonic()
        batch = runner.source.read(before)
        read = time.monotonic() - started
        for level, note in batch.notes:
            log.log(level, "hollowd: namespace=%s %s", runner.name, note)
        newest = max(runner.producer.versions(), default=0)
        if not batch.changes and newest:  # nothing to apply (a partial line, blank lines): no cycle to run
            if batch.cursor != before:
                store.commit_cursor(batch.cursor)
            return newest, 0, read
        store.stage(batch.cursor, len(batch.changes))
        try:
            version = runner.producer.run_incremental(batch.apply)
        except ValidationError as e:
            located = batch.locate(e)  # name the line (or change) of the record it names
            if located is e:
                raise
            raise located from e
        finally:
            store.unstage()
        self.in_cycle = False  # announced: SIGTERM no longer abandons the durable copy and the cursor
        self._keep(runner, version)  # before the cursor: a reboot must not lose what the cursor says is applied
        store.commit_cursor(batch.cursor)
        return version, len(batch.changes), read

    def _settle(self, runner: NamespaceRunner) -> None:
        """A pending cursor is committed if its version was written (the newest version here is at
        least it: versions are minted in order, and none after it before it is settled), else dropped."""
        pending = runner.store.pending
        if pending is None:
            return
        newest = max(runner.producer.versions(), default=0)
        written = newest >= pending["version"]
        if written:
            self._keep(runner, newest)
            runner.store.commit_cursor(pending["cursor"])
        else:
            runner.store.drop_pending()
        log.info(
            "hollowd: event=cursor-settled namespace=%s version=%d written=%s changes=%s (%s)",
            runner.name,
            pending["version"],
            str(written).lower(),
            pending.get("changes", "?"),
            "they are applied" if written else "they are read again",
        )

    def _watch(self, runner: NamespaceRunner) -> None:
        """File sources: a change (create, modify, move, delete) schedules a cycle after the debounce."""
        if runner.config.source_is_callable:
            return
        from watchdog.events import FileSystemEvent, FileSystemEventHandler  # noqa: PLC0415
        from watchdog.observers import Observer  # noqa: PLC0415

        path = Path(runner.config.source)
        directory = path if path.is_dir() else path.parent
        daemon = self

        class Changed(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                if (
                    path.is_dir()
                    or os.path.basename(str(getattr(event, "dest_path", "") or event.src_path)) == path.name
                ):
                    now = time.monotonic()
                    if runner.config.delivers_changes:
                        # A change log's complete lines can be applied at any time: the first new ones
                        # after a quiet spell at once, and those that come within the debounce after
                        # that cycle began together at its end (appends that never pause must not
                        # postpone them for ever, nor make a version each).
                        runner.woken = True
                        runner.due = min(runner.due, max(now, runner.window))
                    else:  # a file is read once it has been left alone for the debounce: whole
                        runner.due = now + runner.config.debounce
                    daemon.events.put(("wake", runner.name))

        try:
            runner.watch = _observe(Observer(), Changed(), directory)
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENOSPC):  # no inotify instance, or watch, left (inotify(7))
                raise
            from watchdog.observers.polling import PollingObserver  # noqa: PLC0415

            every = min(1.0, runner.config.debounce)
            log.warning(
                "hollowd: event=watch-polling namespace=%s error=%r (inotify is unavailable: "
                "the source is looked at every %.2g s instead; raise fs.inotify.max_user_instances)",
                runner.name,
                str(e),
                every,
            )
            runner.watch = _observe(PollingObserver(timeout=every), Changed(), directory)

    def _reload(self) -> None:
        """SIGHUP: read the configuration again; announced versions stay; a bad file changes nothing."""
        try:
            cfg = self.flags.apply(load(self.cfg.path)) if self.cfg.path else self.cfg
            preflight.check(cfg)
        except ConfigError as e:
            log.error("hollowd: event=reload-refused error=%r (keeping the running configuration)", str(e))
            return
        if (cfg.root, cfg.state_dir, cfg.control_socket) != (
            self.cfg.root,
            self.cfg.state_dir,
            self.cfg.control_socket,
        ):
            log.warning(
                "hollowd: event=reload-paths root, state_dir and control_socket take effect at the next start; "
                "keeping root=%s state_dir=%s socket=%s",
                self.cfg.root,
                self.cfg.state_dir,
                self.cfg.control_socket,
            )
            from dataclasses import replace  # noqa: PLC0415

            cfg = replace(cfg, root=self.cfg.root, state_dir=self.cfg.state_dir, control_socket=self.cfg.control_socket)
        log.info("hollowd: configuration reloaded from %s", self.cfg.path)
        for name in list(self.runners):
            if name not in cfg.namespaces or cfg.namespaces[name] != self.runners[name].config:
                self._close_runner(self.runners.pop(name))
        self.cfg = cfg
        for name, ns in cfg.namespaces.items():
            if name not in self.runners:
                try:
                    self.runners[name] = runner = self._runner(ns)
                except Exception as e:  # noqa: BLE001 - a namespace that cannot start must not stop the others
                    log.error("hollowd: event=setup-failed namespace=%s error=%r", name, _describe(e))
                    continue
                self._restore(runner)
                self._watch(runner)
                self.events.put(("cycle", name))

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        if self.in_cycle:
            raise Stop
        self.events.put(("term", ""))

    # -- reporting --------------------------------------------------------------------

    def _announced_all(self) -> bool:
        return all(r.producer.announcement() is not None for r in self.runners.values()) and all(
            layout.read_announcement(f.follower.dir) is not None for f in self.followers.values()
        )

    def _status(self) -> str:
        parts = []
        for r in self.runners.values():
            a = r.producer.announcement()
            parts.append(f"{r.name} {a.version if a else '-'}" + (" (last cycle failed)" if r.last_error else ""))
        for f in self.followers.values():
            a = layout.read_announcement(f.follower.dir)
            parts.append(f"{f.name} {a.version if a else '-'} (following)")
        return "serving " + ", ".join(parts) if parts else "no namespaces configured"

    # -- stop -------------------------------------------------------------------------

    def _close_runner(self, runner: NamespaceRunner) -> None:
        if runner.watch is not None:
            runner.watch.stop()
            runner.watch.join()
        if isinstance(runner.source, ChangeLogSource):
            runner.source.close()
        if runner.publisher is not None:
            runner.publisher.release()
            runner.publisher.store.close()
        runner.producer.close()

    def close(self) -> None:
        if self._pinger is not None:
            self._pinger.close()
            self._pinger = None
        self.metrics.close()
        if self.control is not None:
            self.control.close()
            self.control = None
        for runner in self.runners.values():
            self._close_runner(runner)
        self.runners.clear()
        for follower in self.followers.values():
            follower.stop()
        self.followers.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _observe(observer: Any, handler: Any, directory: Path) -> Any:
    """Start *observer* on *directory* with *handler* (a daemon thread: it must not keep the process up)."""
    observer.daemon = True
    observer.schedule(handler, str(directory), recursive=False)
    observer.start()
    return observer


def default_config() -> Config:
    """No --config: the bundled airports example (``hollowd.example``), from the installed package."""
    from hollowd import example  # noqa: PLC0415

    return parse(example.CONFIG, None)


def _describe(e: BaseException) -> str:
    """An error as a log line says it: hollow's own by their message, anything else with its type."""
    if isinstance(e, (Error, hollow.Error)):
        return str(e)
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror or e}"
    return f"{type(e).__name__}: {e}"


_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def _priority(record: logging.LogRecord) -> bool:
    record.priority = _PRIORITIES.get(record.levelno, 6)
    return True


def main(argv: list[str] | None = None) -> int:
    from hollowd.cli import version  # noqa: PLC0415

    ap = argparse.ArgumentParser(prog="hollowd", description="Serve versioned datasets in shared memory.")
    ap.add_argument("--config", type=Path, help="TOML configuration (default: the bundled airports example)")
    ap.add_argument("--root", type=Path, help="override the configuration's shared-memory root")
    ap.add_argument("--state-dir", type=Path, help="override the configuration's state directory")
    ap.add_argument("--socket", type=Path, help="override the configuration's control socket")
    ap.add_argument("--version", action="version", version=f"hollowd {version()}")
    args = ap.parse_args(argv)
    # journald keeps stderr lines; the "<N>" prefix gives each its syslog priority (sd-daemon(3)).
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="<%(priority)s>%(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_priority)
    flags = Flags(args.root, args.state_dir, args.socket)
    try:
        cfg = flags.apply(load(args.config) if args.config else default_config())
        preflight.check(cfg)  # before anything is made on disk
    except ConfigError as e:
        print(f"hollowd: {e}", file=sys.stderr)
        return EXIT_CONFIG
    logging.getLogger().setLevel(cfg.log_level.upper())
    daemon = Daemon(cfg, flags)
    try:
        return daemon.run()
    except (AlreadyRunningError, ProducerLockedError, SocketTakenError) as e:
        print(f"hollowd: {e}", file=sys.stderr)
        daemon.close()
        return EXIT_RUNNING
    except (SchemaError, ConfigurationError) as e:  # a ConfigError is one
        print(f"hollowd: {e}", file=sys.stderr)
        daemon.close()
        return EXIT_CONFIG
    except (Error, hollow.Error, OSError) as e:
        print(f"hollowd: cannot start: {_describe(e)}", file=sys.stderr)
        daemon.close()
        return 1


if __name__ == "__main__":
    sys.exit(main())

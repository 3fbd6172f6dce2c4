"""The producer: run a cycle, publish a version, announce it.

A cycle, Hollow's way: populate → check and build (keys, ordinals, encoding,
indexes) → compare with the announced version → publish (write, verify,
rename) → announce → reclaim old versions. Any error before the announcement
leaves the announced version where it was.

One producer owns a namespace at a time: it holds an exclusive flock(2) on
``<ns>/.producer.lock`` for its whole life (released by the kernel if it dies).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hollow import doorbell, layout
from hollow.errors import Error as ReaderError
from hollow.state import StateFile
from hollowd import encoder, pidlock, publish
from hollowd import validators as validation
from hollowd.errors import ProducerLockedError, PublishError, ValidationError, VersionNotFoundError
from hollowd.schema import NamespaceSchema
from hollowd.state import BuiltType, Delta, IncrementalFn, PopulateFn, TypeMemory, WriteState, build_type

LOCK_FILE = ".producer.lock"
log = logging.getLogger("hollowd")


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC for a cycle: it would rescan every record dict many times over
    while millions of them are created (measured: 3-8x slower builds), and a cycle makes no cycles."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class Producer:
    """Produces the versions of one namespace.

    :param namespace: the dataset's name (a directory under *root*).
    :param schema: path of the ``.capnp`` file declaring the record types.
    :param primary_keys: type name → field name, or list of field names for a composite key.
    :param indexes: type name → list of secondary indexes (a field name, or a list of names).
    :param root: defaults to ``$HOLLOW_ROOT`` or ``/dev/shm/hollow``.
    :param retain: how many versions to keep (the announced and pinned ones always stay).
    :param mode: permission bits of published files (made read-only); readers need read access.
    :param validators: checks a candidate version must pass before it is published (hollowd.validators).
    :param versions_after: no version at or below this is minted (the daemon's persisted counter,
        so that versions never go back even when /dev/shm was emptied).
    :param reserve: called with each new version number before anything is written, to make
        it durable first (the daemon's counter): a version number is never handed out twice.
    """

    def __init__(
        self,
        namespace: str,
        *,
        schema: str | os.PathLike[str],
        primary_keys: Mapping[str, Sequence[str] | str],
        indexes: Mapping[str, Iterable[Sequence[str] | str]] | None = None,
        root: str | os.PathLike[str] | None = None,
        retain: int = 5,
        mode: int = 0o640,
        validators: Sequence[validation.Validator] = (),
        versions_after: int = 0,
        reserve: Callable[[int], None] | None = None,
    ) -> None:
        self.namespace = layout.check_namespace(namespace)
        self.schema = NamespaceSchema(schema, primary_keys, indexes)
        self.dir = layout.namespace_dir(namespace, root)
        self.retain = max(1, retain)
        self.mode = mode
        self.validators = list(validators)
        self._reserve = reserve
        #: Seconds per stage of the last cycle (build, validate, publish, announce, reclaim).
        self.last_timings: dict[str, float] = {}
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o755 if mode & 0o004 else 0o750)
        self._lock_fd: int | None = _lock_namespace(self.dir)
        self._ringer = doorbell.Ringer(self.dir.parent, self.namespace)
        self._encoders: dict[str, encoder.RecordEncoder | encoder.BuilderEncoder] = {}
        self._memory: dict[str, TypeMemory] | None = None
        self._memory_version = 0
        self._last_version = max([*layout.list_versions(self.dir), self._announced_version(), versions_after])

    # -- cycles ---------------------------------------------------------------

    def run_cycle(self, populate: PopulateFn) -> int:
        """Run a full cycle: *populate* adds every record; returns the announced version.

        When the data equals the announced version's, nothing is published and
        that version is returned. Raises :class:`~hollowd.ValidationError` (and
        announces nothing) when a record is bad.
        """
        with _gc_paused():
            started = time.monotonic()
            state = WriteState(self.schema)
            populate(state)
            populated = time.monotonic() - started
            version = self._publish_records(state.records)
            self.last_timings = {"populate": populated, **self.last_timings}
            return version

    def run_incremental(self, change: IncrementalFn) -> int:
        """Run a cycle from the announced version plus *change*'s ``upsert`` and ``remove`` calls."""
        with _gc_paused():
            delta = Delta(self.schema)
            change(delta)
            memory = self._remembered(with_records=True)
            records: dict[str, list[dict[str, Any]]] = {}
            for name in self.schema.types:
                current = memory[name].by_key() if name in memory else {}
                for key in delta.removals[name]:
                    current.pop(key, None)
                current.update(delta.upserts[name])
                records[name] = list(current.values())
            return self._publish_records(records)

    def _publish_records(self, records: dict[str, list[dict[str, Any]]]) -> int:
        timings = self.last_timings = {}
        clock = time.monotonic()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.monotonic()
            timings[stage] = now - clock
            clock = now

        previous = self._remembered(with_records=False)
        latest = self._last_version
        if latest and self._memory_version == latest and self._same_input(records, previous):
            return latest  # the very records of the last cycle, in the same order: nothing to build
        built = {
            name: build_type(self.schema.types[name], recs, previous.get(name), self._encoders, keep_records=True)
            for name, recs in records.items()
        }
        lap("build")
        latest = self._last_version
        if latest and self._memory_version == latest and self._unchanged(built, previous):
            self._memory = {name: b.memory for name, b in built.items()}
            return latest
        version = self._next_version()
        if self.validators:
            validation.run_all(
                self.validators,
                validation.Candidate(
                    namespace=self.namespace,
                    version=version,
                    counts={name: b.count for name, b in built.items()},
                    previous_counts={n: m.size - len(m.holes) for n, m in previous.items()} if previous else None,
                    records=records,
                ),
            )
        lap("validate")
        if self._reserve is not None:
            self._reserve(version)
        publish.write_state_file(self.dir, self.namespace, version, latest, self.schema, built.values(), mode=self.mode)
        lap("publish")
        self._last_version = version
        self._memory = {name: b.memory for name, b in built.items()}
        self._memory_version = version
        current = layout.read_announcement(self.dir)
        if current is not None and current.pinned:  # followers stay on the pin; record the new latest
            self._announce(layout.Announcement(current.version, True, version, time.time_ns()))
        else:
            self._announce(self._announcement(version, pinned=False))
        lap("announce")
        self.reclaim()
        lap("reclaim")
        return version

    @staticmethod
    def _same_input(records: dict[str, list[dict[str, Any]]], previous: dict[str, TypeMemory]) -> bool:
        """Whether every type's records equal (by value, in order) those the last cycle published."""
        return set(records) == set(previous) and all(
            previous[name].records is not None and previous[name].records == recs for name, recs in records.items()
        )

    def _unchanged(self, built: dict[str, BuiltType], previous: dict[str, TypeMemory]) -> bool:
        return (
            set(built) == set(previous)
            and all(previous[name].content_hash == b.content_hash for name, b in built.items())
            and self._schema_fingerprint_of(self._last_version) == self.schema.fingerprint
        )

    def materialize(self, saved: Path, *, pinned: bool = False) -> int:
        """Put a saved state file (the daemon's durable copy) back in place and announce it.

        For a restart after /dev/shm was emptied: readers get the last good
        version before any source is read. Returns its version. A version
        already present is announced as it is.
        """
        data = saved.read_bytes()
        header = layout.Header.unpack(data, what=str(saved), size=len(data))
        if header.namespace != self.namespace:
            raise PublishError(f"{saved} holds namespace {header.namespace!r}, not {self.namespace!r}")
        version = header.version
        if not (self.dir / layout.state_name(version)).exists():
            publish.copy_state_file(self.dir, version, data, mode=self.mode, namespace=self.namespace)
        self._last_version = max(self._last_version, version)
        self._announce(layout.Announcement(version, pinned, self._last_version, time.time_ns()))
        return version

    # -- pins -----------------------------------------------------------------

    def pin(self, version: int) -> None:
        """Announce *version* and keep every follower on it until :meth:`unpin`; publishing goes on."""
        if not (self.dir / layout.state_name(version)).exists():
            raise VersionNotFoundError(f"{self.namespace} version {version} does not exist (have: {self.versions()})")
        self._announce(layout.Announcement(version, True, self._last_version, time.time_ns()))

    def unpin(self) -> None:
        """Announce the latest version again."""
        latest = self._last_version
        if latest:
            self._announce(self._announcement(latest, pinned=False))

    # -- housekeeping ---------------------------------------------------------

    def versions(self) -> list[int]:
        """Versions with a state file, ascending."""
        return layout.list_versions(self.dir)

    def reclaim(self) -> list[int]:
        """Remove the versions nothing needs; returns those removed.

        A version stays while it is announced or pinned, within the newest
        *retain*, or leased by any process (hollow.lease).
        """
        versions = self.versions()
        keep = set(versions[-self.retain :])
        current = layout.read_announcement(self.dir)
        if current is not None:
            keep.add(current.version)
        removed = [v for v in versions if v not in keep and publish.remove_version(self.dir, v)]
        for lock in self.dir.glob("*.lock"):  # lockfiles whose state file is gone (a crash mid-removal)
            v = layout.parse_state_name(lock.name[: -len(".lock")])
            if v is not None and v not in versions:
                publish.remove_version(self.dir, v)
        for stale in self.dir.glob(".*.tmp"):
            if _tmp_owner_dead(stale.name):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
        return removed

    def close(self) -> None:
        """Release the namespace (other producers may then take it)."""
        self._ringer.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------

    def _announce(self, announcement: layout.Announcement) -> None:
        publish.announce(self.dir, announcement, mode=self.mode, ringer=self._ringer)

    def _announcement(self, version: int, *, pinned: bool) -> layout.Announcement:
        return layout.Announcement(version, pinned, self._last_version, time.time_ns())

    def _announced_version(self) -> int:
        current = layout.read_announcement(self.dir)
        return current.version if current is not None else 0

    def _next_version(self) -> int:
        return max([self._last_version, *self.versions(), self._announced_version()]) + 1

    def _schema_fingerprint_of(self, version: int) -> int | None:
        try:
            return StateFile(self.dir / layout.state_name(version), namespace=self.namespace).header.schema_fingerprint
        except ReaderError:
            return None

    def _remembered(self, *, with_records: bool) -> dict[str, TypeMemory]:
        """What the last version holds per type: from memory, or read back from its file after a restart."""
        latest = self._last_version
        memory = self._memory
        if (
            memory is not None
            and self._memory_version == latest
            and (not with_records or all(m.records is not None for m in memory.values()))
        ):
            return memory
        path = self.dir / layout.state_name(latest)
        if latest and not path.exists():  # reserved, never written (killed mid-publish): the newest written
            latest = max((v for v in self.versions() if v < latest), default=0)
            path = self.dir / layout.state_name(latest)
        if not latest:
            return {}
        try:
            self._memory = _read_memory(path, self.namespace, self.schema, with_records)
        except PublishError as e:
            if with_records:
                raise  # an incremental cycle cannot start from a version it cannot read
            # Written by an older hollowd, or damaged: start afresh (new ordinals), keep numbering up.
            log.warning("hollowd: %s; the next version starts afresh from its source", str(e))
            self._memory = {}
        self._memory_version = latest
        return self._memory


def _read_memory(path: Path, namespace: str, schema: NamespaceSchema, with_records: bool) -> dict[str, TypeMemory]:
    """Rebuild the producer's memory of a version from its state file (after a restart)."""
    try:
        state = StateFile(path, namespace=namespace)
    except ReaderError as e:
        raise PublishError(f"cannot read back the latest version to continue from it: {e}") from e
    memory: dict[str, TypeMemory] = {}
    for name, rtype in schema.types.items():
        if name not in state.type_names:
            continue
        view = state.type(name)
        holes = sorted(view._holes.tolist())
        hole_set = set(holes)
        fields = rtype.primary.fields
        ordinal_of: dict[Any, int] = {}
        records: list[dict[str, Any]] = []
        for o, rec in enumerate(view._records):
            if o in hole_set:
                continue
            key = rec._get(fields[0]) if len(fields) == 1 else tuple(rec._get(f) for f in fields)
            ordinal_of[key] = o
            if with_records:
                records.append(rec.to_dict())
        memory[name] = TypeMemory(
            holes=holes,
            size=len(view._records),
            content_hash=_content_hash(state, name),
            keys=list(ordinal_of),
            records=records if with_records else None,
            _ordinal_of=ordinal_of,
        )
    return memory


def _content_hash(state: StateFile, name: str) -> int:
    return state.type(name).content_hash


def _lock_namespace(ns_dir: Path) -> int:
    try:
        return pidlock.acquire(ns_dir / LOCK_FILE)
    except pidlock.HeldError as e:
        raise ProducerLockedError(
            f"another producer (PID {e.holder}) owns {ns_dir}; stop it first, or use another namespace or root"
        ) from None


def _tmp_owner_dead(name: str) -> bool:
    """Whether a ``.<x>.<pid>.tmp`` file's writer is gone (so the file is debris)."""
    parts = name.split(".")
    try:
        pid = int(parts[-2])
    except (ValueError, IndexError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


__all__ = ["Producer", "ValidationError"]

"""The producer: run a cycle, publish a version, announce it.

A cycle, Hollow's way: populate → check and build (keys, ordinals, encoding,
indexes) → compare with the announced version → publish (write, verify,
rename) → announce → reclaim old versions. Any error before the announcement
leaves the announced version where it was.

One producer owns a namespace at a time: it holds an exclusive flock(2) on
``<ns>/.producer.lock`` for its whole life (released by the kernel if it dies).
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hollow import doorbell, layout, lease
from hollow.errors import Error as ReaderError
from hollow.state import StateFile
from hollowd import compaction, encoder, overlay, pidlock, publish
from hollowd import validators as validation
from hollowd.errors import ProducerLockedError, PublishError, StorageFullError, ValidationError, VersionNotFoundError
from hollowd.schema import NamespaceSchema
from hollowd.state import (
    Delta,
    IncrementalFn,
    PopulateFn,
    WriteState,
    build_type,
    encoder_of,
    full_fingerprints,
    full_keys,
    record_error,
    secondary_fps,
)

LOCK_FILE = ".producer.lock"
log = logging.getLogger("hollowd")
#: Endings of the temporary files a writer leaves when it dies (``.<version>.<pid>...``): reclaim's debris.
_DEBRIS = (".tmp", ".tmp" + layout.BASE_SUFFIX, ".tmp" + layout.MID_SUFFIX, compaction.SUFFIX)


@dataclass
class _Listing:
    """One listing of a namespace directory, for a cycle (Producer._list)."""

    versions: list[int]  # ascending
    locks: list[int]  # versions with a lockfile
    debris: list[Path]  # temporary files, of live writers or dead ones

    def take(self, again: _Listing) -> None:
        """Hold *again*, a listing taken after this one (a reclaim removed versions), for the rest of the cycle."""
        self.versions, self.locks, self.debris = again.versions, again.locks, again.debris


@dataclass
class _Latest:
    """The latest version as a cycle holds it: its file (verified when it was published, or read
    back), per type what a cycle reads of it (None until a cycle needs it), the background
    compaction it was rebased with, and the base the next version is built on."""

    version: int
    state: StateFile
    types: dict[str, overlay.Latest] | None
    job: compaction.Compactor | None
    base: StateFile


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
    :param max_versions: the most versions present at once, leased ones included (at least
        *retain* + 2): past it the oldest leased versions are removed despite their leases, and
        the PIDs holding them logged (docs/decisions.md §33). A reader may hurt only itself.
    :param mode: permission bits of published files (made read-only); readers need read access.
    :param validators: checks a candidate version must pass before it is published (hollowd.validators).
    :param versions_after: no version at or below this is minted (the daemon's persisted counter,
        so that versions never go back even when /dev/shm was emptied).
    :param reserve: called with each new version number before anything is written, to make
        it durable first (the daemon's counter): a version number is never handed out twice.
    :param compact_share: a version whose overlays hold more than this share of its base's
        records (and more than *compact_min*) is written again as a new base, as is one whose
        overlays have cost the versions since the base more than a compaction would
        (``hollowd.overlay.COMPACT_REWRITE``; docs/decisions.md §18).
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
        max_versions: int = 20,
        mode: int = 0o640,
        validators: Sequence[validation.Validator] = (),
        versions_after: int = 0,
        reserve: Callable[[int], None] | None = None,
        compact_share: float = overlay.COMPACT_SHARE,
        compact_min: int = overlay.COMPACT_MIN,
    ) -> None:
        self.namespace = layout.check_namespace(namespace)
        self.schema = NamespaceSchema(schema, primary_keys, indexes)
        self.dir = layout.namespace_dir(namespace, root)
        self.retain = max(1, retain)
        self.max_versions = max(max_versions, self.retain + 2)
        #: {version: PIDs holding it} of the leased versions the last reclaim removed anyway.
        self.last_revoked: dict[int, list[int]] = {}
        self.mode = mode
        self.validators = list(validators)
        self._reserve = reserve
        #: Seconds per stage of the last cycle (build, validate, publish, announce, reclaim).
        self.last_timings: dict[str, float] = {}
        publish.prepare_dirs(self.dir, mode)  # ours, or refused: docs/decisions.md §32
        self._lock_fd: int | None = _lock_namespace(self.dir)
        self._ringer = doorbell.ringer(self.dir.parent, self.namespace)
        self._encoders: dict[str, encoder.RecordEncoder | encoder.BuilderEncoder] = {}
        self._latest_cache: _Latest | None = None
        self._compactor: compaction.Compactor | None = None
        self._base_cache: dict[tuple[int, str], overlay.BaseArrays] = {}
        self.compact_share = compact_share
        self.compact_min = compact_min
        #: Seconds the last compaction took (None before the first).
        self.last_compaction: float | None = None
        self._last_version = max([*layout.list_versions(self.dir), self._announced_version(), versions_after])

    # -- cycles ---------------------------------------------------------------

    def run_cycle(self, populate: PopulateFn) -> int:
        """Run a full cycle: *populate* adds every record; returns the announced version.

        The records are compared with the latest version's (one change hash a
        record, as vectors) and only those that differ are published, on top of
        the latest version's base. When nothing differs, nothing is published and
        that version is returned. Raises :class:`~hollowd.ValidationError` (and
        announces nothing) when a record is bad.
        """
        with _gc_paused():
            started = time.monotonic()
            state = WriteState(self.schema)
            populate(state)
            populated = time.monotonic() - started
            self._claim()
            version = self._run(full=state)
            self.last_timings = {"populate": populated, **self.last_timings}
            return version

    def run_incremental(self, change: IncrementalFn) -> int:
        """Run a cycle from the latest version plus *change*'s ``upsert`` and ``remove`` calls.

        Costs O(k) for k changes, whatever the dataset's size.
        """
        with _gc_paused():
            delta = Delta(self.schema)
            change(delta)
            self._claim()
            return self._run(delta=delta)

    def run_changes(
        self,
        changes: Mapping[str, overlay.Changes],
        *,
        version: int | None = None,
        check: Callable[[Path], None] | None = None,
        pinned: bool = False,
    ) -> int:
        """Apply *changes* (per type, upserts by key, removed keys and their change hashes) as
        :meth:`run_incremental` does, as *version* (default: the next), and announce it.

        For a follower (hollowd.follower) that replays another producer's versions: the
        version number and the change hashes are the producer's. *check* is called with the
        published file before it is announced; if it raises, the version is removed and
        nothing is announced.

        *pinned* announces the version pinned. Only then may *version* be below the latest
        (a follower going back by reverse deltas to a version its store pins): it is written on
        the latest version's file, and the latest stays what it was.
        """
        below = version is not None and version <= self._last_version
        if below and (not pinned or version in self.versions()):
            raise PublishError(f"{self.namespace}: version {version} is not above the latest, {self._last_version}")
        with _gc_paused():
            return self._run(changes=changes, version=version, check=check, pinned=pinned)

    def encode_records(self, name: str, records: list[dict[str, Any]]) -> bytes:
        """*records* of type *name* as one Records message, the form of an overlay's chunk (a reverse
        delta carries a parent's records so: hollowd.replication)."""
        table, segment = encoder_of(self.schema.types[name], self._encoders).encode(records)  # type: ignore[arg-type]
        return bytes(table) + bytes(segment)

    def _run(
        self,
        *,
        full: WriteState | None = None,
        delta: Delta | None = None,
        changes: Mapping[str, overlay.Changes] | None = None,
        version: int | None = None,
        check: Callable[[Path], None] | None = None,
        pinned: bool = False,
    ) -> int:
        """A cycle's steps: read back, build, mint, validate, publish, announce, reclaim (and compact)."""
        timings = self.last_timings = {}
        clock = time.monotonic()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.monotonic()
            timings[stage] = timings.get(stage, 0.0) + now - clock
            clock = now

        # What the cycle knows of the namespace: one read of the announcement, one listing of the
        # directory (versions, lockfiles, debris), the latest version as the last cycle verified it.
        current, listing = self.announcement(), self._list()
        state, latest, base = self._read_latest(required=full is None, versions=listing.versions)
        same_schema = state is not None and state.header.schema_fingerprint == self.schema.fingerprint
        version, parent = version or self._next_version(listing.versions, current), self._last_version
        if state is None or (full is not None and not same_schema) or set(latest) != set(self.schema.types):
            hashes = {}
            if full is not None:  # records given as lines keep their lines' hashes, for the next cycle
                hashes = {n: overlay.line_hashes(full.lines[n]) for n in self.schema.types if full.only_lines(n)}
            records = full.materialize() if full is not None else self._records_from_delta(delta, latest)
            self._reserve_version(version)
            built = {
                name: build_type(
                    rtype, records.get(name, []), latest.get(name), self._encoders, hashes=hashes.get(name)
                )
                for name, rtype in self.schema.types.items()
            }
            lap("build")
            self._validate(version, {n: b.count for n, b in built.items()}, latest, records, records)
            lap("validate")
            written = self._publish(
                lambda: publish.write_state_file(
                    self.dir, self.namespace, version, parent, self.schema, built.values(), mode=self.mode
                ),
                listing,
            )
            overlays: dict[str, overlay.BuiltOverlay] = {}
        else:
            changes = dict(changes) if changes is not None else self._changes(full, delta, latest)
            over, mid = self._layering(state, latest, changes, rebased=base is not (state.base or state))
            overlays = {
                name: overlay.apply(
                    over[name], changes[name], version, encoder_of(rtype, self._encoders),
                    secondary_fps=secondary_fps, record_error=record_error,
                )
                for name, rtype in self.schema.types.items()
            }  # fmt: skip
            lap("build")
            if same_schema and not any(o.upserted or o.removed for o in overlays.values()):
                return self._unchanged(state.version, current, listing)
            self._reserve_version(version)
            changed = {n: o.upserted for n, o in overlays.items()}
            everything: Mapping[str, Sequence[Mapping[str, Any]]] = _VersionRecords(
                self, latest, changed, {n: c.removals for n, c in changes.items()}
            )
            if full is not None and not any(map(full.only_lines, self.schema.types)):
                everything = full.records  # what the cycle was handed is every record
            self._validate(version, {n: o.count for n, o in overlays.items()}, latest, everything, changed)
            lap("validate")
            assert base is not None
            written = self._publish(
                lambda: publish.write_overlay_file(
                    self.dir,
                    self.namespace,
                    version,
                    parent,
                    self.schema,
                    base,
                    overlays.values(),
                    mode=self.mode,
                    mid=mid,
                    shared=same_schema,  # the files this cycle holds open read the new version as they are
                ),
                listing,
            )
            self._check_published(written.path, version, check)
        lap("publish")
        back = version < self._last_version  # run_changes(pinned=True): an older version, written again
        announced = self._published(version, written, base, pinned=pinned, back=back, current=current)
        lap("announce")
        if version not in listing.versions:
            bisect.insort(listing.versions, version)
        self._reclaim(listing, announced)
        lap("reclaim")
        if not back and self._compact_if_due(version, overlays, latest):
            lap("compact")
        return version

    @staticmethod
    def _layering(
        state: StateFile,
        latest: dict[str, overlay.Latest],
        changes: Mapping[str, overlay.Changes],
        *,
        rebased: bool,
    ) -> tuple[dict[str, overlay.Latest], StateFile | None]:
        """What the next version's overlays are written over, per type, and its mid (None: the base).

        Over the latest's mid (or the latest itself, which becomes the mid) while what changed
        since stays small beside the mid's overlay, so that a version writes O(that); over the
        base again once it grows, which makes that version the next mid (docs/decisions.md §18).
        """
        if rebased or state.base is None:
            return latest, None  # a base, or the latest rebased onto a new one: over the base
        tops = {n: lt.over_mid() for n, lt in latest.items()}
        k = {n: len(c.upserts) + len(c.removals) for n, c in changes.items()}
        large = any(t.mid is not None and t.mid.pressure >= overlay.TOP_FROM for t in tops.values())
        fits = all(
            t.mid is not None and t.pressure + k.get(n, 0) <= overlay.top_limit(t.mid.pressure) for n, t in tops.items()
        )
        if large and fits:
            return dict(tops), state.mid or state
        return {n: lt.flat() for n, lt in latest.items()}, None

    def _compact_if_due(
        self, version: int, overlays: dict[str, overlay.BuiltOverlay], latest: dict[str, overlay.Latest]
    ) -> bool:
        """Compact in the cycle if *version*'s holes pass half its list (rare, and a squeeze must be done
        here; True), or start a background compaction if its overlays have grown or cost enough."""
        if overlay.needs_renumbering(overlays.values()):
            self.compact()
            return True
        if overlay.needs_compaction(
            overlays.values(), {n: lt.base.count for n, lt in latest.items()}, self.compact_share, self.compact_min
        ):
            self._compact_later(version)
        return False

    def _claim(self) -> None:
        """Make sure the namespace directory and its lock are still the ones this producer took.

        ``rm -rf`` of the directory (an operator; systemd's ``RemoveIPC``) takes the lockfile
        with it: the lock would then guard nothing, and a second producer could start beside
        this one. The directory is made again and the lock taken again, or the cycle fails
        with :class:`ProducerLockedError` when another producer got there first; numbering
        goes on from this producer's (and the daemon's durable) counter (issue 9, item 12).
        """
        fd = self._lock_fd
        if fd is None:
            raise PublishError(f"the producer of {self.namespace} is closed")
        held = os.fstat(fd)
        try:
            st = os.stat(self.dir / LOCK_FILE, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino):
                return
        except FileNotFoundError:
            pass
        log.warning("hollowd: event=namespace-lost namespace=%s dir=%s (removed under the producer; making it again)",
                    self.namespace, self.dir)  # fmt: skip
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o755 if self.mode & 0o004 else 0o750)
        self._lock_fd = _lock_namespace(self.dir)  # ProducerLockedError: another one owns it now
        os.close(fd)
        self._latest_cache = None
        self._base_cache.clear()
        self._drop_compaction()

    def _publish(self, write: Callable[[], StateFile], listing: _Listing) -> StateFile:
        """*write* the version (which makes room for its announcement first: hollowd.publish) and return
        it as verified; when the mount is full, the versions kept only by *retain* (not announced,
        pinned, latest or leased: kept for rollbacks) are reclaimed (*listing* is then taken again)
        and the write is tried once more before :class:`StorageFullError` fails the cycle (issue 9, item 11)."""
        for attempt in (0, 1):
            try:
                return write()
            except StorageFullError as e:
                removed = [] if attempt else self.reclaim(retain=1)
                if not removed:
                    raise
                listing.take(self._list())
                log.warning(
                    "hollowd: event=storage-full namespace=%s removed=%s error=%r (reclaimed beyond retain=%d)",
                    self.namespace,
                    ",".join(map(str, removed)),
                    str(e),
                    self.retain,
                )
        raise AssertionError("unreachable")  # pragma: no cover - the second attempt returns or raises

    def _check_published(self, written: Path, version: int, check: Callable[[Path], None] | None) -> None:
        """Run a caller's *check* on a published file; if it raises, the version is removed, never announced."""
        if check is None:
            return
        try:
            check(written)
        except BaseException:
            publish.remove_version(self.dir, version)  # refused: never announced, never built on
            self._latest_cache = None
            raise

    def _published(
        self,
        version: int,
        written: StateFile,
        base: StateFile | None,
        *,
        pinned: bool,
        back: bool,
        current: layout.Announcement | None,
    ) -> layout.Announcement:
        """After *version* was written (and verified, as *written*): carry it and announce it."""
        self._last_version = max(self._last_version, version)
        self._adopted(base)
        # The file just verified is the next cycle's latest: carried, not opened again (§90). A version
        # written below the latest (a follower's pin) is not the latest; the next cycle reads that back.
        self._latest_cache = None if back else _Latest(version, written, None, None, written.base or written)
        return self._announce_written(version, pinned=pinned, current=current)

    def _adopted(self, base: StateFile | None) -> None:
        """After a version is published on *base*: a background base it used is linked now; drop its name.
        (By the object the rebase opened, not its path: the verified version names its base by its link.)"""
        job, cached = self._compactor, self._latest_cache
        if job is not None and cached is not None and cached.job is job and base is not None and base is cached.base:
            self._compacted(job.version, job.seconds, "background")
            self._drop_compaction()

    def _reserve_version(self, version: int) -> None:
        if self._reserve is not None:
            self._reserve(version)  # durable before anything is written: never handed out twice

    def _changes(
        self, full: WriteState | None, delta: Delta | None, latest: dict[str, overlay.Latest]
    ) -> dict[str, overlay.Changes]:
        """Each type's changes: the delta's, or what differs between *full* and the latest version."""
        if delta is not None:
            return {n: overlay.Changes(delta.upserts[n], list(delta.removals[n])) for n in self.schema.types}
        assert full is not None
        changes = {}
        for name, rtype in self.schema.types.items():
            if full.only_lines(name):  # parse only the lines not seen in the latest version
                changes[name] = overlay.diff_lines(latest[name], full.lines[name], _key_parser(rtype))
                continue
            records = full.materialize(name)[name]
            changes[name] = overlay.diff(latest[name], records, _key_parser(rtype))
        return changes

    def _records_from_delta(self, delta: Delta | None, latest: dict[str, overlay.Latest]) -> dict[str, list[Any]]:
        """A first version from an incremental cycle: the upserts are all there is."""
        if delta is None:  # run_changes: a follower's changes apply to a version holding every type
            raise PublishError(f"{self.namespace}: changes need a latest version holding every type to apply to")
        if latest:
            raise PublishError(
                f"{self.namespace}: the latest version does not hold every type of the schema "
                "(a type was added, or its keys or indexes changed): run a full cycle first"
            )
        return {name: list(delta.upserts[name].values()) for name in self.schema.types}

    def _unchanged(self, version: int, current: layout.Announcement | None, listing: _Listing) -> int:
        """Nothing differs from the latest version: make sure it is the one announced, publish nothing."""
        if current is None or (not current.pinned and current.version != version):
            current = self._announcement(version, pinned=False)
            self._announce(current)  # published, never announced (a crash)
        self._reclaim(listing, current)  # a killed writer's debris goes now, not at the next publish (issue 9.13)
        return version

    def _validate(
        self,
        version: int,
        counts: dict[str, int],
        latest: dict[str, overlay.Latest],
        records: Mapping[str, Sequence[Mapping[str, Any]]],
        changed: Mapping[str, Sequence[Mapping[str, Any]]],
    ) -> None:
        if not self.validators:
            return
        validation.run_all(
            self.validators,
            validation.Candidate(
                namespace=self.namespace,
                version=version,
                counts=counts,
                previous_counts={n: lt.count for n, lt in latest.items()} if latest else None,
                records=records,
                changed=changed,
            ),
        )

    def _announce_written(
        self, version: int, *, pinned: bool, current: layout.Announcement | None
    ) -> layout.Announcement:
        """Announce the version just written, given the announcement read at the cycle's start; returns
        the new one (control requests run between cycles, in the same thread: nothing changed it since)."""
        if pinned:  # run_changes(pinned=True): a follower's pin, perhaps to an older version
            new = layout.Announcement(version, True, self._last_version, time.time_ns())
        elif current is not None and current.pinned:  # followers stay on the pin; record the new latest
            new = layout.Announcement(current.version, True, version, time.time_ns())
        else:
            new = self._announcement(version, pinned=False)
        self._announce(new)
        return new

    def compact(self) -> int:
        """Write the latest version again as a base holding every record (same version, same records).

        Later versions are built on it. Readers of the version as it was keep
        their mapping; new readers get the base. Holes past half the list are
        squeezed out (iteration order stays). Returns the version.
        """
        self._drop_compaction()
        version = self._last_version
        state, latest, _ = self._read_latest(required=True)
        if state is None or state.base is None:
            return version
        latest = {n: lt.flat() for n, lt in latest.items()}
        started = time.monotonic()
        built = compaction.build_base(latest, self.schema, self._encoders, squeeze=True)
        publish.write_state_file(
            self.dir, self.namespace, version, state.header.parent_version, self.schema, built, mode=self.mode
        )
        self._latest_cache = None
        self._compacted(version, time.monotonic() - started, "in-cycle")
        return version

    def _compact_later(self, version: int) -> None:
        """Start compacting *version* in the background, unless a compaction is under way."""
        if self._compactor is None:
            self._compactor = compaction.Compactor(self.dir, self.namespace, self.schema, version, self.mode)

    def _compacted(self, version: int, seconds: float, how: str) -> None:
        self.last_compaction = seconds
        log.info(
            "hollowd: event=compact namespace=%s version=%d seconds=%.3f how=%s", self.namespace, version, seconds, how
        )

    def _finished_compaction(self) -> compaction.Compactor | None:
        """The background compaction, once it is done and usable (a failed one is logged and dropped)."""
        job = self._compactor
        if job is None or job.is_alive():
            return None
        if job.error is not None or job.path is None:
            self._drop_compaction(job.error or "it wrote nothing")
            return None
        return job

    def _drop_compaction(self, error: str | None = None) -> None:
        """Stop and forget the background compaction (and what it wrote), saying why when it failed."""
        job = self._compactor
        if job is None:
            return
        if error is not None:
            log.error(
                "hollowd: event=compact-failed namespace=%s version=%d error=%r", self.namespace, job.version, error
            )
        job.discard()
        self._compactor = None

    def _read_latest(
        self, *, required: bool, versions: list[int] | None = None
    ) -> tuple[StateFile | None, dict[str, overlay.Latest], StateFile | None]:
        """The latest version's file, per type what a cycle needs of it (read back from the file, never
        remembered), and the base the next version is built on: the latest's, or a newer one compacted
        in the background.

        The file is the one the last cycle verified and published, carried over (§90), while it is
        still the one under the latest's name (one stat: a file put there by anyone else, or none, is
        read afresh); *versions* (the cycle's listing) saves listing the directory again.
        """
        latest = self._last_version
        path = self.dir / layout.state_name(latest)
        cached = self._latest_cache
        try:
            st = os.stat(path, follow_symlinks=False) if latest else None
        except FileNotFoundError:
            st = None
        if latest and st is None:
            # reserved (the daemon's counter), never written (killed mid-publish): the newest written
            latest = max((v for v in (self.versions() if versions is None else versions) if v < latest), default=0)
            path, cached = self.dir / layout.state_name(latest), None
        if cached is not None and (cached.version != latest or not _is_file(cached.state, st)):
            cached = self._latest_cache = None  # not the file this producer wrote: read what is there
        job = self._finished_compaction()
        if cached is not None and cached.types is not None and cached.job is job:
            return cached.state, cached.types, cached.base
        if not latest:
            return None, {}, None
        try:
            state = cached.state if cached is not None else StateFile(path, namespace=self.namespace)
            types = {
                name: overlay.Latest.read(state, rtype, self._base_cache)
                for name, rtype in self.schema.types.items()
                if name in state.type_names and _same_keys(state, rtype)
            }
        except ReaderError as e:
            if required:  # an incremental cycle cannot start from a version it cannot read
                raise PublishError(f"cannot read back the latest version to continue from it: {e}") from e
            # Written by an older hollowd, or damaged: start afresh (new ordinals), keep numbering up.
            log.warning("hollowd: %s; the next version starts afresh from its source", str(e))
            return None, {}, None
        base = state.base or state
        if job is not None:
            rebased = self._rebase(state, types, job)
            if rebased is not None:
                types, base = rebased
        self._latest_cache = _Latest(latest, state, types, job, base)
        return state, types, base

    def _rebase(
        self, state: StateFile, types: dict[str, overlay.Latest], job: compaction.Compactor
    ) -> tuple[dict[str, overlay.Latest], StateFile] | None:
        """The latest version's types as overlays on the base *job* compacted, or None (then dropped)."""
        assert job.path is not None
        current = state.base or state
        if state.base is None or current.version >= job.version or set(types) != set(self.schema.types):
            self._drop_compaction()  # the latest is a base already, or a newer one than the job's
            return None
        try:
            base = StateFile(job.path, namespace=self.namespace)
            return {n: overlay.rebase(lt.flat(), base, job.version, self._base_cache) for n, lt in types.items()}, base
        except ReaderError as e:
            self._drop_compaction(str(e))
            return None

    def materialize(self, saved: Path, *, pinned: bool = False) -> int:
        """Put a saved state file (the daemon's durable copy) back in place and announce it.

        For a restart after /dev/shm was emptied: readers get the last good
        version before any source is read. Returns its version. A version
        already present is announced as it is.
        """
        self._claim()
        data = saved.read_bytes()
        header = layout.Header.unpack(data, what=str(saved), size=len(data))
        if header.namespace != self.namespace:
            raise PublishError(f"{saved} holds namespace {header.namespace!r}, not {self.namespace!r}")
        version = header.version
        if not (self.dir / layout.state_name(version)).exists():
            base, mid = layout.base_of(saved), layout.mid_of(saved)
            publish.copy_state_file(
                self.dir, version, data, mode=self.mode, namespace=self.namespace,
                base=base if base.exists() else None, mid=mid if mid.exists() else None,
            )  # fmt: skip
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

    def record_counts(self) -> dict[str, int]:
        """Records per type in the latest version, from its file (empty before the first).

        Safe from another thread (the metrics server's): it reads the file and touches
        nothing of the cycle's.
        """
        latest = self._last_version
        try:
            state = StateFile(self.dir / layout.state_name(latest), namespace=self.namespace)
            return {name: len(state.type(name)) for name in state.type_names}
        except ReaderError:
            return {}

    def versions(self) -> list[int]:
        """Versions with a state file, ascending."""
        return layout.list_versions(self.dir)

    def reclaim(self, *, retain: int | None = None) -> list[int]:
        """Remove the versions nothing needs; returns those removed.

        A version stays while it is announced or pinned, within the newest
        *retain* (the producer's unless given), or leased by any process (hollow.lease).
        """
        return self._reclaim(self._list(), self.announcement(), retain)

    def _reclaim(self, listing: _Listing, current: layout.Announcement | None, retain: int | None = None) -> list[int]:
        """:meth:`reclaim`, from a cycle's *listing* of the namespace and the announcement as it is now."""
        versions = listing.versions
        keep = set(versions[-(retain or self.retain) :])
        if current is not None:
            keep.add(current.version)
        removed = [v for v in versions if v not in keep and publish.remove_version(self.dir, v)]
        self.last_revoked = self._revoke([v for v in versions if v not in removed], keep)
        removed += list(self.last_revoked)
        for v in listing.locks:  # lockfiles whose state file is gone (a crash mid-removal)
            if v not in versions:
                publish.remove_version(self.dir, v)
        for stale in listing.debris:  # files of a writer that died: temporary ones, bases compacted for nobody
            if _tmp_owner_dead(stale.name.removesuffix(layout.BASE_SUFFIX).removesuffix(layout.MID_SUFFIX)):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
        return removed

    def _list(self) -> _Listing:
        """One listing of the namespace directory (and of the announcement's) for everything a cycle
        needs of it: the versions present, their lockfiles, and the temporary files that may be debris."""
        versions, locks, debris = [], [], []
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            names = []
        for name in names:
            v = layout.parse_state_name(name)
            if v is not None:
                versions.append(v)
            elif name.endswith(".lock"):
                v = layout.parse_state_name(name[: -len(".lock")])
                if v is not None:
                    locks.append(v)
            elif name.startswith(".") and name.endswith(_DEBRIS):
                debris.append(self.dir / name)
        where = self.dir / layout.ANNOUNCE_DIR
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            prefix = f".{layout.ANNOUNCED}."
            debris += [where / n for n in os.listdir(where) if n.startswith(prefix) and n.endswith(".tmp")]
        return _Listing(sorted(versions), locks, debris)

    def _revoke(self, present: list[int], keep: set[int]) -> dict[int, list[int]]:
        """Past *max_versions* present, remove the oldest leased versions anyway: {version: holders}.

        Their holders keep reading what they mapped (an unlinked file stays while mapped:
        docs/pitfalls.md 7); nobody can attach them any more."""
        excess = len(present) - self.max_versions
        if excess <= 0:
            return {}
        revoked = {
            v: lease.holders(lease.lock_path(self.dir, v)) for v in [v for v in present if v not in keep][:excess]
        }
        for v in revoked:
            publish.remove_version(self.dir, v, force=True)
        if revoked:
            log.warning(
                "hollowd: event=leases-revoked namespace=%s versions=%s holders=%s (more than max_versions=%d "
                "versions present; those readers keep what they mapped, nobody can attach these versions again)",
                self.namespace,
                ",".join(map(str, revoked)),
                ",".join(sorted({str(p) for pids in revoked.values() for p in pids})) or "unknown",
                self.max_versions,
            )
        return revoked

    def close(self) -> None:
        """Release the namespace (other producers may then take it)."""
        self._drop_compaction()
        self._latest_cache = None  # their mappings hold descriptors of the latest files
        self._base_cache.clear()
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

    def announcement(self) -> layout.Announcement | None:
        """The announcement as it is, or None if there is none or something else was planted under its
        name (logged; the next announcement replaces it: docs/decisions.md §34)."""
        try:
            return layout.read_announcement(self.dir)
        except ReaderError as e:
            log.warning("hollowd: %s; the next announcement replaces it", str(e))  # not e: its frames hold mappings
            return None

    def _announced_version(self) -> int:
        current = self.announcement()
        return current.version if current is not None else 0

    def _next_version(self, versions: list[int] | None = None, current: layout.Announcement | None = None) -> int:
        """The next version to mint, above every one written, announced or counted; *versions* and
        *current* are the cycle's listing and announcement (read again when not given)."""
        if versions is None:
            versions, current = self.versions(), self.announcement()
        return max([self._last_version, *versions, current.version if current is not None else 0]) + 1


def _key_parser(rtype: Any) -> Callable[[list[dict[str, Any]], list[int]], tuple[list[Any], Any]]:
    """Keys and fingerprints of some records of a full cycle, errors naming their input positions."""

    def keys_of(records: list[dict[str, Any]], positions: list[int]) -> tuple[list[Any], Any]:
        keys = full_keys(rtype, records, positions)
        return keys, full_fingerprints(rtype, keys, positions)

    return keys_of


def _is_file(state: StateFile, st: os.stat_result | None) -> bool:
    """Whether *st* (a stat of the latest's name) is of the file *state* has mapped and checked."""
    checked = state.checked_whole
    return st is not None and checked is not None and (st.st_dev, st.st_ino) == checked[:2]


def _same_keys(state: StateFile, rtype: Any) -> bool:
    """Whether the file's primary key and indexes of a type are the ones the schema declares now."""
    view = state.type(rtype.name)
    declared = [(ix.fields, ix.key_types) for ix in rtype.indexes]
    return (view.primary.fields, view.primary.key_types) == (rtype.primary.fields, rtype.primary.key_types) and [
        (ix.fields, ix.key_types) for ix in view.indexes
    ] == declared


class _VersionRecords(Mapping[str, Sequence[Mapping[str, Any]]]):
    """A validator's view of every record of a version built from changes: built only if a validator asks."""

    def __init__(
        self,
        producer: Producer,
        latest: dict[str, overlay.Latest],
        changed: Mapping[str, Any],
        removed: Mapping[str, list[Any]],
    ) -> None:
        self._producer = producer
        self._latest = latest
        self._changed = changed
        self._removed = removed
        self._cache: dict[str, list[dict[str, Any]]] = {}

    def __getitem__(self, name: str) -> Sequence[Mapping[str, Any]]:
        if name not in self._cache:
            if name not in self._latest:
                raise KeyError(name)
            view = self._latest[name].view
            self._cache[name] = [r.to_dict() for r in view]  # the version before, then the changes
            rtype = self._producer.schema.types[name]
            by_key = {rtype.key_of(r): r for r in self._cache[name]}
            for key in self._removed.get(name, ()):
                by_key.pop(key, None)
            by_key.update({rtype.key_of(r): r for r in self._changed.get(name, ())})
            self._cache[name] = list(by_key.values())
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._latest)

    def __len__(self) -> int:
        return len(self._latest)


def _lock_namespace(ns_dir: Path) -> int:
    try:
        return pidlock.acquire(ns_dir / LOCK_FILE)
    except pidlock.NotRegularError as e:
        raise ProducerLockedError(f"cannot lock {ns_dir}: {e}") from None
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

"""A follower: a namespace whose versions come from another host's producer, through a blob store.

It watches the store's announcement (a conditional GET with the last entity tag,
every *interval* seconds), plans the path from the version it has to the one
announced by headers alone (deltas forward; the nearest snapshot when there is no
chain or it moves fewer bytes; reverse deltas back to an older version the store
pins; never a LIST in the normal path), downloads and
checks each blob, applies a delta through the producer's incremental path
(:meth:`Producer.run_changes`, so its work is proportional to the delta), checks
the version's content hash against the producer's before it is announced, and
announces locally (doorbells, inotify) as if it had produced the version.

The follower's local files are its own (it compacts at its own moments); only
the records, their ordinals and change hashes are the producer's, and the content
hash checks exactly those (hollowd.replication, docs/decisions.md §50).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hollow import layout
from hollow.errors import Error as ReaderError
from hollow.state import StateFile
from hollowd import blobs, overlay
from hollowd.errors import Error, ValidationError
from hollowd.producer import Producer
from hollowd.replication import (
    Delta,
    Header,
    ReplicationError,
    StoreAnnouncement,
    content_hash,
    decode_delta,
    delta_content_hash,
    hashes_at,
    header_key,
    moved_content_hash,
)

log = logging.getLogger("hollowd")
DEFAULT_INTERVAL = 1.0


@dataclass
class Step:
    """One step of a plan: apply *header*'s delta, or put its snapshot in place."""

    kind: str  # "delta", "reverse" or "snapshot"
    header: Header


@dataclass
class FollowerStatus:
    store: str
    there: int  # the version announced in the store (0: none seen yet)
    here: int  # the version announced locally
    lag: int  # versions between them
    pinned: bool
    last_error: str | None
    failures: int
    bytes_fetched: int
    blobs_applied: int
    last_contact: float  # time.time() of the last answer from the store (0: never)


class Follower:
    """Follows one namespace from *store* into *root*.

    The local producer is made from the first version the follower has (its own file
    after a restart, else the first snapshot): the schema, keys and indexes travel
    in every state file, so a follower needs only the store and the namespace.
    """

    def __init__(
        self,
        store: blobs.BlobStore,
        namespace: str,
        *,
        root: str | os.PathLike[str] | None = None,
        work_dir: str | os.PathLike[str],
        interval: float = DEFAULT_INTERVAL,
        retain: int = 5,
        mode: int = 0o640,
        producer: Producer | None = None,
    ) -> None:
        """*producer*: the local producer to catch up (a producing host restoring from the store); by
        default one is made from the versions themselves."""
        self.store = store
        self.namespace = layout.check_namespace(namespace)
        self.dir = layout.namespace_dir(namespace, root)
        self.root = self.dir.parent
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.interval = interval
        self.retain = retain
        self.mode = mode
        self.producer: Producer | None = producer
        self._owns_producer = producer is None
        self._etag: str | None = None
        self._announcement: StoreAnnouncement | None = None
        self._headers: dict[int, Header] = {}
        self.last_error: str | None = None
        self.failures = 0
        self.bytes_fetched = 0
        self.blobs_applied = 0
        self.last_contact = 0.0
        #: A pin made on this host (``hollow pin``): it overrides the store's announcement here.
        self.local_pin: int | None = None
        self._lock = threading.Lock()  # poll() in the follower's thread, pins from the daemon's
        #: Seconds per stage of the last look at the store: watch (the announcement's GET), headers, fetch
        #: (blob GETs), unpack (checksum, zstd), decode (delta to records), verify (content hash), and the
        #: local producer's build, validate, publish, announce, reclaim (hollow status, bench/hosts.py).
        self.last_timings: dict[str, float] = {}
        self._open_local()

    # -- the local producer ---------------------------------------------------------------

    def _open_local(self) -> None:
        """A producer over the local root, if it holds a version already (a restart)."""
        versions = layout.list_versions(self.dir)
        if versions and self.producer is None:
            with contextlib.suppress(ReaderError):
                self.producer = self._producer_for(StateFile(self.dir / str(versions[-1]), namespace=self.namespace))

    def _producer_for(self, state: StateFile) -> Producer:
        """A producer whose schema, keys and indexes are those *state* was written with."""
        schema_path = self.work_dir / (Path(state.schema_file).name or "schema.capnp")
        source = state.schema_source
        if not schema_path.exists() or schema_path.read_text() != source:
            tmp = schema_path.with_name(f".{schema_path.name}.{os.getpid()}.tmp")
            tmp.write_text(source)
            os.replace(tmp, schema_path)
        primary_keys: dict[str, Any] = {}
        indexes: dict[str, list[Any]] = {}
        for name in state.declared_type_names:
            view = state.type(name)
            primary_keys[name] = list(view.primary.fields)
            indexes[name] = [list(ix.fields) for ix in view.indexes]
        producer = Producer(
            self.namespace,
            schema=schema_path,
            primary_keys=primary_keys,
            indexes=indexes,
            root=self.root,
            retain=self.retain,
            mode=self.mode,
        )
        if producer.schema.fingerprint != state.header.schema_fingerprint:
            producer.close()
            raise ReplicationError(
                f"{self.namespace}: the schema rebuilt from version {state.version} does not match its fingerprint "
                "(a schema that imports other files cannot be followed yet)"
            )
        return producer

    @property
    def here(self) -> int:
        current = layout.read_announcement(self.dir)
        return current.version if current is not None else 0

    def _latest_local(self) -> int:
        versions = layout.list_versions(self.dir)
        return versions[-1] if versions else 0

    # -- watching -------------------------------------------------------------------------

    def poll(self) -> bool:
        """Look at the store's announcement once and catch up with it; True when the local version moved.

        Errors (the store unreachable, a damaged blob, a hash that differs) are kept in
        :attr:`last_error` and counted; the local version stays where it was.
        """
        with self._lock:
            return self._poll()

    @contextlib.contextmanager
    def _timed(self, stage: str) -> Any:
        started = time.monotonic()
        try:
            yield
        finally:
            self.last_timings[stage] = self.last_timings.get(stage, 0.0) + time.monotonic() - started

    def _poll(self) -> bool:
        before = self.here
        self.last_timings = {}
        try:
            with self._timed("watch"):
                got = self.store.get_if_changed("announced", self._etag)
            self.last_contact = time.time()
            if got is not None:
                self._announcement = StoreAnnouncement.loads(got.data, what=f"{self.store.url}/announced")
                self._etag = got.etag
                if self._announcement.header is not None:  # the header came with it: no GET of its own
                    self._headers.setdefault(self._announcement.version, self._announcement.header)
            if self.local_pin is not None:
                self._to_local_pin()
            elif self._announcement is not None:
                self._sync(self._announcement)
            self.last_error = None
        except (Error, ReaderError) as e:
            self.failures += 1
            self.last_error = str(e)
            self._etag = None  # look again in full next time
            log.error(
                "hollowd: event=follow-failed namespace=%s store=%s error=%r", self.namespace, self.store.url, str(e)
            )
        return self.here != before

    def pin(self, version: int | None) -> None:
        """Pin this host to *version* whatever the store announces (None: follow the store again).

        A version no longer on this host comes from the store (reverse deltas back, deltas forward, or
        a snapshot), as after a restart with an empty root: the daemon keeps the pin in its state
        directory and gives it back through :attr:`local_pin` before the first :meth:`poll`."""
        with self._lock:
            if version is None:
                self.local_pin = None
                self._etag = None  # look at the store's announcement afresh
                if self._announcement is not None:
                    self._sync(self._announcement, force=True)
                return
            try:
                self._to(version)
            except (Error, ReaderError) as e:
                raise ReplicationError(
                    f"{self.namespace} version {version} is not on this host (have: {layout.list_versions(self.dir)}) "
                    f"and cannot come from {self.store.url}: {e}"
                ) from None
            self.local_pin = version

    def _to_local_pin(self) -> None:
        """Keep this host on its own pin (announced pinned here), whatever the store says."""
        assert self.local_pin is not None
        current = layout.read_announcement(self.dir)
        if current is None or current.version != self.local_pin or not current.pinned:
            self._to(self.local_pin)

    def _to(self, version: int) -> None:
        """Announce *version* pinned here: from this host's files if it has it, else from the store."""
        if self.producer is not None and (self.dir / layout.state_name(version)).exists():
            self.producer.pin(version)
            return
        self._sync(StoreAnnouncement(version, True, version, time.time_ns()), force=True)

    def run(self, stop: threading.Event) -> None:
        """Poll every :attr:`interval` seconds until *stop* is set."""
        while not stop.is_set():
            started = time.monotonic()
            self.poll()
            stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def report(self) -> dict[str, Any]:
        """The daemon's status of this namespace (``hollow status``, the control socket)."""
        st = self.status()
        current = layout.read_announcement(self.dir)
        return {
            "namespace": self.namespace,
            "announced": current.version if current else None,
            "pinned": st.pinned,
            "latest": current.latest if current else None,
            "follows": st.store,
            "store_version": st.there or None,
            "lag": st.lag,
            "local_pin": self.local_pin,
            "last_error": st.last_error,
            "failures": st.failures,
            "bytes_fetched": st.bytes_fetched,
            "blobs_applied": st.blobs_applied,
            "last_contact": st.last_contact or None,
        }

    def status(self) -> FollowerStatus:
        ann = self._announcement
        here = self.here
        current = layout.read_announcement(self.dir)
        there = ann.version if ann else 0
        return FollowerStatus(
            store=self.store.url,
            there=there,
            here=here,
            lag=abs(there - here) if there else 0,
            pinned=bool(current and current.pinned),
            last_error=self.last_error,
            failures=self.failures,
            bytes_fetched=self.bytes_fetched,
            blobs_applied=self.blobs_applied,
            last_contact=self.last_contact,
        )

    # -- catching up ------------------------------------------------------------------------

    def _sync(self, ann: StoreAnnouncement, *, force: bool = False) -> None:
        target = ann.version
        current = layout.read_announcement(self.dir)
        if not force and current is not None and current.version == target and current.pinned == ann.pinned:
            return
        if (self.dir / layout.state_name(target)).exists() and (ann.pinned or target <= self._latest_local()):
            assert self.producer is not None
            if ann.pinned:
                self.producer.pin(target)  # the store's pin moves this host too
            else:
                self.producer.unpin()
            return
        if self.producer is not None and current is not None and current.pinned and not ann.pinned:
            self.producer.unpin()  # the store's pin is gone: back to the latest, then on
        if target < self._latest_local():  # back (a pin) to a version this host no longer has
            self._go_back(target)
            return
        plan = self.plan(self._latest_local(), target)
        try:
            self._execute(plan, pinned=ann.pinned)
        except (blobs.BlobCorruptError, ReplicationError) as e:
            if all(s.kind == "snapshot" for s in plan):
                raise
            log.warning(
                "hollowd: event=follow-fallback namespace=%s version=%d error=%r: going by the nearest snapshot",
                self.namespace, target, str(e),
            )  # fmt: skip
            self._execute(self.plan(0, target), pinned=ann.pinned)

    def _header(self, version: int) -> Header | None:
        h = self._headers.get(version)
        if h is None:
            with self._timed("headers"):
                got = self.store.get(header_key(version))
            if got is None:
                return None
            self.bytes_fetched += len(got.data)
            h = self._headers[version] = Header.loads(got.data, what=f"{self.store.url}/{header_key(version)}")
            if len(self._headers) > 4096:
                self._headers.pop(next(iter(self._headers)))
        return h

    def plan(self, here: int, target: int) -> list[Step]:
        """The steps from local version *here* (0: none) to *target*, by headers alone.

        Deltas forward while they move fewer bytes than the nearest snapshot and the
        deltas after it; walking back stops at *here*, at a version without a delta,
        or once the deltas so far outweigh the snapshot route. O(distance) header GETs.
        """
        top = self._header(target)
        if top is None:
            raise ReplicationError(f"{self.store.url}: version {target} is announced but has no header")
        walk: list[Header] = []
        delta_bytes = 0
        snap_at: int | None = None  # index in walk of the nearest snapshot
        snap_bytes = 0
        h: Header | None = top
        while h is not None:
            if here and h.version == here:
                return [Step("delta", x) for x in reversed(walk)]
            walk.append(h)
            if snap_at is None and "snapshot" in h.blobs:
                snap_at = len(walk) - 1
                snap_bytes = delta_bytes + h.bytes_for("snapshot", "base")
            if "delta" not in h.blobs or not here or h.parent < here or not h.parent:
                break
            delta_bytes += h.bytes_for("delta")
            if snap_at is not None and delta_bytes > snap_bytes:
                break  # far behind: a jump by snapshot moves fewer bytes
            h = self._header(h.parent)
        while snap_at is None:  # no snapshot seen: walk on down (a missing delta, a broken chain)
            last = walk[-1]
            h = self._header(last.parent) if last.parent else None
            if h is None:
                raise ReplicationError(
                    f"{self.store.url}: no snapshot at or below version {target} (the chain breaks at {last.version})"
                )
            walk.append(h)
            if "snapshot" in h.blobs:
                snap_at = len(walk) - 1
        return [Step("snapshot", walk[snap_at])] + [Step("delta", x) for x in reversed(walk[:snap_at])]

    def plan_back(self, here: int, target: int) -> list[Step] | None:
        """Reverse deltas from local version *here* down to *target*, by headers alone (O(here - target)
        GETs, no LIST); None when the chain has no way back there (a version without a reverse delta, a
        missing header, *target* not on the chain)."""
        steps: list[Step] = []
        v = here
        while v > target:
            h = self._header(v)
            if h is None or "reverse" not in h.blobs or not h.parent or h.parent < target:
                return None
            steps.append(Step("reverse", h))
            v = h.parent
        return steps

    def _go_back(self, target: int) -> None:
        """To *target*, older than this host's latest and no longer here (the store pins it): by reverse
        deltas from the latest, or by *target*'s snapshot when that moves fewer bytes or there is no way
        back; a reverse delta that fails (missing, damaged, a content hash that differs) falls back to
        the snapshot. The version is announced pinned: it is never this host's latest."""
        top = self._header(target)
        if top is None:
            raise ReplicationError(f"{self.store.url}: version {target} is announced but has no header")
        back = self.plan_back(self._latest_local(), target)
        snapshot = [Step("snapshot", top)] if "snapshot" in top.blobs else None
        if back is not None and (
            snapshot is None or sum(s.header.bytes_for("reverse") for s in back) <= top.bytes_for("snapshot", "base")
        ):
            try:
                self._apply_reverse(back, top)
                return
            except (blobs.BlobCorruptError, ReplicationError) as e:
                if snapshot is None:
                    raise
                log.warning(
                    "hollowd: event=follow-fallback namespace=%s version=%d error=%r: going by its snapshot",
                    self.namespace, target, str(e),
                )  # fmt: skip
        if snapshot is None:
            raise ReplicationError(
                f"{self.namespace}: the store pins version {target}, which this host no longer has; the store has no "
                "snapshot of it and no reverse deltas from this host's latest down to it. Pin a version this host "
                "has (hollow pin), or have the producer pin one with a snapshot"
            )
        self._execute(snapshot, pinned=True)

    def _apply_reverse(self, steps: list[Step], target: Header) -> None:
        """Apply reverse deltas *steps* (from this host's latest down) at once: per ordinal, the record the
        one nearest *target* restores (or its removal), written as version *target* on the latest's file
        with every record at *target*'s ordinal, pinned; verified by the content hash from the latest's,
        over those ordinals. O(the changes in *steps*)."""
        producer = self.producer
        if producer is None:
            raise ReplicationError(f"{self.namespace}: going back needs a version to start from; none is here")
        here = self._latest_local()
        here_header = self._header(here)
        if here_header is None:
            raise ReplicationError(f"{self.store.url}: version {here} (this host's latest) has no header")
        deltas, at = self._compose_reverse(steps, here)
        state = StateFile(self.dir / layout.state_name(here), namespace=self.namespace)
        changes: dict[str, overlay.Changes] = {}
        touched: dict[str, Any] = {}
        for name, rtype in producer.schema.types.items():
            m = at.get(name)
            if m:
                touched[name] = np.array(sorted(m), dtype=np.uint64)
                changes[name] = _back_changes(state, rtype, deltas, m, touched[name])
            else:
                changes[name] = overlay.Changes()

        def check(path: Path) -> None:
            now = StateFile(path, namespace=self.namespace)
            got = moved_content_hash(now, state, here_header.content_hash, touched)
            if got != target.content_hash:
                raise ReplicationError(
                    f"{self.namespace} version {target.version} (back from {here} by reverse deltas): content hash "
                    f"{got:016x} here, {target.content_hash:016x} at the producer; refused (nothing announced)"
                )

        try:
            written = producer.run_changes(changes, version=target.version, check=check, pinned=True)
        except ValidationError as e:
            raise ReplicationError(f"{self.namespace}: the reverse deltas to {target.version} do not apply: {e}") from e
        if written != target.version:
            raise ReplicationError(f"{self.namespace}: the reverse deltas to {target.version} change nothing here")
        self.blobs_applied += len(steps)
        log.info(
            "hollowd: event=follow namespace=%s version=%d by=reverse from=%d steps=%d",
            self.namespace, target.version, here, len(steps),
        )  # fmt: skip

    def _compose_reverse(self, steps: list[Step], here: int) -> tuple[list[Delta], dict[str, dict[int, Any]]]:
        """The reverse deltas of *steps*, fetched and checked, and per type what each ordinal they touch
        holds at the end: (delta, element, change hash) of the record the last one restores, or None."""
        deltas: list[Delta] = []
        at: dict[str, dict[int, Any]] = {}
        expect = here
        for step in steps:
            key = step.header.blobs["reverse"]["key"]
            d = decode_delta(self._fetch(step.header, "reverse"), what=f"{self.store.url}/{key}")
            if not d.reverse or d.parent != expect or d.version != step.header.parent:
                raise ReplicationError(f"{self.store.url}/{key}: not the reverse delta of {expect} to its parent")
            expect = d.version
            deltas.append(d)
            for name, td in d.types.items():
                m = at.setdefault(name, {})
                for o in td.removed.tolist():
                    m[o] = None
                for i, (o, h) in enumerate(zip(td.ordinals.tolist(), td.hashes.tolist(), strict=True)):
                    m[o] = (len(deltas) - 1, int(td.refs[i]), h)
        return deltas, at

    def _execute(self, plan: list[Step], *, pinned: bool) -> None:
        for i, step in enumerate(plan):
            last = i == len(plan) - 1
            if step.kind == "snapshot":
                self._apply_snapshot(step.header, pinned=pinned and last)
            else:
                self._apply_delta(step.header)
                if pinned and last:
                    assert self.producer is not None
                    self.producer.pin(step.header.version)
            log.info(
                "hollowd: event=follow namespace=%s version=%d by=%s", self.namespace, step.header.version, step.kind
            )

    def _fetch(self, header: Header, kind: str) -> bytes:
        entry = header.blobs.get(kind)
        if entry is None:
            raise ReplicationError(f"{self.store.url}: version {header.version} has no {kind} blob")
        key = entry["key"]
        with self._timed("fetch"):
            got = self.store.get(key)
        if got is None:
            raise ReplicationError(f"{self.store.url}/{key}: missing (the header names it)")
        self.bytes_fetched += len(got.data)
        with self._timed("unpack"):
            return blobs.unpack(got.data, kind=kind, what=f"{self.store.url}/{key}")

    def _verify(
        self, path: Path, header: Header, *, parent: StateFile | None = None, parent_hash: int | None = None
    ) -> None:
        """Refuse *path* unless its content hash is the producer's: over every record (a snapshot, or no
        parent header to start from), or from the parent's, over the ordinals the version changed."""
        with self._timed("verify"):
            state = StateFile(path, namespace=self.namespace)
            if parent is not None and parent_hash is not None and state.base is not None:
                got = delta_content_hash(state, parent, parent_hash)
            else:
                got = content_hash(state)
        if got != header.content_hash:
            raise ReplicationError(
                f"{self.namespace} version {header.version}: content hash {got:016x} here, {header.content_hash:016x} "
                "at the producer; refused (nothing announced)"
            )

    def _apply_delta(self, header: Header) -> None:
        producer = self.producer
        if producer is None:
            raise ReplicationError(f"{self.namespace}: a delta needs a version to apply to; none is here")
        raw = self._fetch(header, "delta")
        delta = decode_delta(raw, what=f"{self.store.url}/{header.blobs['delta']['key']}")
        parent = self._latest_local()
        if delta.parent != parent:
            raise ReplicationError(f"{self.namespace}: delta {delta.version} applies to {delta.parent}, not {parent}")
        decoding = time.monotonic()
        state = StateFile(self.dir / layout.state_name(parent), namespace=self.namespace)
        changes: dict[str, overlay.Changes] = {}
        for name, rtype in producer.schema.types.items():
            td = delta.types.get(name)
            if td is None:
                changes[name] = overlay.Changes()
                continue
            upserts: dict[Any, dict[str, Any]] = {}
            if td.chunk is not None:
                records = state.decode_records(name, td.chunk)
                for ref in td.refs.tolist():
                    rec = records[ref].to_dict()
                    upserts[rtype.key_of(rec)] = rec
            view = state.type(name)
            removals = [overlay.fields_of(view.record_at(o), rtype.primary.fields) for o in td.removed.tolist()]
            changes[name] = overlay.Changes(upserts, removals, hashes=td.hashes.copy() if upserts else None)
        self.last_timings["decode"] = self.last_timings.get("decode", 0.0) + time.monotonic() - decoding
        parent_header = self._header(parent)
        check = functools.partial(self._verify, header=header)
        if "snapshot" not in header.blobs and parent_header is not None:
            check = functools.partial(check, parent=state, parent_hash=parent_header.content_hash)
        producer.run_changes(changes, version=header.version, check=check)
        for stage, seconds in producer.last_timings.items():
            self.last_timings[stage] = self.last_timings.get(stage, 0.0) + seconds
        self.blobs_applied += 1

    def _apply_snapshot(self, header: Header, *, pinned: bool) -> None:
        data = self._fetch(header, "snapshot")
        base = self._fetch(header, "base") if "base" in header.blobs else None
        mid = self._fetch(header, "mid") if "mid" in header.blobs else None
        pid = os.getpid()
        saved = self.dir / f".{header.version}.incoming.{pid}.tmp"
        base_path, mid_path = layout.base_of(saved), layout.mid_of(saved)
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            saved.write_bytes(data)
            if base is not None:
                base_path.write_bytes(base)
            if mid is not None:
                mid_path.write_bytes(mid)
            state = StateFile(saved, namespace=self.namespace)
            self._verify(saved, header)
            if self.producer is None:
                self.producer = self._producer_for(state)
            del state
            self.producer.materialize(saved, pinned=pinned)
        finally:
            for p in (saved, base_path, mid_path):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        self.blobs_applied += 1 + (base is not None)
        self.producer.reclaim()

    def close(self) -> None:
        """Release the local producer (if this follower made it). The store is the caller's to close."""
        if self.producer is not None and self._owns_producer:
            self.producer.close()
        self.producer = None


def _back_changes(state: StateFile, rtype: Any, deltas: list[Delta], at: dict[int, Any], ords: Any) -> overlay.Changes:
    """One type's changes from *state* (this host's latest) back to what *at* says each ordinal held:
    upserts at their ordinals (a key living elsewhere moves there), removals of the keys that go."""
    records: dict[int, Any] = {}
    upserts: dict[Any, dict[str, Any]] = {}
    up_ords, up_hashes = [], []
    for o in ords.tolist():
        got = at[o]
        if got is None:
            continue
        di, ref, h = got
        if di not in records:
            records[di] = state.decode_records(rtype.name, deltas[di].types[rtype.name].chunk or b"")
        rec = records[di][ref].to_dict()
        upserts[rtype.key_of(rec)] = rec
        up_ords.append(o)
        up_hashes.append(h)
    view = state.type(rtype.name)
    live_here, _ = hashes_at(state, rtype.name, ords)
    removals = []
    for o in ords[live_here].tolist():
        k = overlay.fields_of(view.record_at(o), rtype.primary.fields)
        if k not in upserts:  # a key that stays moves (Changes.ordinals); one that goes, goes
            removals.append(k)
    return overlay.Changes(
        upserts, removals, hashes=np.array(up_hashes, dtype=np.uint64), ordinals=np.array(up_ords, dtype=np.int64)
    )


class FollowerThread:
    """A :class:`Follower` polling in a thread of its own (the daemon's follower namespaces)."""

    def __init__(self, follower: Follower) -> None:
        self.follower = follower
        self.name = follower.namespace
        self._stop = threading.Event()
        self._thread = threading.Thread(target=follower.run, args=(self._stop,), name=f"follow-{self.name}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.follower.close()
        self.follower.store.close()


def restore(producer: Producer, store: blobs.BlobStore, work_dir: str | os.PathLike[str]) -> int:
    """Put the store's announced version (or pin) in a producer's empty root, so that its first cycle is a
    delta on it and the chain goes on; returns that version (0 when the store has none)."""
    if layout.list_versions(producer.dir):
        return 0
    follower = Follower(store, producer.namespace, root=producer.dir.parent, work_dir=work_dir, producer=producer)
    try:
        follower.poll()
        if follower.last_error is not None:
            raise ReplicationError(f"{producer.namespace}: cannot restore from {store.url}: {follower.last_error}")
        return follower.here
    finally:
        follower.close()

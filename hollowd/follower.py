"""A follower: a namespace whose versions come from another host's producer, through a blob store.

It watches the store's announcement (a conditional GET with the last entity tag,
every *interval* seconds), plans the path from the version it has to the one
announced by headers alone (deltas forward; the nearest snapshot when there is no
chain or it moves fewer bytes; never a LIST in the normal path), downloads and
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

from hollow import layout
from hollow.errors import Error as ReaderError
from hollow.state import StateFile
from hollowd import blobs, overlay
from hollowd.errors import Error
from hollowd.producer import Producer
from hollowd.replication import (
    Header,
    ReplicationError,
    StoreAnnouncement,
    content_hash,
    decode_delta,
    delta_content_hash,
    header_key,
)

log = logging.getLogger("hollowd")
DEFAULT_INTERVAL = 1.0


@dataclass
class Step:
    """One step of a plan: apply *header*'s delta, or put its snapshot in place."""

    kind: str  # "delta" or "snapshot"
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

    def _poll(self) -> bool:
        before = self.here
        try:
            got = self.store.get_if_changed("announced", self._etag)
            self.last_contact = time.time()
            if got is not None:
                self._announcement = StoreAnnouncement.loads(got.data, what=f"{self.store.url}/announced")
                self._etag = got.etag
            if self._announcement is not None and self.local_pin is None:
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
        """Pin this host to *version* whatever the store announces (None: follow the store again)."""
        with self._lock:
            if version is None:
                self.local_pin = None
                self._etag = None  # look at the store's announcement afresh
                if self._announcement is not None:
                    self._sync(self._announcement, force=True)
                return
            if self.producer is None or not (self.dir / layout.state_name(version)).exists():
                raise ReplicationError(
                    f"{self.namespace} version {version} is not on this host (have: {layout.list_versions(self.dir)})"
                )
            self.producer.pin(version)
            self.local_pin = version

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
            top = self._header(target)
            if top is None or "snapshot" not in top.blobs:
                raise ReplicationError(
                    f"{self.namespace}: the store pins version {target}, which this host no longer has and the store "
                    "has no snapshot of (going back needs one: not done); pin a version this host has with hollow pin"
                )
            self._execute([Step("snapshot", top)], pinned=ann.pinned)
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
        got = self.store.get(key)
        if got is None:
            raise ReplicationError(f"{self.store.url}/{key}: missing (the header names it)")
        self.bytes_fetched += len(got.data)
        return blobs.unpack(got.data, kind=kind, what=f"{self.store.url}/{key}")

    def _verify(
        self, path: Path, header: Header, *, parent: StateFile | None = None, parent_hash: int | None = None
    ) -> None:
        """Refuse *path* unless its content hash is the producer's: over every record (a snapshot, or no
        parent header to start from), or from the parent's, over the ordinals the version changed."""
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
        parent_header = self._header(parent)
        check = functools.partial(self._verify, header=header)
        if "snapshot" not in header.blobs and parent_header is not None:
            check = functools.partial(check, parent=state, parent_hash=parent_header.content_hash)
        producer.run_changes(changes, version=header.version, check=check)
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

"""A version as blobs: what a producer leaves in a store and a follower applies (docs/decisions.md §50).

- A **delta** of version v is what v changed, read from v's own file: per type the
  records it upserted (its overlay entries stamped v: the chunk of Cap'n Proto
  records the cycle wrote, as they are in the file, with their ordinals and change
  hashes) and the ordinals it removed (its tombstones stamped v). Not a second
  encoding of the data.
- A **reverse delta** of v turns v back into its parent: the parent's records at the
  ordinals v changed (where the parent had one) and the ordinals v filled where the
  parent had none. A follower goes back with them (a pin to an older version).
- A **snapshot** of v is v's file; when v is an overlay, its base's file is a blob of
  its own (``bases/<v>-<hash>``), uploaded once and shared by every snapshot on it.
- The **content hash** of a version depends only on its records and their ordinals:
  the sum (mod 2^64) over every live record of a mix of its type, ordinal and change
  hash. Producer and follower compact at different moments, so their files differ;
  this hash does not. A follower refuses a version whose hash is not the producer's.

:class:`Publisher` is the producer's side: after a version is published (and
announced) locally, it uploads the blobs, then the header, and only then moves the
store's announcement, with a conditional write, so that nothing is announced whose
blobs are not all there and a second producer is refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import xxhash

from hollow import layout
from hollow.state import StateFile
from hollowd import blobs, overlay
from hollowd.errors import Error, ProducerLockedError
from hollowd.producer import Producer

log = logging.getLogger("hollowd")

ANNOUNCED = "announced"
LEASE = "lease"
#: Seconds a producer's lease in the store lasts without renewal (each publish renews it).
LEASE_SECONDS = 60.0
SNAPSHOT_EVERY = 16

_U64 = np.uint64
_M1, _M2, _GOLDEN = _U64(0xBF58476D1CE4E5B9), _U64(0x94D049BB133111EB), _U64(0x9E3779B97F4A7C15)


class ReplicationError(Error):
    """A version in the store cannot be applied: missing blobs, a content hash that differs, a broken chain."""


def header_key(version: int) -> str:
    return f"headers/{version}"


def delta_key(version: int, content: int) -> str:
    """Named by version and content hash too: a refused producer's blobs never replace the chain's."""
    return f"deltas/{version}-{content:016x}"


def reverse_key(version: int, content: int) -> str:
    """Version *version*'s reverse delta (back to its parent), named as its delta is."""
    return f"reverses/{version}-{content:016x}"


def snapshot_key(version: int, content: int) -> str:
    return f"snapshots/{version}-{content:016x}"


def base_key(version: int, content_hash: int) -> str:
    return f"bases/{version}-{content_hash:016x}"


def mid_key(version: int, content_hash: int) -> str:
    """A snapshot of a version over a mid needs the mid's file too (docs/decisions.md §18)."""
    return f"mids/{version}-{content_hash:016x}"


# --- the content hash -------------------------------------------------------------------


def _mix(x: Any) -> Any:
    """splitmix64's finalizer over a uint64 vector (wrapping arithmetic)."""
    z = x + _GOLDEN
    z = (z ^ (z >> _U64(30))) * _M1
    z = (z ^ (z >> _U64(27))) * _M2
    return z ^ (z >> _U64(31))


def _u64(state: StateFile, sec: Any, what: str) -> Any:
    return np.frombuffer(state.array(sec, "Q", what=what), dtype=_U64)


def live_hashes(state: StateFile, name: str) -> tuple[Any, Any]:
    """(ordinals, change hashes) of every live record of one type of *state*, as vectors."""
    if state.mid is not None:  # the mid's, less what this version's overlay masks, plus its entries
        ords, hashes = live_hashes(state.mid, name)
        ov = state.type_state(name).overlay
        masked = _u64(state, ov.masked, f"{name} masked")
        keep = ~np.isin(ords, masked) if len(masked) else slice(None)
        e_ord = _u64(state, ov.entryOrdinals, f"{name} entry ordinals")
        e_hash = _u64(state, ov.entryHashes, f"{name} entry hashes")
        return np.concatenate((ords[keep], e_ord)), np.concatenate((hashes[keep], e_hash))
    base = state.base or state
    view = base.type(name)
    hashes = _u64(base, base.type_state(name).hashes, f"{name} hashes")
    live = np.ones(view.size, dtype=bool)
    if len(view.holes):
        live[np.frombuffer(view.holes, dtype=np.uint32)] = False
    ords = np.arange(view.size, dtype=_U64)
    e_ord = e_hash = np.zeros(0, dtype=_U64)
    if state.base is not None:
        ov = state.type_state(name).overlay
        masked = _u64(state, ov.masked, f"{name} masked")
        if len(masked):
            live[masked.astype(np.int64)] = False
        e_ord = _u64(state, ov.entryOrdinals, f"{name} entry ordinals")
        e_hash = _u64(state, ov.entryHashes, f"{name} entry hashes")
    return np.concatenate((ords[live], e_ord)), np.concatenate((hashes[live], e_hash))


def content_hash(state: StateFile) -> int:
    """The version's content hash: records and ordinals only, not the files' layout (vector work)."""
    total = _U64(0)
    with np.errstate(over="ignore"):
        for name in sorted(state.type_names):
            ords, hashes = live_hashes(state, name)
            seed = _U64(xxhash.xxh3_64_intdigest(name.encode()))
            total += np.sum(_mix(hashes ^ _mix(ords ^ seed)), dtype=_U64)
    return int(total)


def _contribution(name: str, ords: Any, hashes: Any) -> Any:
    with np.errstate(over="ignore"):
        seed = _U64(xxhash.xxh3_64_intdigest(name.encode()))
        return np.sum(_mix(hashes ^ _mix(ords ^ seed)), dtype=_U64)


def hashes_at(state: StateFile, name: str, ords: Any) -> tuple[Any, Any]:
    """(live mask, change hashes) of one type of *state* at the ordinals *ords* (O(k log overlay))."""
    ords = np.asarray(ords, dtype=_U64)
    if state.mid is not None:  # the mid's, then this version's overlay over it
        live, out = hashes_at(state.mid, name, ords)
    else:
        base = state.base or state
        view = base.type(name)
        base_hashes = _u64(base, base.type_state(name).hashes, f"{name} hashes")
        inside = ords < _U64(view.size)
        live = inside.copy()
        out = np.zeros(len(ords), dtype=_U64)
        out[inside] = base_hashes[ords[inside].astype(np.int64)]
        if len(view.holes):
            live &= ~np.isin(ords, np.frombuffer(view.holes, dtype=np.uint32).astype(_U64))
    if state.base is not None:
        ov = state.type_state(name).overlay
        masked = _u64(state, ov.masked, f"{name} masked")
        if len(masked):
            live &= ~np.isin(ords, masked)
        e_ord = _u64(state, ov.entryOrdinals, f"{name} entry ordinals")
        j, hit = overlay.found_in(e_ord, ords)
        e_hash = _u64(state, ov.entryHashes, f"{name} entry hashes")
        out[hit] = e_hash[j[hit]]
        live |= hit
    return live, out


def changed_ordinals(state: StateFile) -> dict[str, Any]:
    """Per type, the ordinals version *state* changed (its entries and tombstones stamped with it)."""
    v = _U64(state.version)
    out = {}
    for name in state.type_names:
        ov = state.type_state(name).overlay
        e = _u64(state, ov.entryOrdinals, f"{name} entry ordinals")[_u64(state, ov.entryStamps, "stamps") == v]
        t = _u64(state, ov.tombOrdinals, f"{name} tomb ordinals")[_u64(state, ov.tombStamps, "stamps") == v]
        out[name] = np.union1d(e, t).astype(_U64)
    return out


def delta_content_hash(state: StateFile, parent: StateFile, parent_hash: int) -> int:
    """*state*'s content hash from its parent's, in O(changes): less what the changed ordinals held in
    *parent*, plus what they hold now (the same sum :func:`content_hash` makes over every record)."""
    return moved_content_hash(state, parent, parent_hash, changed_ordinals(state))


def moved_content_hash(state: StateFile, other: StateFile, other_hash: int, ordinals: dict[str, Any]) -> int:
    """*state*'s content hash from *other*'s (*other_hash*), when the two differ at most at *ordinals*
    (per type): less what those ordinals hold in *other*, plus what they hold in *state*. O(len(ordinals));
    a version before or after *state*, one delta or many away (a reverse delta goes back)."""
    total = _U64(other_hash)
    with np.errstate(over="ignore"):
        for name, given in ordinals.items():
            ords = np.asarray(given, dtype=_U64)
            was_live, was = hashes_at(other, name, ords)
            now_live, now = hashes_at(state, name, ords)
            total -= _contribution(name, ords[was_live], was[was_live])
            total += _contribution(name, ords[now_live], now[now_live])
    return int(total)


# --- deltas -----------------------------------------------------------------------------

_SECTION = struct.Struct("<Q")


class _Sections:
    """A delta's body as it is written: :meth:`add` appends a section and returns where it is
    (offset, length from the end of the document), :meth:`join` puts the document in front."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._at = 0

    def add(self, data: Any) -> list[int]:
        raw = bytes(memoryview(data).cast("B"))
        self._parts.append(raw)
        where = [self._at, len(raw)]
        self._at += len(raw)
        return where

    def join(self, doc: dict[str, Any]) -> bytes:
        head = orjson.dumps(doc)
        return _SECTION.pack(len(head)) + head + b"".join(self._parts)


def encode_delta(state: StateFile) -> bytes | None:
    """Version *state*'s delta: what it changed from its parent (None when it is a base: no delta).

    Layout: an 8-byte length, a JSON document, then the sections it names (offsets
    from the end of the document): per type the chunk's bytes and the uint64 arrays.
    """
    if state.base is None:
        return None
    v = _U64(state.version)
    out = _Sections()
    add = out.add
    types: dict[str, Any] = {}
    for name in state.type_names:
        ov = state.type_state(name).overlay
        stamps = _u64(state, ov.entryStamps, f"{name} entry stamps")
        mine = np.flatnonzero(stamps == v)
        refs = _u64(state, ov.entryRefs, f"{name} entry refs")[mine]
        chunk = None
        if len(mine):
            chunk_ids = np.unique(refs >> _U64(32))
            if len(chunk_ids) != 1:
                raise ReplicationError(f"{state.path}: {name}: version {state.version}'s records span several chunks")
            chunk = add(state.raw(ov.chunks[int(chunk_ids[0])], what=f"{name} chunk"))
        t_stamps = _u64(state, ov.tombStamps, f"{name} tomb stamps")
        gone = _u64(state, ov.tombOrdinals, f"{name} tomb ordinals")[t_stamps == v]
        types[name] = {
            "chunk": chunk,
            "refs": add((refs & _U64(0xFFFFFFFF)).astype(_U64)),
            "ordinals": add(_u64(state, ov.entryOrdinals, f"{name} entry ordinals")[mine]),
            "hashes": add(_u64(state, ov.entryHashes, f"{name} entry hashes")[mine]),
            "removed": add(np.sort(gone)),
        }
    return out.join({"version": state.version, "parent": state.header.parent_version, "types": types})


def encode_reverse(state: StateFile, parent: StateFile, encode: Any) -> bytes | None:
    """Version *state*'s reverse delta: what turns it back into *parent* (None when *state* is a base).

    The delta's layout (:func:`encode_delta`), read the other way: per type, *parent*'s records at
    the ordinals *state* changed where *parent* had one (a Records message made by *encode(name,
    records)*, with their ordinals and *parent*'s change hashes), and as removed the ordinals
    *state* filled where *parent* had none. ``version`` is the parent's, ``parent`` *state*'s: the
    version it makes and the one it applies to. O(changes): *parent*'s records are read at those
    ordinals only.
    """
    if state.base is None:
        return None
    out = _Sections()
    add = out.add
    types: dict[str, Any] = {}
    for name, ords in changed_ordinals(state).items():
        if name not in parent.type_names:
            return None
        live, hashes = hashes_at(parent, name, ords)
        back = ords[live]
        view = parent.type(name)
        records = [view.record_at(o).to_dict() for o in back.tolist()]
        types[name] = {
            "chunk": add(encode(name, records)) if records else None,
            "refs": add(np.arange(len(back), dtype=_U64)),
            "ordinals": add(back),
            "hashes": add(hashes[live]),
            "removed": add(ords[~live]),
        }
    return out.join({"version": parent.version, "parent": state.version, "reverse": True, "types": types})


@dataclass
class TypeDelta:
    chunk: bytes | None
    refs: Any
    ordinals: Any
    hashes: Any
    removed: Any


@dataclass
class Delta:
    version: int  # the version it makes
    parent: int  # the version it applies to (for a reverse delta, the newer one)
    types: dict[str, TypeDelta] = field(default_factory=dict)
    reverse: bool = False


def decode_delta(raw: bytes, *, what: str) -> Delta:
    try:
        (n,) = _SECTION.unpack_from(raw)
        doc = orjson.loads(raw[8 : 8 + n])
        body = memoryview(raw)[8 + n :]

        def sec(where: list[int]) -> memoryview:
            start, length = where
            if start < 0 or start + length > len(body):
                raise ValueError("a section runs past the end")
            return body[start : start + length]

        out = Delta(int(doc["version"]), int(doc["parent"]), reverse=bool(doc.get("reverse", False)))
        for name, t in doc["types"].items():
            out.types[name] = TypeDelta(
                chunk=None if t["chunk"] is None else bytes(sec(t["chunk"])),
                refs=np.frombuffer(sec(t["refs"]), dtype=_U64),
                ordinals=np.frombuffer(sec(t["ordinals"]), dtype=_U64),
                hashes=np.frombuffer(sec(t["hashes"]), dtype=_U64),
                removed=np.frombuffer(sec(t["removed"]), dtype=_U64),
            )
        return out
    except (struct.error, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ReplicationError(f"{what}: not a delta hollowd can read ({e})") from None


# --- headers and announcements -----------------------------------------------------------


@dataclass
class Header:
    """What the store says of one version (``headers/<v>``)."""

    version: int
    parent: int
    namespace: str
    schema_fingerprint: int
    content_hash: int
    published_at_ns: int
    #: kind ("delta", "snapshot", "base") → {"key", "size" (stored), "raw" (uncompressed)}
    blobs: dict[str, dict[str, Any]]
    #: the nearest version at or below this one with a snapshot blob (a jump goes there)
    snapshot_at: int
    #: the version of the base file this version's file is on (its own version for a base)
    base: int

    def dumps(self) -> bytes:
        return orjson.dumps(self.__dict__)

    @classmethod
    def loads(cls, data: bytes, *, what: str) -> Header:
        try:
            doc = orjson.loads(data)
            header = cls(**{k: doc[k] for k in cls.__dataclass_fields__})
            ints = ("version", "parent", "schema_fingerprint", "content_hash", "published_at_ns", "snapshot_at", "base")
            for name in ints:
                value = getattr(header, name)
                if not isinstance(value, int) or not 0 <= value < 1 << 64:
                    raise TypeError(f"{name} is {value!r}, not a 64-bit unsigned integer")
            if not isinstance(header.blobs, dict):
                raise TypeError("blobs is not an object")
            return header
        except (orjson.JSONDecodeError, KeyError, TypeError) as e:
            raise ReplicationError(f"{what}: not a version header ({e})") from None

    def bytes_for(self, *kinds: str) -> int:
        return sum(self.blobs[k]["size"] for k in kinds if k in self.blobs)


@dataclass
class StoreAnnouncement:
    version: int
    pinned: bool
    latest: int
    announced_at_ns: int
    #: The announced version's header, as ``headers/<version>`` holds it (None from an older producer): a
    #: follower one version behind then needs one GET fewer, the delta's, after the announcement's.
    header: Header | None = None

    def dumps(self) -> bytes:
        doc = {k: v for k, v in self.__dict__.items() if k != "header"}
        if self.header is not None:
            doc["header"] = self.header.__dict__
        return orjson.dumps(doc)

    @classmethod
    def loads(cls, data: bytes, *, what: str) -> StoreAnnouncement:
        try:
            doc = orjson.loads(data)
            header = None
            if doc.get("header") is not None:
                header = Header.loads(orjson.dumps(doc["header"]), what=f"{what} (its header)")
                if header.version != int(doc["version"]):
                    raise ValueError(f"its header is version {header.version}'s")
            return cls(
                int(doc["version"]), bool(doc["pinned"]), int(doc["latest"]), int(doc["announced_at_ns"]), header
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise ReplicationError(f"{what}: not an announcement ({e})") from None


def read_header(store: blobs.BlobStore, version: int) -> Header | None:
    got = store.get(header_key(version))
    return None if got is None else Header.loads(got.data, what=f"{store.url}/{header_key(version)}")


def read_announcement(store: blobs.BlobStore) -> tuple[StoreAnnouncement | None, str | None]:
    got = store.get(ANNOUNCED)
    if got is None:
        return None, None
    return StoreAnnouncement.loads(got.data, what=f"{store.url}/{ANNOUNCED}"), got.etag


# --- retention ------------------------------------------------------------------------------

#: The kinds of keys that belong to one version (``<kind>/<version>`` or ``<kind>/<version>-<hash>``).
VERSION_KINDS = ("headers", "deltas", "reverses", "snapshots", "bases", "mids")
#: Versions whose blobs stay in the store by default (``store_retain``).
STORE_RETAIN = 100


def version_of_key(key: str) -> int | None:
    """The version a store key belongs to; None for the announcement, the lease and anything not ours."""
    kind, _, rest = key.partition("/")
    number = rest.split("-", 1)[0]
    return int(number) if kind in VERSION_KINDS and number.isdigit() else None


def retention(store: blobs.BlobStore, retain: int) -> tuple[list[tuple[int, int]], list[str]]:
    """What the store keeps under *retain* and what may go: (kept ranges of versions, keys to delete).

    Kept: the newest *retain* versions up to the announced ``latest``, and the announced (pinned)
    version, each with what a follower needs to reach it: from the newest snapshot at or before it
    (its header's ``snapshot_at``), every version after, and the base (and mid) blobs from that
    snapshot's base on. Versions below every kept range go, headers first, whatever they are (a chain, or the blobs
    of a producer killed before its header). One LIST and a header GET per range: the producer's
    housekeeping, never a follower's path. Nothing goes when a header it needs cannot be read.
    """
    current, _ = read_announcement(store)
    if current is None or retain <= 0:
        return [], []
    keys = store.list("")
    headers = sorted({v for k in keys if k.startswith("headers/") and (v := version_of_key(k)) is not None})
    window = [v for v in headers if current.latest - retain < v <= current.latest]
    targets = {current.version}
    if window:
        targets.add(window[0])
    ranges: list[tuple[int, int]] = []
    base_floors: list[tuple[int, int]] = []
    for v in sorted(targets):
        top = read_header(store, v)
        snap = read_header(store, top.snapshot_at) if top is not None else None
        if top is None or snap is None:
            return [], []  # a version to keep that cannot be reached now: delete nothing
        high = v if v < (window[0] if window else v) else 1 << 64
        ranges.append((top.snapshot_at, high))
        base_floors.append((snap.base, high))

    def kept(key: str) -> bool:
        v = version_of_key(key)
        if v is None:
            return True
        if key.startswith(("bases/", "mids/")):  # a snapshot's base and mid are older than it
            return any(low <= v <= high for low, high in base_floors)
        return any(low <= v <= high for low, high in ranges)

    gone = [k for k in keys if not kept(k)]
    return ranges, sorted(gone, key=lambda k: (not k.startswith("headers/"), k))  # headers first


def prune(store: blobs.BlobStore, retain: int) -> list[str]:
    """Delete what :func:`retention` says may go; returns the keys deleted."""
    _, gone = retention(store, retain)
    for key in gone:
        store.delete(key)
    return gone


# --- the producer's side -----------------------------------------------------------------


class Publisher:
    """Leaves each version a producer publishes in a store, then announces it there.

    One producer per namespace across hosts: :meth:`claim` takes the store's lease
    (a conditional write), and every announcement is a conditional write on the
    entity tag this publisher last saw, so a second producer is refused, not merged.
    """

    def __init__(
        self,
        store: blobs.BlobStore,
        producer: Producer,
        *,
        snapshot_every: int = SNAPSHOT_EVERY,
        lease_seconds: float = LEASE_SECONDS,
        owner: str | None = None,
        store_retain: int = 0,
    ) -> None:
        """*store_retain*: after each snapshot, delete the versions the store need not keep (:func:`retention`;
        0: keep every version)."""
        self.store = store
        self.producer = producer
        self.store_retain = store_retain
        self.snapshot_every = max(1, snapshot_every)
        self.lease_seconds = lease_seconds
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lease_etag: str | None = None
        self._announced_etag: str | None = None
        #: The lease was this producer's already (a restart on the same state directory after a crash):
        #: the store's versions are its own, even those it no longer has on this host.
        self._own_chain = False
        self._headers: dict[int, Header] = {}
        self._bases: dict[str, dict[str, Any]] = {}
        self.bytes_uploaded = 0
        self.last_announced_at = 0.0

    # -- the lease --------------------------------------------------------------------

    def claim(self) -> None:
        """Take the namespace's lease in the store, or raise :class:`ProducerLockedError` naming its holder."""
        doc = orjson.dumps({"owner": self.owner, "renewed_at": time.time()})
        try:
            self._lease_etag = self.store.put(LEASE, doc, if_none_match=True)
            return
        except blobs.PreconditionFailedError:
            pass
        got = self.store.get(LEASE)
        if got is None:
            self.claim()  # released meanwhile
            return
        try:
            held = orjson.loads(got.data)
            owner, renewed = str(held["owner"]), float(held["renewed_at"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            owner, renewed = "?", 0.0
        age = time.time() - renewed
        self._own_chain = owner == self.owner  # this producer's own, from before a crash: its chain too
        if owner != self.owner and age < self.lease_seconds:
            raise ProducerLockedError(
                f"{self.store.url}: another producer ({owner}) holds this namespace's lease, renewed {age:.0f} s ago; "
                f"stop it, or wait {self.lease_seconds:.0f} s after it stopped, or delete {self.store.url}/{LEASE} "
                "if you are sure it is gone"
            )
        try:  # expired: take it over, unless someone else does first
            self._lease_etag = self.store.put(LEASE, doc, if_match=got.etag)
        except blobs.PreconditionFailedError:
            raise ProducerLockedError(f"{self.store.url}: another producer took the lease first") from None
        log.warning("hollowd: event=lease-taken store=%s previous=%s age=%.0f", self.store.url, owner, age)

    def _renew(self) -> None:
        if self._lease_etag is None:
            self.claim()
            return
        doc = orjson.dumps({"owner": self.owner, "renewed_at": time.time()})
        try:
            self._lease_etag = self.store.put(LEASE, doc, if_match=self._lease_etag)
        except blobs.PreconditionFailedError:
            self._lease_etag = None
            raise ProducerLockedError(
                f"{self.store.url}: this producer's lease was taken over by another; it stops announcing"
            ) from None

    def release(self) -> None:
        """Give the lease back (a clean stop), so a successor need not wait for it to expire."""
        if self._lease_etag is not None:
            with contextlib.suppress(blobs.StoreError):
                self.store.delete(LEASE)
            self._lease_etag = None

    # -- publishing ---------------------------------------------------------------------

    def publish(self, version: int | None = None, *, pinned: bool = False) -> Header:
        """Upload *version*'s blobs (default: the announced one) and its header, then announce it in the store."""
        ns_dir = self.producer.dir
        local = layout.read_announcement(ns_dir)
        if version is None:
            if local is None:
                raise ReplicationError(f"{ns_dir}: nothing announced to publish")
            version, pinned = local.version, local.pinned
        self._renew()  # fenced first: a producer that lost the lease uploads nothing
        if self._announced_etag is None:
            self._check_chain(version)
        header = self._headers.get(version) or self._uploaded_before(version)
        if header is None:
            header = self._upload(version)
        self._headers[version] = header
        latest = max(version, local.latest if local else 0)
        self._announce(StoreAnnouncement(version, pinned, latest, time.time_ns(), header))
        if self.store_retain and "snapshot" in header.blobs:
            self._prune()
        return header

    def _prune(self) -> None:
        """Old versions out of the store (housekeeping after an announcement: a failure is logged, retried
        after the next snapshot, and fails nothing)."""
        try:
            gone = prune(self.store, self.store_retain)
        except (Error, blobs.StoreError) as e:
            log.warning("hollowd: event=store-prune-failed store=%s error=%r", self.store.url, str(e))
            return
        if gone:
            for v in {version_of_key(k) for k in gone}:
                self._headers.pop(v, None)  # type: ignore[arg-type]
            log.info("hollowd: event=store-pruned store=%s deleted=%d", self.store.url, len(gone))

    def _check_chain(self, version: int) -> None:
        """Before this publisher's first announcement: the store's latest version must be one this producer
        has, with the same content (its own earlier version, or the one it restored), so that the chain
        goes on and a producer that started afresh beside another is refused rather than merged."""
        current, _ = read_announcement(self.store)
        if current is None or (self._own_chain and current.latest <= version):
            return
        known = current.latest
        mine = self.producer.dir / layout.state_name(known)
        theirs = read_header(self.store, known)
        if (
            theirs is not None
            and known <= version
            and mine.exists()
            and content_hash(StateFile(mine, namespace=self.producer.namespace)) == theirs.content_hash
        ):
            return
        raise ProducerLockedError(
            f"{self.store.url}: the store is at version {known}, which this producer does not have; another "
            "producer wrote this namespace. Stop the other one; to continue its chain here, start this one with "
            "an empty /dev/shm root and state directory, so that it restores from the store"
        )

    def _uploaded_before(self, version: int) -> Header | None:
        """The store's header of *version* if it holds this producer's version already (a restart, a
        restore, a crash between upload and announcement): its blobs are not uploaded again."""
        there = read_header(self.store, version)
        if there is None:
            return None
        state = StateFile(self.producer.dir / layout.state_name(version), namespace=self.producer.namespace)
        if content_hash(state) != there.content_hash:
            if self._orphan(version):
                return None  # a dead producer's, never announced: this one's replaces it (_upload)
            raise ProducerLockedError(
                f"{self.store.url}: version {version} is in the store already with other content "
                "(another producer); refused"
            )
        return there

    def _orphan(self, version: int) -> bool:
        """Whether *version*'s header in the store is an orphan: above every version the store ever
        announced, so written by a producer killed before its announcement. This publisher holds the
        lease (renewed at the start of each publish), so that producer can no longer announce it."""
        current, _ = read_announcement(self.store)
        return self._lease_etag is not None and (current is None or current.latest < version)

    def _upload(self, version: int) -> Header:
        state = StateFile(self.producer.dir / layout.state_name(version), namespace=self.producer.namespace)
        parent = state.header.parent_version
        parent_header = self._headers.get(parent) or (read_header(self.store, parent) if parent else None)
        entries: dict[str, dict[str, Any]] = {}

        def put(kind: str, key: str, raw: Any) -> None:
            blob = blobs.pack(kind, raw)
            self.store.put(key, blob)
            self.bytes_uploaded += len(blob)
            entries[kind] = {"key": key, "size": len(blob), "raw": len(memoryview(raw).cast("B"))}

        delta = encode_delta(state) if parent_header is not None else None
        base_version = state.base.version if state.base is not None else version
        want_snapshot = (
            delta is None
            or parent_header is None
            or version - parent_header.snapshot_at >= self.snapshot_every
            or base_version != parent_header.base  # compacted: a new base, worth a snapshot
        )
        parent_file = self.producer.dir / layout.state_name(parent)
        if want_snapshot or parent_header is None or not parent_file.exists():
            ch = content_hash(state)  # O(n) vector work: what a follower checks a snapshot against
        else:  # O(changes), from the parent's: what a follower checks a delta against
            ch = delta_content_hash(
                state, StateFile(parent_file, namespace=self.producer.namespace), parent_header.content_hash
            )
        if delta is not None:
            put("delta", delta_key(version, ch), delta)
            if parent_file.exists():  # and the way back to the parent (a pin to an older version)
                reverse = encode_reverse(
                    state, StateFile(parent_file, namespace=self.producer.namespace), self.producer.encode_records
                )
                if reverse is not None:
                    put("reverse", reverse_key(version, ch), reverse)
        snapshot_at = version if want_snapshot or parent_header is None else parent_header.snapshot_at
        if want_snapshot:
            put("snapshot", snapshot_key(version, ch), state.file_bytes())
            if state.base is not None:
                bkey = base_key(state.base.version, state.base.header.content_hash)
                if bkey in self._bases:  # uploaded once per base by this publisher
                    entries["base"] = self._bases[bkey]
                else:
                    put("base", bkey, state.base.file_bytes())
                    self._bases[bkey] = entries["base"]
            if state.mid is not None:
                put("mid", mid_key(state.mid.version, state.mid.header.content_hash), state.mid.file_bytes())
        header = Header(
            version=version,
            parent=parent,
            namespace=self.producer.namespace,
            schema_fingerprint=state.header.schema_fingerprint,
            content_hash=ch,
            published_at_ns=state.published_at_ns,
            blobs=entries,
            snapshot_at=snapshot_at,
            base=base_version,
        )
        return self._write_header(header)

    def _write_header(self, header: Header) -> Header:
        """After its blobs: a header names only what is there; written once, never replaced (but an orphan's)."""
        version = header.version
        try:
            self.store.put(header_key(version), header.dumps(), if_none_match=True)
        except blobs.PreconditionFailedError:
            there = read_header(self.store, version)
            if there is not None and there.content_hash != header.content_hash and self._orphan(version):
                got = self.store.get(header_key(version))  # ...but an orphan's (a killed producer's)
                if got is not None:
                    self.store.put(header_key(version), header.dumps(), if_match=got.etag)
                    log.warning(
                        "hollowd: event=orphan-replaced store=%s version=%d (written by a producer killed before "
                        "announcing it)", self.store.url, version,
                    )  # fmt: skip
                    return header
            if there is None or there.content_hash != header.content_hash:
                raise ProducerLockedError(
                    f"{self.store.url}: version {version} is in the store already with other content "
                    "(another producer); refused"
                ) from None
            return there  # this producer's own, uploaded before a crash: its blobs are the same
        return header

    def _announce(self, announcement: StoreAnnouncement) -> None:
        data = announcement.dumps()
        self.last_announced_at = time.time()  # as the announcement's write starts (bench/hosts.py)
        if self._announced_etag is None:
            current, etag = read_announcement(self.store)
            if current is None:
                try:
                    self._announced_etag = self.store.put(ANNOUNCED, data, if_none_match=True)
                    return
                except blobs.PreconditionFailedError:
                    raise ProducerLockedError(f"{self.store.url}: another producer announced first") from None
            self._announced_etag = etag
        try:
            self._announced_etag = self.store.put(ANNOUNCED, data, if_match=self._announced_etag)
        except blobs.PreconditionFailedError:
            self._announced_etag = None
            raise ProducerLockedError(
                f"{self.store.url}: the announcement changed under this producer (a second producer?); "
                "it stops announcing: stop the other one, then restart this one"
            ) from None

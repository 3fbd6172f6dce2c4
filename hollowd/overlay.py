"""Versions in O(changes): what a version adds to its base (docs/decisions.md §18).

A version is a *base* (a state file holding every record: a first build or a
compaction) or a base plus an *overlay*. Per type, the overlay holds the records
upserted since the base (the latest value of each key, in chunks: one Records
message per cycle), tombstones for the base keys removed since, the base
ordinals whose record is no longer current (*masked*), and small indexes over
all of it. The base file is shared by hard link (``<v>.base``), so K versions
on one base cost one base plus K overlays in /dev/shm.

A cycle reads back what it needs from the latest version's files (nothing per
record is kept in the producer) and does O(k) Python work for k changed
records; the rest of the overlay (its arrays, earlier chunks) is copied as
whole buffers and its tables are rebuilt as numpy vectors.

Compaction (:func:`compact`) writes a new base holding the same records under
the same ordinals. It works on bytes: the base's records message is copied
whole, the overlay's records are placed over it and their pointers moved by a
vector of offsets, and the indexes are rebuilt from the ones already published;
no record is decoded. Types written by pycapnp's builders (unions, groups) are
decoded and encoded again instead.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import xxhash

from hollow import layout
from hollow.errors import CorruptStateError
from hollow.state import StateFile
from hollow.view import TOMB, TypeView
from hollowd import encoder, index
from hollowd.errors import DuplicateKeyError, ValidationError
from hollowd.schema import IndexSpec, RecordType

#: The overlay of a type is compacted into a new base once its entries and tombstones pass
#: :data:`COMPACT_MIN` and either this share of the base's records, or what the versions since the
#: base spent carrying them passes :data:`COMPACT_REWRITE` (below); or it has :data:`MAX_CHUNKS` chunks.
COMPACT_SHARE = 0.05
COMPACT_MIN = 1024
MAX_CHUNKS = 64
#: Every version rewrites its whole overlay, so an entry costs again in every version that carries
#: it (about 0.5 µs a version, measured at 1M records), while a compaction costs about 1.4 s
#: (a merge 0.8 s, and every fifth one a re-encoding of several seconds): about 3 carried entries a
#: base record. Compacting once the versions since the base have carried that many keeps the
#: total within twice the least (rent or buy), and keeps a stream of small changes small: at 1M
#: records and one change a version, the overlay stays under about 2,500 entries.
COMPACT_REWRITE = 3.0
#: Bloom bytes per overlay key: about 1/16 of base lookups then probe the overlay's table.
BLOOM_BYTES_PER_KEY = 16
#: The overlay's key table is filled to at most this: random keys cluster under linear probing,
#: and most probes (a cycle's new keys, a reader's bloom false positives) are misses.
OVERLAY_LOAD = 0.35
#: A version's overlay is written over a *mid* (an earlier version, itself an overlay over the base)
#: once that one's entries and tombstones reach :data:`TOP_FROM`, and stays over it while its own
#: stay under :func:`top_limit`: a version then writes what changed since the mid, not everything
#: since the base (each entry costs about 0.5 µs a version that carries it, at 1M records).
TOP_FROM = 4096
TOP_MIN = 4096
TOP_SHARE = 0.25


def top_limit(mid_pressure: int) -> int:
    """How many entries and tombstones a version over a mid of *mid_pressure* may hold: past that,
    the version is written over the base again (the next mid), at O(everything since the base)."""
    return max(TOP_MIN, int(TOP_SHARE * mid_pressure))


#: Renumber a type's ordinals (at a compaction) once holes exceed this share of its list.
MAX_HOLE_SHARE = 0.5

ABSENT, ENTRY, TOMBSTONE, BASE = 0, 1, 2, 3
#: The Overlay's UInt64 sections (hollow.capnp) and the names :class:`Latest` reads them under.
_ARRAYS = {
    "entryOrdinals": "e_ord", "entryRefs": "e_ref", "entryKeys": "e_key", "entryHashes": "e_hash",
    "entryStamps": "e_stamp", "tombKeys": "t_key", "tombOrdinals": "t_ord", "tombStamps": "t_stamp",
    "masked": "m_ord",
}  # fmt: skip
_PER_INDEX = {"entryValues": "e_vals", "maskedValues": "m_vals", "maskedPositions": "m_pos"}
OVERLAY_ARRAYS = tuple(_ARRAYS)
_U64 = np.uint64
_EMPTY_U64 = np.zeros(0, dtype=np.uint64)
_dumps = orjson.dumps
_xxh = xxhash.xxh3_64_intdigest


# --- change hashes ----------------------------------------------------------------


def record_hash(record: Any) -> int:
    """The 64-bit change hash of a record dict: equal records (same fields, same order) hash equal.

    orjson writes a canonical JSON form quickly; None, NaN and the infinities
    all come out as ``null`` there, so a record with a ``null`` in it, or with
    a value JSON has no form for (bytes), is hashed from its ``repr`` instead.
    """
    try:
        blob = _dumps(record)
    except TypeError:
        return _xxh(_exact(record))
    if b"null" in blob:
        return _xxh(_exact(record))
    return _xxh(blob)


def _deep(records: list[Any], start: int) -> ValidationError:
    """The error for a record nested too deeply to hash (orjson stops at 254 levels, repr at the
    interpreter's recursion limit): no schema nests that deep, so it is bad input, named by position."""
    for i, r in enumerate(records):
        try:
            record_hash(r)
        except RecursionError:
            return ValidationError(f"record at input position {start + i} is nested too deeply (over 254 levels)")
    return ValidationError(f"a record at input positions {start}-{start + len(records) - 1} is nested too deeply")


def fields_of(record: Any, fields: tuple[str, ...]) -> Any:
    """A record reader's value of *fields*: the value of one field, or a tuple of several (a key)."""
    return record._get(fields[0]) if len(fields) == 1 else tuple(record._get(f) for f in fields)


def _exact(record: Any) -> bytes:
    return b"\0" + repr(record).encode("utf-8", "surrogatepass")


_BATCH = 4096
#: Between records of a batch dumped in one call: a raw newline, which orjson never writes itself
#: (it escapes control characters in strings, and indents nothing), so ``,\n,`` cuts the batch exactly.
_CUT = orjson.Fragment(b"\n")


#: ``null`` as a little-endian 32-bit word.
_NULL_WORD = int.from_bytes(b"null", "little")


def _has_null(blob: bytes) -> bool:
    """Whether *blob* holds ``null``: the blob read as 32-bit words at each of four offsets, one numpy
    comparison each (37 ms a million Movie records, against 65 ms for four byte comparisons and their
    ands, and 91 ms for ``in``)."""
    n = len(blob)
    for shift in range(min(4, max(n - 3, 0))):
        words = np.frombuffer(blob, dtype="<u4", count=(n - shift) // 4, offset=shift)
        if (words == _NULL_WORD).any():
            return True
    return False


def record_hashes(records: list[Any]) -> Any:
    """:func:`record_hash` of each record, as a uint64 array.

    In batches, each dumped by one orjson call as ``[r0,\n,r1,\n,...]`` (the newlines
    are :data:`_CUT` fragments) and cut at ``,\n,``, so every piece is exactly the
    record's own JSON; the pieces are hashed by one C loop (``map``), the few records
    with a ``null`` found by one numpy scan of the batch's bytes (docs/decisions.md §70).
    """
    n = len(records)
    out = np.empty(n, dtype=_U64)
    frame = [_CUT] * (2 * min(n, _BATCH) - 1)
    for start in range(0, n, _BATCH):
        part = records[start : start + _BATCH]
        if len(part) * 2 - 1 != len(frame):
            frame = [_CUT] * (2 * len(part) - 1)
        frame[::2] = part
        try:
            blob = _dumps(frame)
            pieces = blob.split(b",\n,")
            pieces[0] = pieces[0][1:]  # the list's brackets (one piece may have both)
            pieces[-1] = pieces[-1][:-1]
        except TypeError:  # bytes, or an int past 64 bits: those records are hashed from their repr
            pieces = []
        if len(pieces) != len(part):  # or a record holds a fragment of its own: one by one
            try:
                out[start : start + len(part)] = np.fromiter(map(record_hash, part), dtype=_U64, count=len(part))
            except RecursionError:
                raise _deep(part, start) from None
            continue
        out[start : start + len(part)] = np.fromiter(map(_xxh, pieces), dtype=_U64, count=len(part))
        if _has_null(blob):
            for i, piece in enumerate(pieces):
                if b"null" in piece:
                    out[start + i] = _xxh(_exact(part[i]))
    return out


# --- reading back the latest version ------------------------------------------------


def found_in(sorted_values: Any, values: Any) -> tuple[Any, Any]:
    """Where each of *values* is in the ascending array *sorted_values*: (index, found), as vectors
    (an index is only meaningful where found)."""
    j = np.searchsorted(sorted_values, values)
    hit = j < len(sorted_values)
    hit[hit] = sorted_values[j[hit]] == values[hit]
    return j, hit


def _u64(state: StateFile, sec: Any, what: str) -> Any:
    return np.frombuffer(state.array(sec, "Q", what=what), dtype=_U64)


@dataclass
class Latest:
    """One type of the latest version, as the next cycle reads it back from the files."""

    rtype: RecordType
    state: StateFile
    view: TypeView  # the version's
    base: TypeView  # its base's (the same view when the version is a base)
    base_state: StateFile
    base_hashes: Any
    chunks: list[memoryview]
    e_ord: Any
    e_ref: Any
    e_key: Any
    e_hash: Any
    e_stamp: Any
    t_key: Any
    t_ord: Any
    t_stamp: Any
    m_ord: Any
    e_vals: list[Any]
    m_vals: list[Any]
    m_pos: list[Any]
    holes: Any
    size: int
    count: int
    content_hash: int

    base_arrays: BaseArrays = field(default=None, repr=False)  # type: ignore[assignment]
    #: The overlay's key table as uint64[capacity, 2] (None without an overlay), and the first of the
    #: version's chunks the entries' refs count from (a rebased view drops the chunks before it).
    key_slots: Any = None
    chunk_offset: int = 0
    #: The record lists the entries' refs point into, when not the version's own (a flattened view).
    chunk_lists: Any = None
    mid: Latest | None = None  # for a version over a mid (TopLatest): the mid's
    flattened: bool = False  # a version over a mid, seen as an overlay over the base (Latest.flat)

    @classmethod
    def read(
        cls, state: StateFile, rtype: RecordType, cache: dict[tuple[int, str], BaseArrays] | None = None
    ) -> Latest:
        """Raises :class:`CorruptStateError` when the file does not hold what a cycle needs.

        *cache* keeps what is derived from a base (immutable) between cycles, by base and type.
        """
        name = rtype.name
        view = state.type(name)
        ts = state.type_state(name)
        base_state = state.base or state
        base = base_state.type(name)
        bts = base_state.type_state(name)
        what = f"{name} hashes"
        base_hashes = _u64(base_state, bts.hashes, what)
        if len(base_hashes) != base.size:
            raise CorruptStateError(f"{base_state.path}: {name} has {len(base_hashes)} hashes for {base.size} records")
        holes = np.frombuffer(view.holes, dtype=np.uint32).astype(np.int64)
        n_ix = len(rtype.indexes)
        arrays: dict[str, Any] = dict.fromkeys(_ARRAYS.values(), _EMPTY_U64)
        per_index: dict[str, list[Any]] = {a: [_EMPTY_U64] * n_ix for a in _PER_INDEX.values()}
        chunks: list[memoryview] = []
        if state.base is not None:
            ov = ts.overlay
            arrays = {a: _u64(state, getattr(ov, f), f"{name} overlay {f}") for f, a in _ARRAYS.items()}
            per_index = {
                a: [_u64(state, s, f"{name} overlay {f}") for s in getattr(ov, f)] for f, a in _PER_INDEX.items()
            }
            if any(len(p) != n_ix for p in per_index.values()):
                raise CorruptStateError(f"{state.path}: {name} overlay indexes do not match the schema's")
            chunks = [state.raw(sec, what=f"{name} chunk") for sec in ov.chunks]
        arrays_of_base = BaseArrays.of(base_state, base, name, cache)
        ov_view = view.overlay
        if state.mid is not None:
            cls = TopLatest  # noqa: PLW0642 - the same fields, over a mid
            mid: Latest | None = Latest.read(state.mid, rtype, cache)
        else:
            mid = None
        return cls(
            mid=mid,
            key_slots=None if ov_view is None else np.frombuffer(ov_view.keys.slots, dtype=_U64).reshape(-1, 2),
            base_arrays=arrays_of_base,
            rtype=rtype,
            state=state,
            view=view,
            base=base,
            base_state=base_state,
            base_hashes=base_hashes,
            chunks=chunks,
            holes=holes,
            size=view.size,
            count=len(view),
            content_hash=view.content_hash,
            **arrays,
            e_vals=per_index["e_vals"],
            m_vals=per_index["m_vals"],
            m_pos=per_index["m_pos"],
        )

    @property
    def entries(self) -> int:
        return len(self.e_ord)

    @property
    def pressure(self) -> int:
        """Entries plus tombstones: what this version's own overlay makes readers carry."""
        return len(self.e_ord) + len(self.t_key)

    @property
    def total_pressure(self) -> int:
        """:attr:`pressure` with the mid's (for a version over a mid)."""
        return self.pressure

    @property
    def mid_version(self) -> int:
        """The version whose overlay this one's is over (0: over the base)."""
        return 0

    def flat(self) -> Latest:
        """This version as an overlay over its base alone (itself, unless it is over a mid)."""
        return self

    def over_mid(self) -> TopLatest:
        """This version (an overlay over its base) as the mid of the next: an empty overlay over it."""
        return TopLatest.empty_over(self)

    def masked_values(self, i: int, masks: list[int]) -> tuple[Any, Any]:
        """Value fingerprints of the records at *masks* (being masked now) for secondary index *i*,
        and what the skipped table holds for each: its position in that value's base postings."""
        return _masked_values(self, i, masks)

    def _own(self, fps: Any) -> tuple[Any, Any]:
        """(kind, index) of each fingerprint in this version's own overlay table: ENTRY, TOMBSTONE
        or ABSENT (index -1)."""
        kind = np.full(len(fps), ABSENT, dtype=np.int64)
        where = np.full(len(fps), -1, dtype=np.int64)
        if self.key_slots is not None and len(fps):
            values = index.lookup(self.key_slots, fps)
            tomb = (values & _U64(TOMB)) != 0
            entry = (values != 0) & ~tomb
            kind[entry], where[entry] = ENTRY, values[entry].astype(np.int64) - 1
            kind[tomb], where[tomb] = TOMBSTONE, (values[tomb] & ~_U64(TOMB)).astype(np.int64) - 1
        return kind, where

    def locate(self, fps: Any, keys: list[Any]) -> tuple[Any, Any, Any]:
        """Where each key is in this version, as vectors: (kind, index, base ordinal or -1).

        kind is ENTRY (index: the entry), TOMBSTONE (the tomb), BASE (the base ordinal) or ABSENT.
        """
        n = len(keys)
        fps = np.asarray(fps, dtype=_U64)
        kind, where = self._own(fps)
        base_values = index.lookup(self.base_arrays.key_slots, fps) if n else np.zeros(0, dtype=_U64)
        base_ord = base_values.astype(np.int64) - 1
        in_base = (kind == ABSENT) & (base_ord >= 0)
        kind[in_base], where[in_base] = BASE, base_ord[in_base]
        if self.rtype.primary.kind != layout.KIND_EXACT_INT:  # hashed keys: the record confirms
            for i in np.flatnonzero(kind == ENTRY).tolist():
                self._confirm(self.entry_record(int(where[i])), keys[i])
            for i in np.flatnonzero(base_ord >= 0).tolist():
                self._confirm(self.base.record_at(int(base_ord[i])), keys[i])
        return kind, where, base_ord

    def entry_record(self, entry: int) -> Any:
        """The record of one entry, read through the version's own view of its chunks."""
        lists = self.chunk_lists
        if lists is None:
            assert self.view.overlay is not None
            lists = self.view.overlay.chunks
        ref = int(self.e_ref[entry])
        return lists[(ref >> 32) + self.chunk_offset][ref & 0xFFFFFFFF]

    def _confirm(self, record: Any, key: Any) -> None:
        spec = self.rtype.primary
        if spec.kind == layout.KIND_EXACT_INT:
            return
        found = fields_of(record, spec.fields)
        if found != key:
            raise ValidationError(
                f"{self.rtype.name}: primary keys {found!r} and {key!r} share a 64-bit hash; please report this",
                type_name=self.rtype.name,
            )

    def live_keys(self) -> tuple[Any, Any]:
        """(fingerprints, ordinals) of every live record of the version, in no order (vector work)."""
        table = self.base_arrays.key_slots
        used = table[:, 1] != 0
        fps, ords = table[used, 0], table[used, 1].astype(np.int64) - 1
        if len(self.m_ord):
            keep = ~np.isin(ords, self.m_ord.astype(np.int64))
            fps, ords = fps[keep], ords[keep]
        return np.concatenate((fps, self.e_key)), np.concatenate((ords, self.e_ord.astype(np.int64)))

    def live_hashes(self) -> tuple[Any, Any]:
        """(change hashes, ordinals) of every live record of the version, ascending by hash.

        The base's part comes sorted from :class:`BaseArrays` (once per base); only the
        entries are sorted here, and the two runs merged (a stable sort of two sorted runs
        is a merge)."""
        b_hash, b_ord = self.base_arrays.hashes_by_value(self.base_hashes)
        if len(self.m_ord):
            masked = np.zeros(self.base.size, dtype=bool)
            masked[self.m_ord.astype(np.int64)] = True
            keep = ~masked[b_ord]
            b_hash, b_ord = b_hash[keep], b_ord[keep]
        if not len(self.e_hash):
            return b_hash, b_ord
        by = np.argsort(self.e_hash)
        hashes = np.concatenate((b_hash, self.e_hash[by]))
        ords = np.concatenate((b_ord, self.e_ord.astype(np.int64)[by]))
        merged = np.argsort(hashes, kind="stable")
        return hashes[merged], ords[merged]

    def current_hashes(self, kinds: Any, wheres: Any) -> Any:
        """The change hash each located key has now (0 where it is absent or removed)."""
        current = np.zeros(len(kinds), dtype=_U64)
        is_entry, is_base = kinds == ENTRY, kinds == BASE
        current[is_entry] = self.e_hash[wheres[is_entry]]
        current[is_base] = self.base_hashes[wheres[is_base]]
        return current

    def key_at(self, ordinal: int) -> Any:
        return fields_of(self.view.record_at(ordinal), self.rtype.primary.fields)


@dataclass
class TopLatest(Latest):
    """One type of a version whose overlay is over a *mid* (an earlier version on the same base,
    itself an overlay over the base; docs/decisions.md §18).

    The arrays are this version's own overlay: entries and tombstones since the mid, masked
    *mid* ordinals, and per secondary index the masked records' value fingerprints with their
    ordinals (what its skipped tables hold). A cycle on it writes another such overlay, O(what
    changed since the mid); :meth:`flat` gives the same version as one overlay over the base,
    for a cycle that writes one (the top has grown) and for compaction and rebasing.
    """

    @classmethod
    def empty_over(cls, mid: Latest) -> TopLatest:
        """*mid* as the next version sees it: the same records, nothing changed since."""
        n_ix = len(mid.rtype.indexes)
        return cls(
            rtype=mid.rtype, state=mid.state, view=mid.view, base=mid.base, base_state=mid.base_state,
            base_hashes=mid.base_hashes, chunks=[], holes=mid.holes, size=mid.size, count=mid.count,
            content_hash=mid.content_hash, base_arrays=mid.base_arrays, key_slots=None, chunk_lists=[],
            mid=mid, **dict.fromkeys(_ARRAYS.values(), _EMPTY_U64),  # type: ignore[arg-type]
            e_vals=[_EMPTY_U64] * n_ix, m_vals=[_EMPTY_U64] * n_ix, m_pos=[_EMPTY_U64] * n_ix,
        )  # fmt: skip

    @property
    def total_pressure(self) -> int:
        assert self.mid is not None
        return self.pressure + self.mid.pressure

    @property
    def mid_version(self) -> int:
        assert self.mid is not None
        return self.mid.state.version

    def over_mid(self) -> TopLatest:
        return self

    def locate(self, fps: Any, keys: list[Any]) -> tuple[Any, Any, Any]:
        """As :meth:`Latest.locate`, with BASE meaning a record of the mid version (the index is its
        ordinal, whether the mid's overlay or the base holds it); the third vector is still the
        key's ordinal in the base, or -1."""
        mid = self.mid
        assert mid is not None
        n = len(keys)
        fps = np.asarray(fps, dtype=_U64)
        kind, where = self._own(fps)
        m_kind, m_where, base_ord = mid.locate(fps, keys)
        parent = np.full(n, -1, dtype=np.int64)
        in_mid = m_kind == ENTRY
        parent[in_mid] = mid.e_ord[m_where[in_mid]].astype(np.int64)
        in_base = m_kind == BASE
        parent[in_base] = m_where[in_base]
        below = (kind == ABSENT) & (parent >= 0)
        kind[below], where[below] = BASE, parent[below]
        if self.rtype.primary.kind != layout.KIND_EXACT_INT:  # hashed keys: the record confirms
            for i in np.flatnonzero(kind == ENTRY).tolist():
                self._confirm(self.entry_record(int(where[i])), keys[i])
        return kind, where, base_ord

    def _mid_hashes(self, ordinals: Any) -> Any:
        """The change hash of the mid version's record at each of *ordinals* (all live there)."""
        mid = self.mid
        assert mid is not None
        ords = np.asarray(ordinals, dtype=_U64)
        j, hit = found_in(mid.e_ord, ords)
        out = np.zeros(len(ords), dtype=_U64)
        out[hit] = mid.e_hash[j[hit]]
        out[~hit] = mid.base_hashes[ords[~hit].astype(np.int64)]
        return out

    def current_hashes(self, kinds: Any, wheres: Any) -> Any:
        current = np.zeros(len(kinds), dtype=_U64)
        is_entry, is_base = kinds == ENTRY, kinds == BASE
        current[is_entry] = self.e_hash[wheres[is_entry]]
        current[is_base] = self._mid_hashes(wheres[is_base])
        return current

    def live_keys(self) -> tuple[Any, Any]:
        assert self.mid is not None
        fps, ords = self.mid.live_keys()
        if len(self.m_ord):
            keep = ~np.isin(ords, self.m_ord.astype(np.int64))
            fps, ords = fps[keep], ords[keep]
        return np.concatenate((fps, self.e_key)), np.concatenate((ords, self.e_ord.astype(np.int64)))

    def live_hashes(self) -> tuple[Any, Any]:
        assert self.mid is not None
        hashes, ords = self.mid.live_hashes()
        if len(self.m_ord):
            keep = ~np.isin(ords, self.m_ord.astype(np.int64))
            hashes, ords = hashes[keep], ords[keep]
        if not len(self.e_hash):
            return hashes, ords
        by = np.argsort(self.e_hash)
        hashes = np.concatenate((hashes, self.e_hash[by]))
        ords = np.concatenate((ords, self.e_ord.astype(np.int64)[by]))
        merged = np.argsort(hashes, kind="stable")
        return hashes[merged], ords[merged]

    def masked_values(self, i: int, masks: list[int]) -> tuple[Any, Any]:
        """Value fingerprints of the mid's records at *masks*, and the ordinals themselves (a skipped
        table over a mid holds the mid's ordinals to leave out, not positions)."""
        mid = self.mid
        assert mid is not None
        if not masks:
            return _EMPTY_U64, _EMPTY_U64
        ords = np.array(masks, dtype=_U64)
        j, hit = found_in(mid.e_ord, ords)
        fps = np.zeros(len(ords), dtype=_U64)
        fps[hit] = mid.e_vals[i][j[hit]]
        if (~hit).any():
            fps[~hit] = mid.base_arrays.values_at(i, ords[~hit].astype(np.int64))[0]
        return fps, ords

    def flat(self) -> Latest:
        """The same version as one overlay over the base: the mid's entries this overlay did not
        mask with its own, the base ordinals either masks, the tombstones of both (one a key).
        O(the mid's overlay) vector work; no record is read."""
        mid = self.mid
        assert mid is not None
        assert mid.mid is None
        masked = self.m_ord.astype(np.int64)
        mid_ords = mid.e_ord.astype(np.int64)
        keep = ~np.isin(mid_ords, masked)
        newly = masked[~np.isin(masked, mid_ords)]  # base records the top masks (the mid left them)
        n_mid = len(mid.chunks)
        e_ord = np.concatenate((mid.e_ord[keep], self.e_ord))
        by = np.argsort(e_ord, kind="stable")
        m_all = np.concatenate((mid.m_ord, newly.astype(_U64)))
        m_by = np.argsort(m_all, kind="stable")
        e_vals, m_vals, m_pos = [], [], []
        for i in range(len(self.rtype.indexes)):
            fps, positions = mid.base_arrays.values_at(i, newly) if len(newly) else (_EMPTY_U64, _EMPTY_U64)
            e_vals.append(np.concatenate((mid.e_vals[i][keep], self.e_vals[i]))[by])
            m_vals.append(np.concatenate((mid.m_vals[i], fps))[m_by])
            m_pos.append(np.concatenate((mid.m_pos[i], np.asarray(positions).astype(_U64)))[m_by])
        e_key = np.concatenate((mid.e_key[keep], self.e_key))[by]
        stale = np.isin(mid.t_key, np.concatenate((self.e_key, self.t_key)))  # back, or removed again
        t_key = np.concatenate((mid.t_key[~stale], self.t_key))
        table, _ = _key_table(self.rtype.primary, e_key, t_key)
        mid_lists = mid.chunk_lists if mid.chunk_lists is not None else mid.view.overlay.chunks  # type: ignore[union-attr]
        own_lists = self.chunk_lists if self.chunk_lists is not None else self.view.overlay.chunks  # type: ignore[union-attr]
        return dataclasses.replace(
            mid,
            state=self.state, view=self.view, holes=self.holes, size=self.size, count=self.count,
            content_hash=self.content_hash, key_slots=table.slots, chunk_offset=0,
            chunks=[*mid.chunks, *self.chunks],
            chunk_lists=[*mid_lists[mid.chunk_offset :], *own_lists[self.chunk_offset :]],
            e_ord=e_ord[by],
            e_ref=np.concatenate((mid.e_ref[keep], self.e_ref + (_U64(n_mid) << _U64(32))))[by],
            e_key=e_key,
            e_hash=np.concatenate((mid.e_hash[keep], self.e_hash))[by],
            e_stamp=np.concatenate((mid.e_stamp[keep], self.e_stamp))[by],
            t_key=t_key,
            t_ord=np.concatenate((mid.t_ord[~stale], self.t_ord)),
            t_stamp=np.concatenate((mid.t_stamp[~stale], self.t_stamp)),
            m_ord=m_all[m_by], e_vals=e_vals, m_vals=m_vals, m_pos=m_pos, mid=None, flattened=True,
        )  # fmt: skip


class BaseArrays:
    """What cycles derive from a base, once per base (a base never changes): its key table as an
    array, and per secondary index each ordinal's value fingerprint and place in that value's postings."""

    def __init__(self, base: TypeView) -> None:
        self.key_slots = np.frombuffer(base.primary.slots, dtype=_U64).reshape(-1, 2)
        self._base = base
        self._values: dict[int, tuple[Any, Any]] = {}
        self._by_hash: tuple[Any, Any, Any, bool] | None = None
        #: Records :meth:`values_at` read one at a time on this base, per secondary index.
        self.records_read: dict[int, int] = {}

    @classmethod
    def of(
        cls, base_state: StateFile, base: TypeView, name: str, cache: dict[tuple[int, str], BaseArrays] | None
    ) -> BaseArrays:
        """The arrays of type *name* of a base, from *cache* (which keeps one base a type) or derived now."""
        key = (base_state.header.content_hash, name)
        found = None if cache is None else cache.get(key)
        if found is None:
            found = cls(base)
            if cache is not None:
                for stale in [k for k in cache if k[1] == name]:
                    del cache[stale]  # one base a type: the latest version's
                cache[key] = found
        return found

    def hashes_by_value(self, hashes: Any) -> tuple[Any, Any]:
        """(change hashes, ordinals) of the base's live records, ascending by hash (*hashes*: the
        base's, per ordinal)."""
        return self._sorted_hashes(hashes)[:2]

    def hash_ranks(self, hashes: Any) -> tuple[Any, Any, Any, bool]:
        """:meth:`hashes_by_value`, with each base ordinal's place in that order and whether the
        hashes are distinct (they are, but for a 64-bit collision)."""
        return self._sorted_hashes(hashes)

    def _sorted_hashes(self, hashes: Any) -> tuple[Any, Any, Any, bool]:
        if self._by_hash is None:
            live = np.ones(self._base.size, dtype=bool)
            if len(self._base.holes):
                live[np.frombuffer(self._base.holes, dtype=np.uint32)] = False
            ords = np.flatnonzero(live)
            by = np.argsort(hashes[ords])
            by_hash, by_ord = hashes[ords][by], ords[by]
            rank = np.zeros(self._base.size, dtype=np.int64)
            rank[by_ord] = np.arange(len(by_ord))
            self._by_hash = (by_hash, by_ord, rank, bool((by_hash[1:] != by_hash[:-1]).all()))
        return self._by_hash

    def values(self, i: int) -> tuple[Any, Any]:
        """(value fingerprint, position in its postings) of every base ordinal, for secondary index *i*."""
        if i not in self._values:
            ix = self._base.indexes[i]
            slots = np.frombuffer(ix.slots, dtype=_U64).reshape(-1, 2)
            self._values[i] = index.per_ordinal(slots, np.frombuffer(ix.postings, dtype=np.uint32), self._base.size)
        return self._values[i]

    def values_at(self, i: int, ordinals: Any) -> tuple[Any, Any]:
        """:meth:`values` of some ordinals only: read from their records while the records read so on
        this base stay few and the whole arrays (O(n) to derive, once per base) are not there yet, so
        that the cycles right after a new base do not pay for them; past :func:`_read_budget` (about
        what deriving them costs: rent or buy) they are derived, and every later cycle reads vectors."""
        ordinals = np.asarray(ordinals, dtype=np.int64)
        read = self.records_read.get(i, 0) + len(ordinals)
        if i in self._values or read > _read_budget(self._base.size):
            fps, positions = self.values(i)
            return fps[ordinals], positions[ordinals]
        self.records_read[i] = read
        table = self._base.indexes[i]
        fields = table.fields
        out_fps, out_pos = [], []
        for o in ordinals.tolist():
            fp = table.fingerprint(fields_of(self._base.record_at(o), fields))
            postings = table.postings_of(fp)
            at = -1 if postings is None else bisect.bisect_left(postings, o)
            if postings is None or at >= len(postings) or postings[at] != o:
                raise CorruptStateError(f"{self._base.what}: index on {', '.join(fields)} lacks ordinal {o}")
            out_fps.append(fp)
            out_pos.append(at)
        return np.array(out_fps, dtype=_U64), np.array(out_pos, dtype=np.int64)


#: At least this many records of a base (over all cycles on it) have their index values read from
#: the records before all of them are derived.
_FEW = 256


def _read_budget(size: int) -> int:
    """How many records of a base of *size* ordinals are read one at a time for an index's values before
    all of them are derived: about as long as deriving takes (a record read costs about 6.5 µs, deriving
    about 16 ns an ordinal, on this project's VM: 2,500 at 1M records), and at least :data:`_FEW`."""
    return max(_FEW, size // 400)


# --- applying changes ---------------------------------------------------------------


@dataclass
class Changes:
    """One type's changes in a cycle: upserts by key (in the order given) and removed keys."""

    upserts: dict[Any, dict[str, Any]] = field(default_factory=dict)
    removals: list[Any] = field(default_factory=list)
    hashes: Any = None  # change hash of each upsert, when the caller computed them already
    #: The ordinal of each upsert, when the caller must have it there (a follower going back to an older
    #: version by reverse deltas: hollowd.follower); a key living at another ordinal moves. None: the
    #: producer's rule (a key keeps its ordinal, a new one takes the lowest free).
    ordinals: Any = None


@dataclass
class BuiltOverlay:
    """One type of a version built on a base, ready to write (``Overlay`` in hollow.capnp)."""

    rtype: RecordType
    count: int
    size: int
    holes: Any  # uint32
    content_hash: int
    chunks: list[Any]  # buffers: Records messages (segment table + segment)
    arrays: dict[str, Any]  # the Overlay's UInt64 sections by field name
    per_index: dict[str, list[Any]]  # entryValues, maskedValues, maskedPositions
    bloom: Any  # uint8
    keys: index.BuiltIndex
    added: list[index.BuiltIndex]
    skipped: list[index.BuiltIndex]
    upserted: list[dict[str, Any]]
    removed: int
    renumber: bool  # holes passed MAX_HOLE_SHARE: the next compaction must renumber
    carried: int = 0  # versions that wrote each entry and tombstone, summed: what the overlay has cost
    below: int = 0  # the mid's entries and tombstones, for a version over a mid

    @property
    def pressure(self) -> int:
        """Entries plus tombstones (the mid's too): what the overlays make every reader carry."""
        return len(self.arrays["entryOrdinals"]) + len(self.arrays["tombKeys"]) + self.below


def fingerprints(rtype: RecordType, keys: list[Any], *, positions: bool | list[int] = False) -> Any:
    """The primary-key fingerprints of *keys*; a key of the wrong type is named (with its input
    position when *positions*: True when the keys are a full cycle's records in order, or the
    input position of each key)."""
    try:
        return index.fingerprints(rtype.primary, keys)
    except TypeError:
        pass
    for i, k in enumerate(keys):
        try:
            rtype.primary.fingerprint(k)
        except TypeError as e:
            at = positions[i] if isinstance(positions, list) else i
            where = f" record at input position {at}:" if positions is not False else ""
            raise ValidationError(
                f"{rtype.name}{where} primary key {k!r} ({', '.join(rtype.primary.fields)}): {e}",
                type_name=rtype.name,
                key=k,
                field=rtype.primary.fields[0],
            ) from None
    raise AssertionError("unreachable")  # pragma: no cover


def apply(
    latest: Latest,
    changes: Changes,
    version: int,
    enc: encoder.RecordEncoder | encoder.BuilderEncoder,
    *,
    secondary_fps: Any,
    record_error: Any,
) -> BuiltOverlay:
    """The overlay of *version*: *latest*'s with *changes* applied. O(k) Python work for k changes.

    Upserts equal to the current record (same change hash) and removals of absent
    keys change nothing; ``upserted``/``removed`` of the result say what did.
    """
    step = _Step(latest, version)
    step.resolve(changes)
    holes = step.assign_ordinals()
    records, ords, fps, hashes = step.ordered()
    chunks: list[Any] = list(latest.chunks)
    rtype = latest.rtype
    if records:
        try:
            table, segment = enc.encode(records)  # type: ignore[arg-type]
        except encoder.EncodeError as e:
            raise record_error(rtype, records[e.position], e.cause) from e.cause
        chunks.append(bytes(table) + bytes(segment))
        cols = encoder.ColumnCache(records)
        values = [secondary_fps(rtype, spec, records, cols) for spec in rtype.indexes]
    else:
        values = [_EMPTY_U64 for _ in rtype.indexes]
    arrays, by_ord = step.entries(len(latest.chunks), ords, fps, hashes)
    fresh = chunks[len(latest.chunks) :]
    many = len(chunks) > MAX_CHUNKS or (latest.flattened and len(chunks) > 1)
    if many and isinstance(enc, encoder.RecordEncoder):
        # A version written over the base from a top (flattened) becomes the next mid, read by every
        # version until the next: one chunk, so that attaching it is one message, not up to 64.
        j = 0 if latest.flattened else _merge_from([len(c) for c in chunks])
        refs = arrays["entryRefs"]
        moving = np.flatnonzero(refs >> _U64(32) >= _U64(j))
        merged = merge_chunks(chunks[j:], refs[moving] - (_U64(j) << _U64(32)), enc.top)
        if merged is not None:  # fewer chunks, of the live entries: no compaction of the base for it
            chunks, fresh = [*chunks[:j], merged], [merged]
            refs = refs.copy()
            refs[moving] = (_U64(j) << _U64(32)) | np.arange(len(moving), dtype=_U64)
            arrays["entryRefs"] = refs
    arrays.update(step.tombstones())
    masked, per_index = step.masked(values, by_ord)
    arrays["masked"] = masked
    keys, bloom = _key_table(rtype.primary, arrays["entryKeys"], arrays["tombKeys"])
    e_idx = np.arange(len(by_ord), dtype=np.int64)
    added = [index.build_multi(spec, per_index["entryValues"][i], e_idx) for i, spec in enumerate(rtype.indexes)]
    skipped = [
        index.build_multi(spec, per_index["maskedValues"][i], per_index["maskedPositions"][i].astype(np.int64))
        for i, spec in enumerate(rtype.indexes)
    ]
    holes32 = holes.astype(np.uint32)
    h = xxhash.xxh3_64()
    h.update(latest.content_hash.to_bytes(8, "little"))
    for part in (*fresh, *arrays.values(), holes32):
        h.update(part)
    return BuiltOverlay(
        rtype=rtype,
        count=step.size - len(holes),
        size=step.size,
        holes=holes32,
        content_hash=h.intdigest(),
        chunks=chunks,
        arrays=arrays,
        per_index=per_index,
        bloom=bloom,
        keys=keys,
        added=added,
        skipped=skipped,
        upserted=records,
        removed=len(step.freed),
        renumber=bool(len(holes)) and len(holes) > MAX_HOLE_SHARE * step.size,
        carried=_carried(version, arrays["entryStamps"], arrays["tombStamps"])
        + (0 if latest.mid is None else _carried(latest.mid_version, latest.mid.e_stamp, latest.mid.t_stamp)),
        below=0 if latest.mid is None else latest.mid.pressure,
    )


def _carried(version: int, *stamps: Any) -> int:
    """How many times the versions from each entry's (tombstone's) stamp to *version* wrote it."""
    return sum(len(s) * (version + 1) - int(s.sum(dtype=np.uint64)) for s in stamps)


class _Step:
    """One type's changes applied to its latest version, step by step (see :func:`apply`)."""

    def __init__(self, latest: Latest, version: int) -> None:
        self.latest = latest
        self.version = version
        self.size = latest.size
        self.e_dead: list[int] = []  # entries replaced or removed
        self.t_dead: list[int] = []  # tombstones of keys that are back
        self.freed: list[int] = []  # ordinals this cycle frees
        self.masks: list[int] = []  # base ordinals masked this cycle
        self.tombs: list[tuple[int, int]] = []  # (fingerprint, base ordinal)
        self.new_ord: list[int] = []  # per kept upsert: its ordinal, or -1 for a fresh one
        self.kept: list[tuple[dict[str, Any], int, int]] = []  # (record, fingerprint, change hash)
        self.forced = False  # the caller gave every upsert's ordinal (Changes.ordinals)

    def resolve(self, changes: Changes) -> None:
        """Find where each changed key is now (vector probes); drop the changes that change nothing."""
        latest, rtype = self.latest, self.latest.rtype
        keys = list(changes.removals)
        if keys:
            fps = fingerprints(rtype, keys)
            kinds, wheres, base_ords = latest.locate(fps, keys)
            for fp, kind, j, ob in zip(fps.tolist(), kinds.tolist(), wheres.tolist(), base_ords.tolist(), strict=True):
                if kind == ENTRY:
                    self.e_dead.append(j)
                    self.freed.append(int(latest.e_ord[j]))
                    # A tomb even when the base lacks the key: a rebase onto a newer base
                    # (rebase()) must see every removal since the old one.
                    self.tombs.append((fp, ob if ob >= 0 else int(latest.e_ord[j])))
                elif kind == BASE:  # a record of what the overlay is over (the base, or a mid)
                    self.freed.append(j)
                    self.masks.append(j)
                    self.tombs.append((fp, ob if ob >= 0 else j))
        keys, records = list(changes.upserts), list(changes.upserts.values())
        if not keys:
            return
        fps = fingerprints(rtype, keys)
        hashes = changes.hashes if changes.hashes is not None else record_hashes(records)
        kinds, wheres, _ = latest.locate(fps, keys)
        present = (kinds == ENTRY) | (kinds == BASE)
        changed = (latest.current_hashes(kinds, wheres) != hashes) | ~present
        if changes.ordinals is not None:
            self._move(np.asarray(changes.ordinals, dtype=np.int64), kinds, wheres, changed)
        idx = np.flatnonzero(changed)
        kind, j = kinds[idx], wheres[idx]
        is_entry, is_base = kind == ENTRY, kind == BASE
        new_ord = np.full(len(idx), -1, dtype=np.int64)
        new_ord[is_entry] = latest.e_ord[j[is_entry]].astype(np.int64)
        new_ord[is_base] = j[is_base]
        self.e_dead.extend(j[is_entry].tolist())
        self.masks.extend(j[is_base].tolist())
        self.t_dead.extend(j[kind == TOMBSTONE].tolist())
        self.new_ord.extend(new_ord.tolist())
        picked = [records[i] for i in idx.tolist()]
        self.kept.extend(zip(picked, fps[idx].tolist(), np.asarray(hashes)[idx].tolist(), strict=True))
        if changes.ordinals is not None:
            self.forced = True
            self.new_ord = [int(o) for o in np.asarray(changes.ordinals, dtype=np.int64)[changed]]

    def _move(self, want: Any, kinds: Any, wheres: Any, changed: Any) -> None:
        """Upserts that must land at *want*: a key living at another ordinal leaves it (freed, and its
        base record masked) and is written where it is wanted, as a fresh record would be (in place:
        *kinds* say TOMBSTONE-free ABSENT from here on, and the upsert counts as a change)."""
        latest = self.latest
        now = wheres.copy()  # a BASE key's ordinal; an ENTRY's is its entry's (e_ord may be empty)
        in_entry = kinds == ENTRY
        now[in_entry] = latest.e_ord[wheres[in_entry]].astype(np.int64)
        for i in np.flatnonzero(((kinds == ENTRY) | (kinds == BASE)) & (now != want)).tolist():
            j = int(wheres[i])
            if kinds[i] == ENTRY:
                self.e_dead.append(j)
                self.freed.append(int(latest.e_ord[j]))
            else:
                self.masks.append(j)
                self.freed.append(j)
            kinds[i], wheres[i], changed[i] = ABSENT, -1, True

    def assign_ordinals(self) -> Any:
        """New records fill the lowest free ordinals (holes, and those freed now), then grow the list;
        with the caller's ordinals (:attr:`Changes.ordinals`), each takes its own, which must be free.

        Returns the version's holes."""
        latest = self.latest
        free = np.union1d(latest.holes, np.array(self.freed, dtype=np.int64)) if self.freed else latest.holes
        if self.forced:
            return self._assign_given(free)
        fresh = [i for i, o in enumerate(self.new_ord) if o < 0]
        take = min(len(fresh), len(free))
        for n, i in enumerate(fresh):
            self.new_ord[i] = int(free[n]) if n < take else self.size + n - take
        self.size += len(fresh) - take
        holes, self.size = trim_holes(free[take:], self.size)
        return holes

    def _assign_given(self, free: Any) -> Any:
        """Every kept upsert at the ordinal the caller gave: a fresh one's must be free (a hole, freed
        now, or past the end: the list grows and the ordinals skipped are holes), not a record's that stays."""
        latest = self.latest
        given = np.array(sorted(self.new_ord), dtype=np.int64)
        if len(np.unique(given)) != len(given):
            raise ValidationError(
                f"{latest.rtype.name}: two upserts are given one ordinal", type_name=latest.rtype.name
            )
        size = max(self.size, int(given[-1]) + 1 if len(given) else 0)
        free = np.union1d(free, np.arange(self.size, size, dtype=np.int64))
        alive = np.ones(latest.entries, dtype=bool)
        alive[self.e_dead] = False
        staying = np.isin(given, latest.e_ord[alive].astype(np.int64))
        masked = np.union1d(latest.m_ord.astype(np.int64), np.array(self.masks, dtype=np.int64))
        staying |= (given < latest.base.size) & ~np.isin(given, masked) & ~np.isin(given, free)
        if staying.any():
            raise ValidationError(
                f"{latest.rtype.name}: ordinals {given[staying][:5].tolist()} are given to upserts but hold records "
                "that stay",
                type_name=latest.rtype.name,
            )
        holes, self.size = trim_holes(np.setdiff1d(free, given), size)
        return holes

    def ordered(self) -> tuple[list[dict[str, Any]], Any, Any, Any]:
        """This cycle's records in ordinal order, with their ordinals, key fingerprints and hashes."""
        order = sorted(range(len(self.kept)), key=self.new_ord.__getitem__)
        kept = [self.kept[i] for i in order]
        return (
            [r for r, _, _ in kept],
            np.array([self.new_ord[i] for i in order], dtype=_U64),
            np.array([fp for _, fp, _ in kept], dtype=_U64),
            np.array([h for _, _, h in kept], dtype=_U64),
        )

    def entries(self, chunk_id: int, ords: Any, fps: Any, hashes: Any) -> tuple[dict[str, Any], Any]:
        """The entries' arrays: the survivors and this cycle's records, by ordinal; and that order."""
        latest = self.latest
        self.alive = np.ones(latest.entries, dtype=bool)
        self.alive[self.e_dead] = False
        alive, n = self.alive, len(ords)
        refs = (_U64(chunk_id) << _U64(32)) | np.arange(n, dtype=_U64)
        e_ord = np.concatenate((latest.e_ord[alive], ords))
        by_ord = np.argsort(e_ord, kind="stable")
        arrays = {
            "entryOrdinals": e_ord[by_ord],
            "entryRefs": np.concatenate((latest.e_ref[alive], refs))[by_ord],
            "entryKeys": np.concatenate((latest.e_key[alive], fps))[by_ord],
            "entryHashes": np.concatenate((latest.e_hash[alive], hashes))[by_ord],
            "entryStamps": np.concatenate((latest.e_stamp[alive], np.full(n, self.version, dtype=_U64)))[by_ord],
        }
        if len(e_ord) > 1 and not (np.diff(arrays["entryOrdinals"].astype(np.int64)) > 0).all():
            raise AssertionError("two overlay records share an ordinal")  # pragma: no cover - an invariant
        return arrays, by_ord

    def tombstones(self) -> dict[str, Any]:
        latest, tombs = self.latest, self.tombs
        alive = np.ones(len(latest.t_key), dtype=bool)
        alive[self.t_dead] = False
        return {
            "tombKeys": np.concatenate((latest.t_key[alive], np.array([f for f, _ in tombs], dtype=_U64))),
            "tombOrdinals": np.concatenate((latest.t_ord[alive], np.array([o for _, o in tombs], dtype=_U64))),
            "tombStamps": np.concatenate((latest.t_stamp[alive], np.full(len(tombs), self.version, dtype=_U64))),
        }

    def masked(self, values: list[Any], by_ord: Any) -> tuple[Any, dict[str, list[Any]]]:
        """Masked base ordinals (ascending) and, per secondary index, the entries' values and the masked
        records' values and positions in their value's postings."""
        latest = self.latest
        m_all = np.concatenate((latest.m_ord, np.array(self.masks, dtype=_U64)))
        m_by = np.argsort(m_all, kind="stable")
        per_index: dict[str, list[Any]] = {"entryValues": [], "maskedValues": [], "maskedPositions": []}
        for i in range(len(latest.rtype.indexes)):
            mv, mp = latest.masked_values(i, self.masks)
            per_index["entryValues"].append(np.concatenate((latest.e_vals[i][self.alive], values[i]))[by_ord])
            per_index["maskedValues"].append(np.concatenate((latest.m_vals[i], mv))[m_by])
            per_index["maskedPositions"].append(np.concatenate((latest.m_pos[i], mp))[m_by])
        return m_all[m_by], per_index


def trim_holes(holes: Any, size: int) -> tuple[Any, int]:
    """Sorted *holes* and list *size* without the holes at the end: they are just a shorter list."""
    if not len(holes) or holes[-1] != size - 1:
        return holes, size
    run = holes[::-1] == np.arange(size - 1, size - 1 - len(holes), -1)
    trailing = len(holes) if run.all() else int(np.argmin(run))
    return holes[: len(holes) - trailing], size - trailing


def _masked_values(latest: Latest, i: int, masks: list[int]) -> tuple[Any, Any]:
    """Value fingerprints of base records being masked now, and their positions in that value's postings."""
    if not masks:
        return _EMPTY_U64, _EMPTY_U64
    fps, positions = latest.base_arrays.values_at(i, masks)
    return fps, positions.astype(_U64)


def _key_table(spec: IndexSpec, entry_keys: Any, tomb_keys: Any) -> tuple[index.BuiltIndex, Any]:
    """The overlay's key table (fingerprint → entry + 1, or TOMB | tomb + 1) and its bloom bytes."""
    fps = np.concatenate((entry_keys, tomb_keys))
    values = np.concatenate(
        (
            np.arange(1, len(entry_keys) + 1, dtype=_U64),
            np.arange(1, len(tomb_keys) + 1, dtype=_U64) | _U64(TOMB),
        )
    )
    cap = index.capacity_for(len(fps), OVERLAY_LOAD)
    slots = np.zeros((cap, 2), dtype=_U64)
    pos = index.place(index.home_slots(fps, cap), cap)
    slots[pos, 0] = fps
    slots[pos, 1] = values
    n = index.capacity_for(len(fps) * BLOOM_BYTES_PER_KEY, 1.0) if len(fps) else 1
    bloom = np.zeros(n, dtype=np.uint8)
    bloom[(fps % _U64(n)).astype(np.int64)] = 1
    return index.BuiltIndex(spec, cap, slots, np.zeros(0, dtype=np.uint32), len(fps)), bloom


def diff(latest: Latest, records: list[dict[str, Any]], parse_keys: Any) -> Changes:
    """The changes that turn *latest* into exactly *records* (all of a type's records).

    Vector work over every record (one change hash each, two sorts and sorted searches);
    Python work, keys included, only for the records that differ: a record whose hash the
    latest version holds is a record it holds, key and all. *parse_keys(records, positions)*
    gives the keys and fingerprints of the records at those input positions (checking them).
    """
    return _diff_hashed(
        latest, record_hashes(records), lambda at: [records[i] for i in at], parse_keys, "two records hold it"
    )


#: Change hashes of records given as JSON lines are hashes of the lines: another seed, another space.
LINE_SEED = 1


def line_hashes(batches: list[Any]) -> Any:
    """The change hash of each record given as a line of JSON (``hollowd.state.Lines`` batches): the
    line's own hash, ``xxh3_64(line, seed=LINE_SEED)``.

    The seed is passed by position, from ``itertools.repeat``: a ``functools.partial`` with
    ``seed=`` made a keyword dict a call, five times the hashing itself (372 against 68 ms of CPU
    for 1M lines of 124 bytes)."""
    lines = list(itertools.chain.from_iterable(b.lines for b in batches))
    return np.fromiter(map(_xxh, lines, itertools.repeat(LINE_SEED)), dtype=_U64, count=len(lines))


def diff_lines(latest: Latest, batches: list[Any], parse_keys: Any) -> Changes:
    """The changes that turn *latest* into exactly the records of *batches* (``hollowd.state.Lines``),
    parsing only the lines whose bytes are not those of a record the latest version holds.

    *parse_keys(records, positions)* as for :func:`diff`; positions count lines across batches.
    """
    return _diff_hashed(
        latest, line_hashes(batches), lambda at: _parse_lines(batches, at), parse_keys, "two lines hold it"
    )


def _diff_hashed(latest: Latest, hashes: Any, records_at: Any, parse_keys: Any, twice: str) -> Changes:
    """What :func:`diff` and :func:`diff_lines` share, from each input record's change hash.

    Duplicate keys are found without the unchanged records' keys: the same record twice is the
    same hash twice; a changed record with an unchanged one's key finds that key's current hash
    still among the new ones; two changed records with one key are compared directly.
    """
    rtype = latest.rtype
    changed, gone, new_sorted = _compare(latest, hashes)  # the same record twice: the same key twice
    positions = changed.tolist()
    records = records_at(positions)
    keys, fps = parse_keys(records, positions)
    check_unique(rtype, keys, fps, positions)
    kinds, wheres, _ = latest.locate(fps, keys)
    current = latest.current_hashes(kinds, wheres)
    present = (kinds == ENTRY) | (kinds == BASE)
    stays = present & _in_sorted(current, new_sorted) & (current != hashes[changed])
    for i in np.flatnonzero(stays).tolist():  # the key's current record is still there, beside this one
        first, then = sorted((int(np.flatnonzero(hashes == current[i])[0]), positions[i]))
        raise DuplicateKeyError(
            f"{rtype.name}: duplicate primary key {keys[i]!r} at input positions {first} and {then} ({twice})",
            type_name=rtype.name,
            key=keys[i],
            field=", ".join(rtype.primary.fields),
        )
    upserts = dict(zip(keys, records, strict=True))
    # A gone record whose key is upserted is replaced, not removed: its ordinal is where that key
    # was found, so only the records really removed are read for their keys.
    replaced = np.concatenate((wheres[kinds == BASE], latest.e_ord.astype(np.int64)[wheres[kinds == ENTRY]]))
    removed = gone[~np.isin(gone, replaced)]
    removals = list(map(latest.key_at, removed.tolist()))
    return Changes(upserts, removals, hashes[changed])


def _parse_lines(batches: list[Any], indexes: list[int]) -> list[dict[str, Any]]:
    """The records of the given line indexes (counted across batches), in order."""
    out: list[dict[str, Any]] = []
    start = 0
    at = 0
    for batch in batches:
        end = start + len(batch.lines)
        mine = []
        while at < len(indexes) and indexes[at] < end:
            mine.append(indexes[at] - start)
            at += 1
        if mine:
            out.extend(batch.parse(mine))
        start = end
    return out


def _compare(latest: Latest, new_hash: Any) -> tuple[Any, Any, Any]:
    """Input positions of the new hashes the latest version lacks, or that the input holds more than
    once (the same record twice); ordinals of the latest's records whose hash is gone; and the new
    hashes sorted.

    One sort of what the cycle is handed, and one sorted search of it into the base's hashes
    (sorted once per base: :meth:`BaseArrays.hash_ranks`) and one into the entries' (few), which
    walk both arrays in order and so stay in the cache. The base's masked records are dead where
    the search lands; the latest's records that stay are the ones it found (their hashes are
    distinct), so there is no search the other way and no merge of the base's and the entries'.
    A version over a mid is compared as one overlay over the base (:meth:`Latest.flat`, O(its
    overlays): a full cycle is O(n) anyway)."""
    if latest.mid is not None:
        latest = latest.flat()
    b_hash, b_ord, b_rank, distinct = latest.base_arrays.hash_ranks(latest.base_hashes)
    by = np.argsort(latest.e_hash)
    e_hash, e_ord = latest.e_hash[by], latest.e_ord.astype(np.int64)[by]
    if not distinct or not (e_hash[1:] != e_hash[:-1]).all():  # pragma: no cover - a 64-bit collision
        return _compare_merged(latest, new_hash)
    dead = np.zeros(len(b_hash), dtype=bool)
    dead[b_rank[latest.m_ord.astype(np.int64)]] = True
    new_sorted = np.sort(new_hash)
    seen = np.zeros(len(new_sorted), dtype=bool)
    stays = []
    for pool, masked in ((b_hash, dead), (e_hash, None)):
        found = np.zeros(len(pool), dtype=bool)
        if len(pool) * 16 < len(new_sorted):  # few entries: a filter, and a search of what it leaves
            hits = _positions_of(new_sorted, pool)
            at = np.searchsorted(pool, new_sorted[hits])
            if masked is not None:
                hits, at = hits[~masked[at]], at[~masked[at]]
            found[at] = True
            seen[hits] = True
        elif len(pool):
            at = np.searchsorted(pool, new_sorted)
            np.minimum(at, len(pool) - 1, out=at)
            hit = pool[at] == new_sorted
            if masked is not None:
                hit &= ~masked[at]
            found[at[hit]] = True
            seen |= hit
        stays.append(found)
    unseen = new_sorted[~seen]
    repeated = new_sorted[1:][new_sorted[1:] == new_sorted[:-1]]
    gone = np.concatenate(  # base records first, as the files list them
        (np.sort(b_ord[~(stays[0] | dead)]), np.sort(e_ord[~stays[1]]))
    )
    return _positions_of(new_hash, np.union1d(unseen, repeated)), gone, new_sorted


def _compare_merged(latest: Latest, new_hash: Any) -> tuple[Any, Any, Any]:  # pragma: no cover - collisions
    """:func:`_compare` when two live records share a change hash: searches both ways."""
    old_sorted, old_ord = latest.live_hashes()
    new_sorted = np.sort(new_hash)
    unseen = new_sorted[~_in_sorted(new_sorted, old_sorted)]
    repeated = new_sorted[1:][new_sorted[1:] == new_sorted[:-1]]
    gone = np.sort(old_ord[~_in_sorted(old_sorted, new_sorted)])
    in_overlay = np.isin(gone, latest.e_ord.astype(np.int64))
    gone = np.concatenate((gone[~in_overlay], gone[in_overlay]))
    return _positions_of(new_hash, np.union1d(unseen, repeated)), gone, new_sorted


def _in_sorted(values: Any, pool: Any) -> Any:
    """For each of *values*, whether sorted *pool* holds it."""
    if not len(pool):
        return np.zeros(len(values), dtype=bool)
    at = np.searchsorted(pool, values)
    at[at == len(pool)] = len(pool) - 1
    return pool[at] == values


def _positions_of(values: Any, few: Any) -> Any:
    """Where the (few, distinct, sorted) hashes *few* stand in *values*, in order.

    A direct-mapped filter first: a byte per slot of a table at least 64 times as long as *few*
    (up to 4 MiB), set at each of *few*'s low bits; one gather over *values* leaves the candidates
    (about 1 in 64 false ones), which one sorted search checks. A binary search of every value
    was 0.2 s of a 1M-record full cycle with 10,000 changed (10,000 hashes to search)."""
    if not len(few) or not len(values):
        return np.empty(0, dtype=np.intp)
    bits = min(max(len(few).bit_length() + 6, 12), 22)
    mask = np.uint64((1 << bits) - 1)
    table = np.zeros(1 << bits, dtype=bool)
    table[few & mask] = True
    maybe = np.flatnonzero(table[values & mask])
    return maybe[_in_sorted(values[maybe], few)]


def check_unique(
    rtype: RecordType, keys: list[Any] | Callable[[], list[Any]], fps: Any, positions: list[int] | None = None
) -> None:
    """Raise :class:`DuplicateKeyError` naming the first repeated key (and the input *positions* of
    the keys, when they are not 0, 1, ...). *keys* may be a function giving them, called only then."""
    ordered = np.sort(fps)
    if not (ordered[1:] == ordered[:-1]).any():
        return
    if callable(keys):
        keys = keys()
    seen: dict[Any, int] = {}
    for i, k in enumerate(keys):
        if k in seen:
            first, then = (seen[k], i) if positions is None else (positions[seen[k]], positions[i])
            raise DuplicateKeyError(
                f"{rtype.name}: duplicate primary key {k!r} at input positions {first} and {then}",
                type_name=rtype.name,
                key=k,
                field=", ".join(rtype.primary.fields),
            )
        seen[k] = i
    raise ValidationError(  # pragma: no cover - a 64-bit hash collision between distinct keys
        f"{rtype.name}: two distinct primary keys share a 64-bit hash; please report this", type_name=rtype.name
    )


# --- compaction ---------------------------------------------------------------------


@dataclass
class Compacted:
    """One type of a new base: the records message and the per-ordinal arrays it is indexed from."""

    merges: int  # compactions by bytes since the records were last encoded whole

    table: bytes
    segment: Any
    size: int
    holes: Any  # uint32
    hashes: Any  # uint64 per ordinal
    key_fps: Any  # uint64 per live ordinal
    live: Any  # int64 live ordinals, ascending
    value_fps: list[Any]  # per secondary index, uint64 per live ordinal


#: After this many compactions by bytes, the next one decodes and encodes every record again, so
#: that the dead bytes each carries over (replaced records' text, earlier chunks) are dropped.
MAX_MERGES = 4


def compact(latest: Latest, enc: Any, *, squeeze: bool = True) -> Compacted:
    """The records of *latest* (a version built on a base) as one message, no record decoded.

    Ordinals stay, unless *squeeze* and holes pass :data:`MAX_HOLE_SHARE`: then
    the records are renumbered in their order (iteration order stays, the holes
    go). A base compacted in the background keeps every ordinal (:func:`rebase`).
    """
    base, size = latest.base, latest.size
    live = np.ones(size, dtype=bool)
    if len(latest.holes):
        live[latest.holes] = False
    live_ords = np.flatnonzero(live)
    hashes = np.zeros(size, dtype=_U64)
    e_ord = latest.e_ord.astype(np.int64)
    base_live = live_ords[live_ords < base.size]
    hashes[base_live] = latest.base_hashes[base_live]
    hashes[e_ord] = latest.e_hash
    key_fps = _per_ordinal_keys(latest, size)[live_ords]
    value_fps = [_per_ordinal_values(latest, i, size)[live_ords] for i in range(len(latest.rtype.indexes))]
    squeeze = squeeze and len(latest.holes) > MAX_HOLE_SHARE * size
    merges = int(latest.base_state.type_state(latest.rtype.name).merges) + 1
    if merges > MAX_MERGES:
        table, segment = _reencode(latest, enc, size, live, squeeze=squeeze)
        merges = 0
    else:
        table, segment = _merge_records(latest, enc, size, live, squeeze=squeeze)
    if squeeze:
        n = len(live_ords)
        return Compacted(
            merges, table, segment, n, np.zeros(0, np.uint32), hashes[live_ords], key_fps, np.arange(n), value_fps
        )
    return Compacted(
        merges, table, segment, size, latest.holes.astype(np.uint32), hashes, key_fps, live_ords, value_fps
    )


def _per_ordinal_keys(latest: Latest, size: int) -> Any:
    out = np.zeros(max(size, latest.base.size), dtype=_U64)
    table = latest.base_arrays.key_slots
    used = table[:, 1] != 0
    out[table[used, 1].astype(np.int64) - 1] = table[used, 0]
    out[latest.e_ord.astype(np.int64)] = latest.e_key
    return out[:size]


def _per_ordinal_values(latest: Latest, i: int, size: int) -> Any:
    fps, _ = latest.base_arrays.values(i)
    out = np.zeros(max(size, latest.base.size), dtype=_U64)
    out[: len(fps)] = fps
    out[latest.e_ord.astype(np.int64)] = latest.e_vals[i]
    return out[:size]


_WORD = np.dtype("<u8")


def _merge_records(latest: Latest, enc: Any, size: int, live: Any, *, squeeze: bool) -> tuple[bytes, Any]:
    """The version's records as one single-segment message: base bytes, overlay records placed over them."""
    base_raw = latest.base_state.raw(latest.base_state.type_state(latest.rtype.name).records, what="records")
    segments = [base_raw, *latest.chunks]
    if not isinstance(enc, encoder.RecordEncoder) or any(_segment_count(s) != 1 for s in segments):
        return _reencode(latest, enc, size, live, squeeze=squeeze)  # merges counts these too: harmless
    top = enc.top
    base_n = latest.base.size
    grow = (size - base_n) * top.words  # words the element area grows by: the heap after it moves
    base_seg = np.frombuffer(base_raw, dtype=_WORD)[1:]  # after the 8-byte segment table
    heap_at = 3 + base_n * top.words  # first heap word of the base segment
    chunk_segs = [np.frombuffer(c, dtype=_WORD)[1:] for c in latest.chunks]
    total = 3 + size * top.words + (len(base_seg) - heap_at) + sum(len(c) for c in chunk_segs)
    out = np.zeros(total, dtype=_WORD)
    out[:3] = base_seg[:3]
    out[1], out[2] = _list_pointer(size, top.words), _list_tag(size, top)
    keep = min(size, base_n)
    elements = out[3 : 3 + size * top.words].reshape(size, top.words)
    elements[:keep] = base_seg[3 : 3 + keep * top.words].reshape(keep, top.words)
    new_heap = 3 + size * top.words
    out[new_heap : new_heap + len(base_seg) - heap_at] = base_seg[heap_at:]
    ptrs = elements[:, top.data_words :]
    _relocate(ptrs[:keep], grow)
    elements[:keep][~live[:keep]] = 0  # holes; a masked record is a hole or an entry's, placed below
    at = new_heap + len(base_seg) - heap_at
    e_ord = latest.e_ord.astype(np.int64)
    chunk_of = (latest.e_ref >> _U64(32)).astype(np.int64)
    pos_of = (latest.e_ref & _U64(0xFFFFFFFF)).astype(np.int64)
    for c, seg in enumerate(chunk_segs):
        out[at : at + len(seg)] = seg
        mine = np.flatnonzero(chunk_of == c)
        if len(mine):
            src = 3 + pos_of[mine] * top.words
            rows = seg[src[:, None] + np.arange(top.words)]
            # a pointer at chunk word p moves to element word q: its offset changes by (at + p) - q
            p_words = src[:, None] + top.data_words + np.arange(top.ptr_count)
            q_words = 3 + e_ord[mine][:, None] * top.words + top.data_words + np.arange(top.ptr_count)
            moved = rows[:, top.data_words :]
            _relocate(moved, (at + p_words) - q_words)
            rows[:, top.data_words :] = moved
            elements[e_ord[mine]] = rows
        at += len(seg)
    if squeeze:
        out = _squeeze(out, top, size, np.flatnonzero(live))
    return struct.pack("<II", 0, len(out)), out


def _merge_from(sizes: list[int]) -> int:
    """The first of the chunks to merge: the newest half of them, and older ones back to the first
    that is bigger than all those after it. Each merge then removes at least half the chunks, and a
    chunk is merged again only once newer ones outweigh it (sizes at least double from newer to
    older, as in a size-tiered LSM tree): a record's bytes are copied O(log n) times."""
    j = len(sizes) - MAX_CHUNKS // 2
    acc = sum(sizes[j:])
    while j > 0 and sizes[j - 1] <= acc:
        j -= 1
        acc += sizes[j]
    return j


def merge_chunks(chunks: list[Any], refs: Any, top: Any) -> bytes | None:
    """The records *refs* point at (chunk << 32 | element), as one Records message whose element *i*
    is ``refs[i]``'s; None when a chunk is not a single segment or a record holds a far pointer.

    Bytes work, as in a compaction: the chunks that still hold a live record are copied whole
    after the new element area, each element is copied into it and its pointers moved by a vector.
    Replaced records' bytes come along; the next compaction of the base drops them.
    """
    if any(_segment_count(c) != 1 for c in chunks):
        return None
    words, n = top.words, len(refs)
    chunk_of = (refs >> _U64(32)).astype(np.int64)
    pos_of = (refs & _U64(0xFFFFFFFF)).astype(np.int64)
    segs = {c: np.frombuffer(chunks[c], dtype=_WORD)[1:] for c in np.unique(chunk_of).tolist()}
    total = 3 + n * words + sum(len(seg) for seg in segs.values())
    out = np.zeros(total, dtype=_WORD)
    out[0] = _U64(1 << 48)  # the root: a struct of no data and one pointer, right after
    out[1], out[2] = _list_pointer(n, words), _list_tag(n, top)
    elements = out[3 : 3 + n * words].reshape(n, words)
    at = 3 + n * words
    try:
        for c, seg in segs.items():
            out[at : at + len(seg)] = seg
            mine = np.flatnonzero(chunk_of == c)
            src = 3 + pos_of[mine] * words
            rows = seg[src[:, None] + np.arange(words)]
            # a pointer at chunk word p moves to element word q: its offset changes by (at + p) - q
            p_words = src[:, None] + top.data_words + np.arange(top.ptr_count)
            q_words = 3 + mine[:, None] * words + top.data_words + np.arange(top.ptr_count)
            _relocate(rows[:, top.data_words :], (at + p_words) - q_words)
            elements[mine] = rows
            at += len(seg)
    except CorruptStateError:
        return None
    return struct.pack("<II", 0, total) + out.tobytes()


def _squeeze(out: Any, top: Any, size: int, live_ords: Any) -> Any:
    """The message with its holes taken out of the list: live element o moves to its rank r, the heap
    moves up by the dropped elements' words, and every pointer's offset follows both moves."""
    words, n = top.words, len(live_ords)
    dropped = size - n
    rows = out[3 : 3 + size * words].reshape(size, words)[live_ords].copy()
    delta = ((live_ords - np.arange(n)) - dropped) * words
    moved = rows[:, top.data_words :]
    _relocate(moved, delta[:, None])
    rows[:, top.data_words :] = moved
    new = np.empty(len(out) - dropped * words, dtype=_WORD)
    new[0] = out[0]
    new[1], new[2] = _list_pointer(n, words), _list_tag(n, top)
    new[3 : 3 + n * words] = rows.ravel()
    new[3 + n * words :] = out[3 + size * words :]
    return new


def _segment_count(raw: memoryview) -> int:
    return int.from_bytes(bytes(raw[:4]), "little") + 1


def _list_pointer(count_words: int, words: int) -> Any:
    """The Records struct's pointer (word 1) to the list tag at word 2: offset 0, inline composite."""
    return _U64(1) | _U64(7 << 32) | (_U64(count_words * words) << _U64(35))


def _list_tag(n: int, top: Any) -> Any:
    """The tag word of an inline-composite list of *n* elements of struct layout *top*."""
    return _U64(n << 2) | (_U64(top.data_words) << _U64(32)) | (_U64(top.ptr_count) << _U64(48))


def _relocate(ptrs: Any, delta: Any) -> None:
    """Add *delta* words to the offset of every non-null struct or list pointer in *ptrs* (in place)."""
    nonnull = ptrs != 0
    kind = ptrs & _U64(3)
    if np.any(nonnull & (kind > 1)):
        raise CorruptStateError("a record holds a far or capability pointer; compaction cannot move it")
    offset = ((ptrs >> _U64(2)) & _U64(0x3FFFFFFF)).astype(np.int64)
    offset = np.where(offset >= 1 << 29, offset - (1 << 30), offset) + delta
    moved = (ptrs & ~_U64(0xFFFFFFFC)) | ((offset.astype(np.int64) & 0x3FFFFFFF).astype(_U64) << _U64(2))
    ptrs[...] = np.where(nonnull, moved, ptrs)


def _reencode(latest: Latest, enc: Any, size: int, live: Any, *, squeeze: bool) -> tuple[bytes, Any]:
    """Decode every record and encode them again: for types pycapnp's builders write."""
    view = latest.view
    records: list[dict[str, Any] | None] = [None] * size
    for o in np.flatnonzero(live).tolist():
        records[o] = view.record_at(o).to_dict()
    if squeeze:
        records = [r for r in records if r is not None]
    table, segment = enc.encode(records)
    return bytes(table), segment


def needs_compaction(built: Iterable[BuiltOverlay], bases: Mapping[str, int], share: float, minimum: int) -> bool:
    """Whether a version's overlays have grown, or cost, enough that later versions should get a new base
    (see :data:`COMPACT_REWRITE`)."""
    return any(
        len(b.chunks) > MAX_CHUNKS
        or (
            b.pressure > minimum
            and (b.pressure > share * bases[b.rtype.name] or b.carried > COMPACT_REWRITE * bases[b.rtype.name])
        )
        for b in built
    )


def needs_renumbering(built: Iterable[BuiltOverlay]) -> bool:
    """Whether a version's holes passed :data:`MAX_HOLE_SHARE`: it is compacted at once, squeezed."""
    return any(b.renumber for b in built)


def rebase(latest: Latest, base_state: StateFile, since: int, cache: dict[tuple[int, str], BaseArrays]) -> Latest:
    """*latest* (built on an older base) as an overlay on *base_state*, a compaction of version *since*.

    The new base holds exactly the records of *since* under the same ordinals, so
    what differs is what changed after *since*: the entries stamped later, the
    removals stamped later of keys the new base has, and the new base's ordinals
    those mask. O(entries + tombs) vector work.
    """
    rtype = latest.rtype
    name = rtype.name
    base = base_state.type(name)
    arrays = BaseArrays.of(base_state, base, name, cache)
    later = latest.e_stamp > _U64(since)
    e_keys = latest.e_key[later]
    chunk_ids = (latest.e_ref[later] >> _U64(32)).astype(np.int64)
    first = int(chunk_ids.min()) if len(chunk_ids) else len(latest.chunks)
    e_ref = latest.e_ref[later] - (_U64(first) << _U64(32))
    t_later = latest.t_stamp > _U64(since)
    t_keys = latest.t_key[t_later]
    t_in_base = index.lookup(arrays.key_slots, t_keys).astype(np.int64) - 1
    keep_t = t_in_base >= 0
    e_in_base = index.lookup(arrays.key_slots, e_keys).astype(np.int64) - 1
    masked = np.union1d(t_in_base[keep_t], e_in_base[e_in_base >= 0]).astype(np.int64)
    e_vals, m_vals, m_pos = [], [], []
    for i in range(len(rtype.indexes)):
        fps, positions = arrays.values_at(i, masked)
        e_vals.append(latest.e_vals[i][later])
        m_vals.append(fps)
        m_pos.append(positions.astype(_U64))
    bts = base_state.type_state(name)
    table, _ = _key_table(rtype.primary, e_keys, t_keys[keep_t])
    return dataclasses.replace(  # the same version, holes and counts; the overlay as seen from the new base
        latest,
        key_slots=table.slots,
        chunk_offset=first,
        base_arrays=arrays,
        base=base,
        base_state=base_state,
        base_hashes=_u64(base_state, bts.hashes, f"{name} hashes"),
        chunks=latest.chunks[first:],
        e_ord=latest.e_ord[later],
        e_ref=e_ref,
        e_key=e_keys,
        e_hash=latest.e_hash[later],
        e_stamp=latest.e_stamp[later],
        t_key=t_keys[keep_t],
        t_ord=t_in_base[keep_t].astype(_U64),
        t_stamp=latest.t_stamp[t_later][keep_t],
        m_ord=masked.astype(_U64),
        e_vals=e_vals,
        m_vals=m_vals,
        m_pos=m_pos,
    )

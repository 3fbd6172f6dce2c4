"""Record views: primary-key lookup, secondary-index find, iteration.

A :class:`TypeView` reads one record type of one version. Records are pycapnp
struct readers pointing straight into the mapping; index tables are
memoryviews of it. A lookup is a hash probe (an integer multiply and a modulo,
then one or two array reads) and one list access: no copy, no per-process
index building.

A version built on a base (docs/decisions.md §18) reads through an
:class:`Overlay` first: one byte of a bloom array says whether the key can be
in it at all (the common case, a base record, costs that byte), then a small
table of the records changed since the base and of the base keys removed.

Records are valid as long as you hold them, but belong inside their snapshot's
block: after it ends the version may be reclaimed, and a record you kept reads
a version nobody announces any more.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Callable, Iterator, Sequence
from typing import Any, overload

import xxhash

from hollow import layout
from hollow.errors import CorruptStateError

_M64 = layout.M64
_xxh3 = xxhash.xxh3_64_intdigest


def section(view: memoryview, sec: Any, size: int, fmt: str, *, what: str) -> memoryview:
    """A typed memoryview of one bounds-checked section of the file."""
    offset, length = sec._get("offset"), sec._get("length")  # not attributes: docs/decisions.md §110
    layout.check_section(offset, length, size, what=what)
    if length % 8:
        raise CorruptStateError(f"{what}: section length {length} is not a multiple of 8")
    part: memoryview = view[offset : offset + length]
    return part.cast(fmt)  # type: ignore[call-overload, no-any-return]


class IndexTable:
    """One hash index of a type, probed in place (see ``Index`` in hollow.capnp).

    ``slots`` is the table as UInt64s: slot *s* is ``slots[2s]`` (key or hash)
    and ``slots[2s + 1]`` (its value; 0 when the slot is empty).
    """

    __slots__ = ("capacity", "fields", "key_types", "kind", "postings", "slots", "unique")

    fields: tuple[str, ...]
    key_types: tuple[int, ...]
    kind: int
    unique: bool
    capacity: int
    slots: memoryview
    postings: memoryview

    @classmethod
    def attach(cls, ix: Any, view: memoryview, size: int, *, what: str) -> IndexTable:
        self = cls()
        get = ix._get  # not attributes: docs/decisions.md §110
        self.fields = tuple(get("fields"))
        self.key_types = tuple(int(t.raw) if hasattr(t, "raw") else _KEY_TYPES[str(t)] for t in get("fieldTypes"))
        self.kind = layout.KIND_EXACT_INT if str(get("kind")) == "exactInt" else layout.KIND_HASHED
        self.unique = get("unique")
        self.capacity = get("capacity")
        self.slots = section(view, get("slots"), size, "Q", what=what)
        self.postings = section(view, get("postings"), size, "I", what=what)
        n = self.capacity
        if len(self.slots) != 2 * n or n == 0:
            raise CorruptStateError(f"{what}: index table does not match capacity {n}")
        return self

    def fingerprint(self, key: Any) -> int:
        return layout.key_fingerprint(self.kind, self.key_types, key)

    def probe(self, fp: int) -> Iterator[int]:
        """Values of the slots whose stored key equals *fp*, in probe order (one for a unique index)."""
        cap = self.capacity
        slots = self.slots
        s = layout.slot_of(fp, cap)
        for _ in range(cap):
            value = slots[2 * s + 1]
            if not value:
                return
            if slots[2 * s] == fp:
                yield value
            s += 1
            if s == cap:
                s = 0

    def postings_of(self, fp: int) -> memoryview | None:
        """The postings run of *fp* in a non-unique table, or None (first match: fingerprints are unique)."""
        for value in self.probe(fp):
            start = (value & 0xFFFFFFFF) - 1
            return self.postings[start : start + (value >> 32)]
        return None


_KEY_TYPES = {"int": layout.KEY_INT, "text": layout.KEY_TEXT, "data": layout.KEY_DATA, "bool": layout.KEY_BOOL}


class IndexTables(Sequence[IndexTable]):
    """A type's secondary index tables, each attached on first use: a lookup by primary key never
    needs them, and attaching one costs tens of microseconds of pycapnp reads (a fresh process's first
    lookup would pay for all of them). A table that does not attach raises, as at attach, a
    :class:`CorruptStateError` naming it (only a forged file can get that far, docs/decisions.md §40)."""

    __slots__ = ("_messages", "_size", "_tables", "_view", "_what")

    def __init__(self, messages: Any, view: memoryview, size: int, *, what: str) -> None:
        self._messages = messages
        self._view = view
        self._size = size
        self._what = what
        self._tables: list[IndexTable | None] = [None] * len(messages)

    def __len__(self) -> int:
        return len(self._tables)

    @overload
    def __getitem__(self, i: int) -> IndexTable: ...
    @overload
    def __getitem__(self, i: slice) -> list[IndexTable]: ...
    def __getitem__(self, i: int | slice) -> IndexTable | list[IndexTable]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        table = self._tables[i]
        if table is None:
            table = self._tables[i] = IndexTable.attach(self._messages[i], self._view, self._size, what=self._what)
        return table


class RecordList(Sequence[Any]):
    """The records one ``find`` matched: a lazy sequence in ordinal order."""

    __slots__ = ("_ordinals", "_records")

    def __init__(self, records: Any, ordinals: Sequence[int]) -> None:
        self._records = records
        self._ordinals = ordinals

    def __len__(self) -> int:
        return len(self._ordinals)

    @overload
    def __getitem__(self, i: int) -> Any: ...
    @overload
    def __getitem__(self, i: slice) -> RecordList: ...
    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return RecordList(self._records, self._ordinals[i])
        return self._records[self._ordinals[i]]

    def __iter__(self) -> Iterator[Any]:
        records = self._records
        for o in self._ordinals:
            yield records[o]

    def __repr__(self) -> str:
        return f"<RecordList of {len(self)} records>"


#: An overlay key table's value for a removed base key (with the tomb's index + 1 below it).
TOMB = 1 << 63
_GONE = object()


class Chunks:
    """An overlay's chunks (one Records message a cycle), each read on first use: an overlay can
    have up to 64 and a lookup touches few. ``lists`` holds those read so far (None for the others),
    for hot paths to index without a call; ``chunks[i]`` reads chunk *i* if need be."""

    __slots__ = ("_load", "lists")

    def __init__(self, n: int, load: Any) -> None:
        self.lists: list[Any] = [None] * n
        self._load = load

    def __len__(self) -> int:
        return len(self.lists)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self.lists)))]
        found = self.lists[i]
        if found is None:
            found = self.lists[i] = self._load(i)
        return found

    def __iter__(self) -> Iterator[Any]:
        return (self[i] for i in range(len(self.lists)))


class Overlay:
    """What a version changed since its base, for one type (``Overlay`` in hollow.capnp).

    The bloom array and the entries' refs are read at attach; the entries' ordinals and the key
    table (``keys``) on first use, by *entries* (a callable): a lookup that the bloom array rules
    out, which is most lookups and a fresh process's first one, needs neither (docs/decisions.md
    §80)."""

    __slots__ = (
        "_entries",
        "_load_entries",
        "added",
        "bloom",
        "bloom_n",
        "chunks",
        "refs",
        "skipped",
    )

    def __init__(
        self,
        chunks: Chunks,
        refs: memoryview,
        entries: Callable[[], tuple[memoryview, IndexTable]],
        bloom: Any,
        added: Sequence[IndexTable],
        skipped: Sequence[IndexTable],
    ) -> None:
        self.chunks = chunks
        self.refs = refs
        self._entries: tuple[memoryview, IndexTable] | None = None
        self._load_entries = entries
        self.bloom = bloom
        self.bloom_n = len(bloom)
        self.added = added
        self.skipped = skipped

    def _read(self) -> tuple[memoryview, IndexTable]:
        entries = self._entries
        if entries is None:
            entries = self._entries = self._load_entries()
        return entries

    @property
    def ordinals(self) -> memoryview:
        """The ordinals of the entries, ascending (read on first use)."""
        return self._read()[0]

    @property
    def keys(self) -> IndexTable:
        """The entries' and tombstones' keys (read on first use)."""
        return self._read()[1]

    def record(self, entry: int) -> Any:
        try:
            ref = self.refs[entry]
            return self.chunks[ref >> 32][ref & 0xFFFFFFFF]
        except IndexError:
            raise CorruptStateError(f"overlay entry {entry} refers outside its chunks") from None

    def lookup(self, fp: int) -> Any:
        """The entry's record for *fp*, ``_GONE`` for a removed base key, or ``_MISSING``.

        At most one pass over the table, so that a damaged table without an empty slot
        ends the probe instead of looping.
        """
        cap = self.keys.capacity
        slots = self.keys.slots
        s = fp % cap
        for _ in range(cap):
            value = slots[2 * s + 1]
            if not value:
                return _MISSING
            if slots[2 * s] == fp:
                return _GONE if value & TOMB else self.record(value - 1)
            s += 1
            if s == cap:
                s = 0
        return _MISSING

    def entry_at(self, ordinal: int) -> int:
        """The entry holding *ordinal*, or -1 when the base record (or a hole) is there."""
        ordinals = self.ordinals
        j = bisect.bisect_left(ordinals, ordinal)
        return j if j < len(ordinals) and ordinals[j] == ordinal else -1


class VersionRecords:
    """The records of one version by ordinal: the overlay's where it has one, else the base's."""

    __slots__ = ("_base", "_overlay")

    def __init__(self, base: Any, overlay: Overlay) -> None:
        self._base = base
        self._overlay = overlay

    def __getitem__(self, ordinal: int) -> Any:
        e = self._overlay.entry_at(ordinal)
        return self._base[ordinal] if e < 0 else self._overlay.record(e)


#: Bloom arrays up to this many bytes are copied at attach (bytes index about 20 ns faster than a
#: memoryview); a larger one (a mid's, which grows to tens of thousands of keys at 16 bytes a key)
#: is read in place, so that attaching a version stays O(1) in its overlays (docs/decisions.md §80).
BLOOM_COPY_MAX = 4096


def _bloom_of(overlay: Overlay) -> Any:
    bloom = overlay.bloom
    return bytes(bloom) if len(bloom) <= BLOOM_COPY_MAX else bloom


_EMPTY = RecordList((), ())
_NO_BLOOM = b"\0"


def _merged(kept: array[int], overlay: Overlay, added: memoryview | None) -> array[int]:
    """*kept* (ascending ordinals) with the ordinals of the overlay's entries *added* put in order."""
    ords = overlay.ordinals
    extra = [ords[e] for e in added or ()]
    if len(extra) < 64:
        for o in extra:
            kept.insert(bisect.bisect_left(kept, o), o)
        return kept
    return array("I", sorted([*kept, *extra]))


class TypeView:
    """The records of one type in one version: ``get``, ``[key]``, ``len``, iteration, ``find``."""

    __slots__ = (
        "_bloom",
        "_bloom_n",
        "_cap",
        "_exact",
        "_holes",
        "_load_holes",
        "_overlay",
        "_records",
        "_size",
        "_slots",
        "_text_field",
        "content_hash",
        "count",
        "indexes",
        "name",
        "primary",
        "schema",
        "what",
    )

    def __init__(
        self,
        name: str,
        records: Any,
        count: int,
        holes: memoryview | Callable[[], memoryview],
        primary: IndexTable,
        indexes: Sequence[IndexTable],
        *,
        content_hash: int = 0,
        schema: Any = None,
        what: str,
        overlay: Overlay | None = None,
        size: int | None = None,
    ) -> None:
        self.name = name
        self.content_hash = content_hash
        #: The struct schema records are read through (the data's own, or the one the reader passed).
        self.schema = schema
        self.count = count
        self.what = what
        self.primary = primary
        self.indexes = indexes
        self._records = records
        # A memoryview, or what reads it on first use: a lookup needs no holes (docs/decisions.md §80).
        self._holes: memoryview | None = None if callable(holes) else holes
        self._load_holes = holes
        self._exact = primary.kind == layout.KIND_EXACT_INT
        single_text = primary.key_types == (layout.KEY_TEXT,)
        self._text_field = primary.fields[0] if single_text else None
        self._cap = primary.capacity
        self._slots = primary.slots
        #: ordinals of this version (live records and holes); the base's list may be longer or shorter
        self._size = len(records) if size is None else size
        self._overlay = overlay
        # No overlay: one zero byte, so the hot paths test it without a branch of their own.
        self._bloom = _NO_BLOOM if overlay is None else overlay.bloom
        self._bloom_n = 1 if overlay is None else overlay.bloom_n

    # -- primary key --------------------------------------------------------

    def get(self, key: Any, default: Any = None) -> Any:  # noqa: PLR0911, PLR0912 - hot paths inlined
        """The record whose primary key is *key* (a tuple for several fields), or *default*.

        Raises TypeError when *key* cannot be a key of this type.
        """
        if type(key) is int and self._exact:
            # The hot path, inlined: an integer key is its own hash and is stored in the table.
            if key < 0:
                key &= _M64
            cap = self._cap
            s = key % cap
            slots = self._slots
            wrapped = False
            while True:
                o = slots[2 * s + 1]
                if not o:
                    return default
                if slots[2 * s] == key:
                    return self._records[o - 1]
                s += 1
                if s == cap:
                    if wrapped:  # a table without an empty slot (forged): at most two passes
                        return default
                    s, wrapped = 0, True
        if type(key) is str and self._text_field is not None:
            # The other hot path: one Text key field. The table holds its hash; the record confirms.
            fp = _xxh3(key.encode())
            cap = self._cap
            s = fp % cap
            slots = self._slots
            wrapped = False
            while True:
                o = slots[2 * s + 1]
                if not o:
                    return default
                if slots[2 * s] == fp:
                    record = self._records[o - 1]
                    if record._get(self._text_field) == key:
                        return record
                s += 1
                if s == cap:
                    if wrapped:
                        return default
                    s, wrapped = 0, True
        return self._get_hashed(key, default)

    def _get_hashed(self, key: Any, default: Any) -> Any:
        primary = self.primary
        try:
            fp = primary.fingerprint(key)
        except TypeError as e:
            raise TypeError(f"{self.name} primary key is {self._key_signature(primary)}: {e}") from None
        if self._bloom[fp % self._bloom_n]:
            found = self._overlay.lookup(fp)  # type: ignore[union-attr]
            if found is not _MISSING:
                return found if found is not _GONE and self._matches(found, primary.fields, key) else default
        for value in primary.probe(fp):
            record = self._records[value - 1]
            if self._matches(record, primary.fields, key):
                return record
        return default

    def __getitem__(self, key: Any) -> Any:
        record = self.get(key, _MISSING)
        if record is _MISSING:
            raise KeyError(key)
        return record

    def __contains__(self, key: Any) -> bool:
        return self.get(key, _MISSING) is not _MISSING

    # -- secondary indexes --------------------------------------------------

    def find(self, **where: Any) -> RecordList:
        """Records whose indexed fields equal *where*, through a secondary hash index.

        ``find(country="NZ")`` needs an index on ``country``; several fields
        need one index declared on exactly those fields.
        """
        index = self._index_for(where)
        key = where[index.fields[0]] if len(index.fields) == 1 else tuple(where[f] for f in index.fields)
        try:
            fp = index.fingerprint(key)
        except TypeError as e:
            raise TypeError(f"{self.name} index on {', '.join(index.fields)}: {e}") from None
        ordinals, records = self._ordinals_of(self.indexes.index(index), fp, key)
        return _EMPTY if not ordinals else RecordList(records, ordinals)

    def _ordinals_of(self, i: int, fp: int, key: Any) -> tuple[Sequence[int] | None, Any]:
        """The ordinals, ascending, of this version's records whose index *i* value is *key*
        (fingerprint *fp*), and what reads them by ordinal."""
        index = self.indexes[i]
        ordinals = index.postings_of(fp)
        if ordinals is not None and not (ordinals and self._matches(self._records[ordinals[0]], index.fields, key)):
            ordinals = None
        if self._overlay is None:
            return ordinals, self._records
        found = self._find_overlaid(i, fp, key, ordinals)
        # The base's postings untouched by the overlay are base records: read them straight.
        return found, self._records if found is ordinals else VersionRecords(self._records, self._overlay)

    def _find_overlaid(self, i: int, fp: int, key: Any, base: memoryview | None) -> Sequence[int] | None:
        """The base's matches less those the overlay masks, merged with the overlay's, in ordinal order."""
        overlay = self._overlay
        assert overlay is not None
        fields = self.indexes[i].fields
        added = overlay.added[i].postings_of(fp)
        if added and not self._matches(overlay.record(added[0]), fields, key):
            added = None
        skipped = overlay.skipped[i].postings_of(fp) if base is not None else None
        if not added and not skipped:
            return base
        kept = array("I")
        if base is not None:
            at = 0
            for pos in skipped or ():
                kept.frombytes(base[at:pos].cast("B"))
                at = pos + 1
            kept.frombytes(base[at:].cast("B"))
        return _merged(kept, overlay, added)

    def _index_for(self, where: dict[str, Any]) -> IndexTable:
        wanted = set(where)
        for index in self.indexes:
            if set(index.fields) == wanted:
                return index
        have = "; ".join(", ".join(ix.fields) for ix in self.indexes) or "none"
        raise LookupError(
            f"{self.name} has no index on {', '.join(sorted(wanted))} (indexes: {have}); "
            "declare one in the producer's indexes= or the daemon's config"
        )

    # -- iteration ----------------------------------------------------------

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Any]:
        """Records in ordinal order: stable across versions for records that stay."""
        if self._overlay is None and not len(self.holes):
            return iter(self._records)
        return self._iter_merged()

    def _iter_merged(self) -> Iterator[Any]:
        holes = set(self.holes)
        records = self._records
        overlay = self._overlay
        ords: Any = overlay.ordinals if overlay is not None else ()
        e, n = 0, len(ords)
        next_entry = ords[0] if n else -1
        for o in range(self._size):
            if o == next_entry:
                yield overlay.record(e)  # type: ignore[union-attr]
                e += 1
                next_entry = ords[e] if e < n else -1
            elif o not in holes:
                yield records[o]

    def record_at(self, ordinal: int) -> Any:
        """The record at *ordinal* in this version (a hole reads as an empty record)."""
        if self._overlay is not None:
            e = self._overlay.entry_at(ordinal)
            if e >= 0:
                return self._overlay.record(e)
        return self._records[ordinal]

    @property
    def size(self) -> int:
        """Ordinals in this version: live records plus holes."""
        return self._size

    @property
    def holes(self) -> memoryview:
        """This version's holes: ordinals that hold no record, ascending (read on first use)."""
        holes = self._holes
        if holes is None:
            holes = self._holes = self._load_holes()  # type: ignore[operator]
        return holes

    @property
    def overlay(self) -> Overlay | None:
        """What this version changed since its base (None for a base)."""
        return self._overlay

    def __repr__(self) -> str:
        return f"<TypeView {self.name}: {self.count} records>"

    # -- helpers ------------------------------------------------------------

    @staticmethod
    def _matches(record: Any, fields: tuple[str, ...], key: Any) -> bool:
        if len(fields) == 1:
            return bool(record._get(fields[0]) == key)
        return all(record._get(f) == k for f, k in zip(fields, key, strict=True))

    @staticmethod
    def _key_signature(index: IndexTable) -> str:
        names = [f"{f}: {layout.KEY_TYPE_NAMES[t]}" for f, t in zip(index.fields, index.key_types, strict=True)]
        return names[0] if len(names) == 1 else "(" + ", ".join(names) + ")"


class OverlaidView(TypeView):
    """A type of a version built on a base: :meth:`get` asks the overlay first.

    The same hot paths as :meth:`TypeView.get` with the overlay's bloom byte
    in front, written out again rather than called: a call costs more than the
    probe itself, and a base's view should not pay the byte test at all.
    """

    __slots__ = ("_ov_cap", "_ov_chunks", "_ov_lists", "_ov_refs", "_ov_slots")

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        overlay = self._overlay
        assert overlay is not None
        self._ov_slots: memoryview | None = None  # the overlay's key table, read at the first bloom hit (_own)
        self._ov_refs = overlay.refs
        self._ov_chunks = overlay.chunks
        self._ov_lists = overlay.chunks.lists
        self._bloom = _bloom_of(overlay)

    def _own(self) -> memoryview:
        """The overlay's key table, for the hot paths: read on the first lookup its bloom byte does not
        rule out (Overlay reads it on first use)."""
        overlay = self._overlay
        assert overlay is not None
        self._ov_cap = overlay.keys.capacity
        slots = self._ov_slots = overlay.keys.slots
        return slots

    def get(self, key: Any, default: Any = None) -> Any:  # noqa: PLR0911, PLR0912, PLR0915 - hot paths inlined
        """The record whose primary key is *key* (a tuple for several fields), or *default*.

        Raises TypeError when *key* cannot be a key of this type.
        """
        if type(key) is int and self._exact:
            # The hot path, inlined: an integer key is its own hash and is stored in the table.
            if key < 0:
                key &= _M64
            if self._bloom[key % self._bloom_n]:
                # The overlay's table, probed here too (a call would cost more than the probe).
                slots = self._ov_slots
                if slots is None:
                    slots = self._own()
                cap = self._ov_cap
                s = key % cap
                for _ in range(cap):
                    value = slots[2 * s + 1]
                    if not value:
                        break
                    if slots[2 * s] == key:
                        if value & TOMB:
                            return default
                        ref = self._ov_refs[value - 1]
                        records = self._ov_lists[ref >> 32] or self._ov_chunks[ref >> 32]
                        return records[ref & 0xFFFFFFFF]
                    s += 1
                    if s == cap:
                        s = 0
            cap = self._cap
            s = key % cap
            slots = self._slots
            wrapped = False
            while True:
                o = slots[2 * s + 1]
                if not o:
                    return default
                if slots[2 * s] == key:
                    return self._records[o - 1]
                s += 1
                if s == cap:
                    if wrapped:  # a table without an empty slot (forged): at most two passes
                        return default
                    s, wrapped = 0, True
        if type(key) is str and self._text_field is not None:
            # The other hot path: one Text key field. The table holds its hash; the record confirms.
            fp = _xxh3(key.encode())
            if self._bloom[fp % self._bloom_n]:
                found = self._overlay.lookup(fp)  # type: ignore[union-attr]
                if found is not _MISSING:
                    return found if found is not _GONE and found._get(self._text_field) == key else default
            cap = self._cap
            s = fp % cap
            slots = self._slots
            wrapped = False
            while True:
                o = slots[2 * s + 1]
                if not o:
                    return default
                if slots[2 * s] == fp:
                    record = self._records[o - 1]
                    if record._get(self._text_field) == key:
                        return record
                s += 1
                if s == cap:
                    if wrapped:
                        return default
                    s, wrapped = 0, True
        return self._get_hashed(key, default)


class TopView(TypeView):
    """A type of a version whose overlay is over an earlier version on the same base (its *mid*).

    The overlay holds only what changed since the mid, so that writing such a version costs
    O(its changes) however large the mid's overlay has grown (docs/decisions.md §18). A lookup
    tests this overlay's bloom byte (and table), then asks the mid's view, which tests its own
    and then reads the base. Its masked ordinals and skipped tables name the mid's ordinals.
    """

    __slots__ = (
        "_mid",
        "_mid_bloom",
        "_mid_bloom_n",
        "_mid_cap",
        "_mid_chunks",
        "_mid_lists",
        "_mid_refs",
        "_mid_slots",
        "_ov_cap",
        "_ov_chunks",
        "_ov_lists",
        "_ov_refs",
        "_ov_slots",
    )

    def __init__(
        self,
        mid: TypeView,
        overlay: Overlay,
        count: int,
        holes: memoryview | Callable[[], memoryview],
        size: int,
        *,
        content_hash: int,
        what: str,
    ) -> None:
        super().__init__(
            mid.name,
            mid._records,
            count,
            holes,
            mid.primary,
            mid.indexes,
            content_hash=content_hash,
            schema=mid.schema,
            what=what,
            overlay=overlay,
            size=size,
        )
        below = mid._overlay
        if below is None:
            raise CorruptStateError(f"{what}: {mid.name}: its mid has no overlay")
        self._mid = mid
        # Both key tables and refs are read at the first lookup each bloom byte does not rule out.
        self._ov_slots: memoryview | None = None
        self._ov_refs = overlay.refs
        self._ov_chunks = overlay.chunks
        self._ov_lists = overlay.chunks.lists
        self._bloom = _bloom_of(overlay)
        self._mid_slots: memoryview | None = None
        self._mid_refs = below.refs
        self._mid_chunks = below.chunks
        self._mid_lists = below.chunks.lists
        self._mid_bloom = mid._bloom
        self._mid_bloom_n = mid._bloom_n

    def _own(self) -> memoryview:
        """This overlay's key table, for the hot path (read on first use, as OverlaidView's)."""
        overlay = self._overlay
        assert overlay is not None
        self._ov_cap = overlay.keys.capacity
        slots = self._ov_slots = overlay.keys.slots
        return slots

    def _mid_own(self) -> memoryview:
        """The mid's overlay's key table, for the hot path (read on first use)."""
        below = self._mid._overlay
        assert below is not None
        self._mid_cap = below.keys.capacity
        slots = self._mid_slots = below.keys.slots
        return slots

    def get(self, key: Any, default: Any = None) -> Any:  # noqa: PLR0911, PLR0912 - hot path inlined
        """The record whose primary key is *key* (a tuple for several fields), or *default*.

        Raises TypeError when *key* cannot be a key of this type.
        """
        if type(key) is int and self._exact:
            # The hot path, inlined for all three levels (a call would cost more than a probe).
            if key < 0:
                key &= _M64
            if self._bloom[key % self._bloom_n]:
                slots = self._ov_slots
                if slots is None:
                    slots = self._own()
                cap = self._ov_cap
                s = key % cap
                for _ in range(cap):
                    value = slots[2 * s + 1]
                    if not value:
                        break
                    if slots[2 * s] == key:
                        if value & TOMB:
                            return default
                        ref = self._ov_refs[value - 1]
                        records = self._ov_lists[ref >> 32] or self._ov_chunks[ref >> 32]
                        return records[ref & 0xFFFFFFFF]
                    s += 1
                    if s == cap:
                        s = 0
            if self._mid_bloom[key % self._mid_bloom_n]:
                slots = self._mid_slots
                if slots is None:
                    slots = self._mid_own()
                cap = self._mid_cap
                s = key % cap
                for _ in range(cap):
                    value = slots[2 * s + 1]
                    if not value:
                        break
                    if slots[2 * s] == key:
                        if value & TOMB:
                            return default
                        ref = self._mid_refs[value - 1]
                        records = self._mid_lists[ref >> 32] or self._mid_chunks[ref >> 32]
                        return records[ref & 0xFFFFFFFF]
                    s += 1
                    if s == cap:
                        s = 0
            cap = self._cap
            s = key % cap
            slots = self._slots
            wrapped = False
            while True:
                o = slots[2 * s + 1]
                if not o:
                    return default
                if slots[2 * s] == key:
                    return self._records[o - 1]
                s += 1
                if s == cap:
                    if wrapped:  # a table without an empty slot (forged): at most two passes
                        return default
                    s, wrapped = 0, True
        return self._get_hashed(key, default)

    def _get_hashed(self, key: Any, default: Any) -> Any:
        primary = self.primary
        try:
            fp = primary.fingerprint(key)
        except TypeError as e:
            raise TypeError(f"{self.name} primary key is {self._key_signature(primary)}: {e}") from None
        if self._bloom[fp % self._bloom_n]:
            found = self._overlay.lookup(fp)  # type: ignore[union-attr]
            if found is not _MISSING:
                return found if found is not _GONE and self._matches(found, primary.fields, key) else default
        return self._mid.get(key, default)

    def _ordinals_of(self, i: int, fp: int, key: Any) -> tuple[Sequence[int] | None, Any]:
        """The mid's matches less the mid ordinals this overlay masks, merged with its own."""
        below, records = self._mid._ordinals_of(i, fp, key)
        overlay = self._overlay
        assert overlay is not None
        added = overlay.added[i].postings_of(fp)
        if added and not self._matches(overlay.record(added[0]), self.indexes[i].fields, key):
            added = None
        skipped = overlay.skipped[i].postings_of(fp) if below else None
        if not added and not skipped:
            return below, records
        kept = array("I")
        if below:
            rows = memoryview(below)  # type: ignore[arg-type]  # the mid's array, or the base's postings
            at = 0
            for o in skipped or ():
                pos = bisect.bisect_left(rows, o, at)
                if pos < len(rows) and rows[pos] == o:
                    kept.frombytes(rows[at:pos].cast("B"))
                    at = pos + 1
            kept.frombytes(rows[at:].cast("B"))
        return _merged(kept, overlay, added), _ByOrdinal(self)

    def _iter_merged(self) -> Iterator[Any]:
        holes = set(self.holes)
        base = self._records
        top, mid = self._overlay, self._mid._overlay
        assert top is not None
        t_ords = top.ordinals
        m_ords: Any = mid.ordinals if mid is not None else ()
        ti, tn, mi, mn = 0, len(t_ords), 0, len(m_ords)
        nt = t_ords[0] if tn else -1
        nm = m_ords[0] if mn else -1
        for o in range(self._size):
            if o == nt:
                yield top.record(ti)
                ti += 1
                nt = t_ords[ti] if ti < tn else -1
            elif o in holes:
                pass
            elif o == nm:
                yield mid.record(mi)  # type: ignore[union-attr]
            else:
                yield base[o]
            if o == nm:
                mi += 1
                nm = m_ords[mi] if mi < mn else -1

    def record_at(self, ordinal: int) -> Any:
        """The record at *ordinal* in this version (a hole reads as an empty record)."""
        e = self._overlay.entry_at(ordinal)  # type: ignore[union-attr]
        return self._overlay.record(e) if e >= 0 else self._mid.record_at(ordinal)  # type: ignore[union-attr]

    @property
    def mid(self) -> TypeView:
        """The view of the earlier version this one's overlay is over."""
        return self._mid


class _ByOrdinal:
    """A version's records by ordinal, through its view's :meth:`TypeView.record_at`."""

    __slots__ = ("_view",)

    def __init__(self, view: TypeView) -> None:
        self._view = view

    def __getitem__(self, ordinal: int) -> Any:
        return self._view.record_at(ordinal)


_MISSING = object()

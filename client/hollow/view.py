"""Record views: primary-key lookup, secondary-index find, iteration.

A :class:`TypeView` reads one record type of one version. Records are pycapnp
struct readers pointing straight into the mapping; index tables are
memoryviews of it. A lookup is a hash probe (an integer multiply and a modulo,
then one or two array reads) and one list access: no copy, no per-process
index building.

Records are valid as long as you hold them, but belong inside their snapshot's
block: after it ends the version may be reclaimed, and a record you kept reads
a version nobody announces any more.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

import xxhash

from hollow import layout
from hollow.errors import CorruptStateError

_M64 = layout.M64
_xxh3 = xxhash.xxh3_64_intdigest


def section(view: memoryview, sec: Any, size: int, fmt: str, *, what: str) -> memoryview:
    """A typed memoryview of one bounds-checked section of the file."""
    offset, length = sec.offset, sec.length
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
        self.fields = tuple(ix.fields)
        self.key_types = tuple(int(t.raw) if hasattr(t, "raw") else _KEY_TYPES[str(t)] for t in ix.fieldTypes)
        self.kind = layout.KIND_EXACT_INT if str(ix.kind) == "exactInt" else layout.KIND_HASHED
        self.unique = ix.unique
        self.capacity = ix.capacity
        self.slots = section(view, ix.slots, size, "Q", what=what)
        self.postings = section(view, ix.postings, size, "I", what=what)
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


_KEY_TYPES = {"int": layout.KEY_INT, "text": layout.KEY_TEXT, "data": layout.KEY_DATA, "bool": layout.KEY_BOOL}


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


_EMPTY = RecordList((), ())


class TypeView:
    """The records of one type in one version: ``get``, ``[key]``, ``len``, iteration, ``find``."""

    __slots__ = (
        "_cap",
        "_exact",
        "_holes",
        "_records",
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
        holes: memoryview,
        primary: IndexTable,
        indexes: list[IndexTable],
        *,
        content_hash: int = 0,
        schema: Any = None,
        what: str,
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
        self._holes = holes
        self._exact = primary.kind == layout.KIND_EXACT_INT
        single_text = primary.key_types == (layout.KEY_TEXT,)
        self._text_field = primary.fields[0] if single_text else None
        self._cap = primary.capacity
        self._slots = primary.slots

    # -- primary key --------------------------------------------------------

    def get(self, key: Any, default: Any = None) -> Any:
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
            while True:
                o = slots[2 * s + 1]
                if not o:
                    return default
                if slots[2 * s] == key:
                    return self._records[o - 1]
                s += 1
                if s == cap:
                    s = 0
        if type(key) is str and self._text_field is not None:
            # The other hot path: one Text key field. The table holds its hash; the record confirms.
            fp = _xxh3(key.encode())
            cap = self._cap
            s = fp % cap
            slots = self._slots
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
                    s = 0
        return self._get_hashed(key, default)

    def _get_hashed(self, key: Any, default: Any) -> Any:
        primary = self.primary
        try:
            fp = primary.fingerprint(key)
        except TypeError as e:
            raise TypeError(f"{self.name} primary key is {self._key_signature(primary)}: {e}") from None
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
        for value in index.probe(fp):
            start = (value & 0xFFFFFFFF) - 1
            ordinals = index.postings[start : start + (value >> 32)]
            if ordinals and self._matches(self._records[ordinals[0]], index.fields, key):
                return RecordList(self._records, ordinals)
        return _EMPTY

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
        if not len(self._holes):
            return iter(self._records)
        return self._iter_skipping_holes()

    def _iter_skipping_holes(self) -> Iterator[Any]:
        holes = set(self._holes)
        records = self._records
        for o in range(len(records)):
            if o not in holes:
                yield records[o]

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


_MISSING = object()

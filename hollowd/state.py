"""The state a cycle builds: records added by ``populate``, changes made by an incremental cycle.

:class:`WriteState` and :class:`Delta` only collect; all checking happens in
:func:`build_type`, over whole columns, so that the per-record cost of
``state.add`` is one append. A rejected record names its type, its primary key
(or its position in the input when the key itself is the problem) and the field.

Ordinals are kept stable across versions: a record that stays keeps its
ordinal, a removed record leaves a hole, and new records fill holes before the
list grows (Hollow does the same), so iteration order is stable and a future
delta touches only changed ordinals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xxhash

from hollow import layout
from hollowd import encoder, index, overlay
from hollowd.errors import MissingKeyError, SchemaError, ValidationError
from hollowd.overlay import MAX_HOLE_SHARE, Latest
from hollowd.schema import NamespaceSchema, RecordType


def as_dict(type_name: str, record: Any) -> dict[str, Any]:
    """A record as a dict: dicts as they are, Cap'n Proto builders and readers through ``to_dict``."""
    if type(record) is dict:
        return record
    if isinstance(record, Mapping):
        return dict(record)
    to_dict = getattr(record, "to_dict", None)
    if to_dict is None:
        raise ValidationError(
            f"{type_name}: a record must be a dict or a Cap'n Proto struct, got {type(record).__name__}",
            type_name=type_name,
        )
    return dict(to_dict())


@dataclass
class Lines:
    """Raw JSON Lines holding one record each, parsed only where a cycle needs the records.

    *parse* gives the records of the given line indexes, in that order, and names a bad
    line (``FILE:LINE``); a cycle that compares with the latest version parses only the
    lines whose bytes it has not seen (their change hash is the hash of the line).
    """

    lines: list[bytes]
    parse: Callable[[list[int]], list[dict[str, Any]]]


class WriteState:
    """What ``populate`` receives in a full cycle: ``state.add("Movie", {...})``."""

    def __init__(self, schema: NamespaceSchema) -> None:
        self._schema = schema
        self.records: dict[str, list[dict[str, Any]]] = {name: [] for name in schema.types}
        self.lines: dict[str, list[Lines]] = {name: [] for name in schema.types}

    def add_lines(self, type_name: str, lines: list[bytes], parse: Callable[[list[int]], list[dict[str, Any]]]) -> None:
        """Add one record per line of JSON (a JSON Lines source), parsed only if the cycle needs it."""
        if type_name not in self.lines:
            raise SchemaError(self._unknown(type_name))
        self.lines[type_name].append(Lines(lines, parse))

    def materialize(self, type_name: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Every record (of *type_name*, or of every type) as a dict, lines parsed: for a first
        build, or a type given both ways."""
        for name, batches in self.lines.items():
            if type_name is None or name == type_name:
                for batch in batches:
                    self.records[name].extend(batch.parse(list(range(len(batch.lines)))))
                batches.clear()
        return self.records

    def only_lines(self, type_name: str) -> bool:
        """Whether the type's records were all given as lines."""
        return bool(self.lines[type_name]) and not self.records[type_name]

    def add(self, type_name: str, record: Any) -> None:
        """Add one record (a dict, or a Cap'n Proto builder or reader of the type)."""
        try:
            bucket = self.records[type_name]
        except KeyError:
            raise SchemaError(self._unknown(type_name)) from None
        bucket.append(record if type(record) is dict else as_dict(type_name, record))

    def add_all(self, type_name: str, records: Iterable[Any]) -> None:
        """Add many records at once: the same as ``add`` for each, with less overhead per record."""
        try:
            bucket = self.records[type_name]
        except KeyError:
            raise SchemaError(self._unknown(type_name)) from None
        start = len(bucket)
        bucket.extend(records)
        added = bucket if not start else bucket[start:]  # no copy of a whole first batch
        if set(map(type, added)) - {dict}:
            bucket[start:] = [as_dict(type_name, r) for r in bucket[start:]]

    def _unknown(self, type_name: str) -> str:
        return f"unknown record type {type_name!r}; this namespace has: {', '.join(sorted(self._schema.types))}"


class Delta:
    """What ``run_incremental``'s function receives: ``upsert`` and ``remove`` by primary key."""

    def __init__(self, schema: NamespaceSchema) -> None:
        self._schema = schema
        self.upserts: dict[str, dict[Any, dict[str, Any]]] = {name: {} for name in schema.types}
        self.removals: dict[str, set[Any]] = {name: set() for name in schema.types}

    def upsert(self, type_name: str, record: Any) -> None:
        """Add the record, or replace the one with the same primary key."""
        rtype = self._schema.type(type_name)
        rec = record if type(record) is dict else as_dict(type_name, record)
        key = rtype.key_of(rec)
        if type(key) is not int and type(key) is not str:  # the common keys need no checking
            key = _hashable_key(rtype, key, None)
        self.removals[type_name].discard(key)
        self.upserts[type_name][key] = rec

    def remove(self, type_name: str, key: Any) -> None:
        """Remove the record with primary key *key* (a tuple for several fields); absent keys are ignored."""
        rtype = self._schema.type(type_name)
        key = _hashable_key(rtype, key, None)
        self.upserts[type_name].pop(key, None)
        self.removals[type_name].add(key)


def _hashable_key(rtype: RecordType, key: Any, position: int | None) -> Any:
    fields = rtype.primary.fields
    missing = [f for f, v in zip(fields, key if len(fields) > 1 else (key,), strict=True) if v is None]
    if missing:
        where = "" if position is None else f" at input position {position}"
        raise MissingKeyError(
            f"{rtype.name} record{where} has no primary key field {missing[0]!r} (primary key: {', '.join(fields)})",
            type_name=rtype.name,
            field=missing[0],
        )
    try:
        hash(key)
    except TypeError:
        raise ValidationError(
            f"{rtype.name} primary key {key!r} is not a valid key value", type_name=rtype.name
        ) from None
    return key


@dataclass
class BuiltType:
    """One type of a candidate base, encoded and indexed, ready to write."""

    rtype: RecordType
    count: int
    size: int  # ordinals, holes included
    table: bytes  # the records message: segment table
    segment: Any  # and segment
    holes: Any  # uint32 array
    content_hash: int
    primary: index.BuiltIndex
    secondary: list[index.BuiltIndex]
    hashes: Any = field(repr=False, default=None)  # uint64 per ordinal: change hashes (0: hole)
    merges: int = 0  # compactions by bytes since the records were last encoded whole


def build_type(
    rtype: RecordType,
    records: list[dict[str, Any]],
    previous: Latest | None,
    encoders: dict[str, encoder.RecordEncoder | encoder.BuilderEncoder],
    *,
    hashes: Any = None,
) -> BuiltType:
    """Check, order, encode and index every record of one type. Raises :class:`ValidationError`.

    Records that stay keep their ordinals in *previous* (the latest version);
    *hashes* are their change hashes when the caller computed them already.
    """
    columns = encoder.ColumnCache(records)
    exact = rtype.primary.kind == layout.KIND_EXACT_INT
    ints = columns.ints(rtype.primary.fields[0]) if exact else None
    if ints is not None:  # every key an int: their fingerprints are their 64 bits, no list of them made
        fps = ints.view(np.uint64)
        keys: Any = lambda: _keys(rtype, records, columns)  # noqa: E731 - only to name a repeated key
    else:
        keys = _keys(rtype, records, columns, seek_none=not exact)
        try:
            fps = full_fingerprints(rtype, keys)
        except ValidationError:
            if exact and None in keys:  # looked for only now: a scan of a million keys cost 0.1 s
                _hashable_key(rtype, None, keys.index(None))
            raise
    overlay.check_unique(rtype, keys, fps)
    ordinals, size, holes = _ordinals(fps, previous)
    if size == len(records) and (ordinals[1:] > ordinals[:-1]).all():
        by_ordinal: list[Any] = records  # ordinals are 0..n-1 in input order
    else:
        slots = np.full(size, None, dtype=object)
        slots[ordinals] = _object_array(records)
        by_ordinal = slots.tolist()
    enc = encoder_of(rtype, encoders)
    try:
        table, segment = enc.encode(by_ordinal, columns if by_ordinal is records else None)
    except encoder.EncodeError as e:
        raise record_error(rtype, by_ordinal[e.position], e.cause) from e.cause
    per_ordinal = np.zeros(size, dtype=np.uint64)
    per_ordinal[ordinals] = overlay.record_hashes(records) if hashes is None else hashes
    secondary = [secondary_fps(rtype, spec, records, columns) for spec in rtype.indexes]
    return assemble(
        rtype, table, segment, size, np.asarray(holes, dtype=np.uint32), per_ordinal, fps, ordinals, secondary
    )


def assemble(
    rtype: RecordType,
    table: bytes,
    segment: Any,
    size: int,
    holes: Any,
    hashes: Any,
    key_fps: Any,
    ordinals: Any,
    value_fps: list[Any],
    *,
    merges: int = 0,
) -> BuiltType:
    """A base type from its records message and, for each live record, its ordinal and fingerprints."""
    h = xxhash.xxh3_64()
    for part in (table, segment, holes.tobytes()):
        h.update(part)
    primary = index.build_unique(rtype.primary, key_fps, ordinals)
    secondary = [index.build_multi(spec, fps, ordinals) for spec, fps in zip(rtype.indexes, value_fps, strict=True)]
    return BuiltType(
        rtype, len(ordinals), size, table, segment, holes, h.intdigest(), primary, secondary, hashes, merges
    )


def encoder_of(
    rtype: RecordType, encoders: dict[str, encoder.RecordEncoder | encoder.BuilderEncoder]
) -> encoder.RecordEncoder | encoder.BuilderEncoder:
    """The type's encoder, made once per producer."""
    enc = encoders.get(rtype.name)
    if enc is None:
        enc = encoders[rtype.name] = encoder.encoder_for(rtype.schema)
    return enc


def _object_array(items: list[Any]) -> Any:
    """A 1-d numpy object array of *items* (numpy would otherwise look inside dicts and tuples)."""
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr


def full_keys(rtype: RecordType, records: list[dict[str, Any]], positions: list[int] | None = None) -> list[Any]:
    """The primary key of every record (a full cycle's input, or the records at input *positions*
    of it); a record without one is named by its input position."""
    return _keys(rtype, records, encoder.ColumnCache(records), positions)


def full_fingerprints(rtype: RecordType, keys: list[Any], positions: list[int] | None = None) -> Any:
    """The primary-key fingerprint of every key; a key of the wrong type is named with its position."""
    return overlay.fingerprints(rtype, keys, positions=True if positions is None else positions)


def _keys(
    rtype: RecordType,
    records: list[dict[str, Any]],
    columns: encoder.ColumnCache,
    positions: list[int] | None = None,
    *,
    seek_none: bool = True,
) -> list[Any]:
    """The primary keys of *records*; a missing one is named by its position. *seek_none* False
    leaves a single field's None to the caller (integer fingerprints refuse it anyway)."""
    fields = rtype.primary.fields
    if len(fields) == 1:
        name = fields[0]
        keys = columns.get(name)
        if keys is None:
            keys = [d.get(name) if isinstance(d, Mapping) else None for d in records]
        if seek_none and None in keys:
            at = keys.index(None)
            _hashable_key(rtype, None, at if positions is None else positions[at])
        return keys
    tuples = [tuple(d.get(f) if isinstance(d, Mapping) else None for f in fields) for d in records]
    for i, k in enumerate(tuples):
        if None in k:
            _hashable_key(rtype, k, i if positions is None else positions[i])
    return list(tuples)


def _ordinals(fps: Any, previous: Latest | None) -> tuple[Any, int, Any]:
    """Ordinal of each record (input order), list size, and sorted holes: all vector work.

    Records whose key the latest version has keep its ordinal; new ones take
    the lowest free ordinals, then grow the list. Once holes pass
    :data:`MAX_HOLE_SHARE`, ordinals are renumbered in their order (iteration
    order stays; the holes go).
    """
    n = len(fps)
    if previous is None:
        return np.arange(n, dtype=np.int64), n, np.zeros(0, dtype=np.int64)
    old_fps, old_ords = previous.live_keys()
    by_fp = np.argsort(old_fps)
    sorted_fps, sorted_ords = old_fps[by_fp], old_ords[by_fp]
    at = np.searchsorted(sorted_fps, fps)
    at[at >= len(sorted_fps)] = max(len(sorted_fps) - 1, 0)
    found = sorted_fps[at] == fps if len(sorted_fps) else np.zeros(n, dtype=bool)
    ordinals = np.where(found, sorted_ords[at] if len(sorted_ords) else -1, -1).astype(np.int64)
    freed = np.setdiff1d(old_ords, ordinals[found])
    free = np.union1d(previous.holes, freed)
    fresh = np.flatnonzero(~found)
    take = min(len(fresh), len(free))
    size = previous.size
    ordinals[fresh[:take]] = free[:take]
    ordinals[fresh[take:]] = size + np.arange(len(fresh) - take)
    size += len(fresh) - take
    holes, size = overlay.trim_holes(free[take:], size)
    if len(holes) > MAX_HOLE_SHARE * size:
        return np.argsort(np.argsort(ordinals, kind="stable"), kind="stable"), n, np.zeros(0, dtype=np.int64)
    return ordinals, size, holes


def secondary_fps(rtype: RecordType, spec: Any, records: list[dict[str, Any]], columns: encoder.ColumnCache) -> Any:
    """The value fingerprint of each record for one secondary index (an absent field files under its default)."""
    defaults = [_field_default(rtype, f) for f in spec.fields]
    try:  # index keys repeat: each distinct value is fingerprinted once, then gathered
        if len(spec.fields) == 1:
            name, default = spec.fields[0], defaults[0]
            coded = columns.codes(name)  # the distinct values the encoder interned the column by
            if coded is None:  # some record lacks the field (or a value is not hashable: raised here)
                values = [d.get(name) for d in records]
                coded = encoder.distinct_codes(values, len(values))
            known, codes = coded
            known = [default if v is None else v for v in known]
        else:
            pairs = list(zip(spec.fields, defaults, strict=True))
            values = [tuple(default if (v := d.get(f)) is None else v for f, default in pairs) for d in records]
            known, codes = encoder.distinct_codes(values, len(values))
        return index.fingerprints(spec, known)[codes]
    except TypeError as e:
        raise ValidationError(
            f"{rtype.name}: index on {', '.join(spec.fields)}: {e}", type_name=rtype.name, field=spec.fields[0]
        ) from None


def _field_default(rtype: RecordType, name: str) -> Any:
    """What a reader sees for an absent field (what an index must file the record under)."""
    value = rtype.schema.fields[name].proto.slot.defaultValue
    return getattr(value, value.which())


def record_error(rtype: RecordType, record: Any, cause: BaseException) -> ValidationError:
    """The error naming a record the encoder refused, its key and the field."""
    key = rtype.key_of(record) if isinstance(record, Mapping) else None
    problem = encoder.diagnose(rtype.schema, record)
    if problem is None:
        problem = ("(record)", f"{type(cause).__name__}: {cause}")
    where, what = problem
    return ValidationError(
        f"{rtype.name} {_key_text(rtype, key)}: field {where!r}: {what}",
        type_name=rtype.name,
        key=key,
        field=where,
    )


def _key_text(rtype: RecordType, key: Any) -> str:
    fields = rtype.primary.fields
    if len(fields) == 1:
        return f"{fields[0]}={key!r}"
    return "(" + ", ".join(f"{f}={k!r}" for f, k in zip(fields, key, strict=True)) + ")"


PopulateFn = Callable[[WriteState], Any]
IncrementalFn = Callable[[Delta], Any]

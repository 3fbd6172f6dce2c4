"""Encode record dicts as Cap'n Proto, at a few microseconds a record.

pycapnp's builders cost about a microsecond per field set (6 s for a million
six-field records, 23 s through ``from_dict``), which alone would exceed a
cycle's budget. So the producer writes the wire format itself (capnproto.org
"Encoding"), from the struct layouts the compiler computed: for each struct
type a Python function is generated once that packs a record's data section
and pointers with one ``struct.pack_into``. Objects go to a heap after the
list; equal Text values and equal lists of Text are stored once and pointed
to from every record that has them (Cap'n Proto allows shared targets; readers
cannot tell), which interns repetitive text for free.

Every output is read back by pycapnp before it is announced (the producer's
verify step), and types using features this encoder does not write (unions,
groups, AnyPointer) are encoded through pycapnp's builders instead.

The encoder validates only as a side effect (``struct`` rejects out-of-range
integers, ``str.encode`` non-strings); when a record fails, :func:`diagnose`
walks it slowly to name the field and the problem.
"""

from __future__ import annotations

import operator
import re
import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import chain, repeat
from operator import itemgetter
from typing import Any

import capnp
import numpy as np

from hollow import schema as reader_schema
from hollowd import sorting

if sys.byteorder != "little":  # pragma: no cover - Cap'n Proto is little-endian; so are our hosts
    raise ImportError("hollowd's encoder writes little-endian words and needs a little-endian host")

_MISSING = object()
_ZPAD = [bytes(k) for k in range(9)]
_OFFSET_MASK = 0x3FFFFFFF
_MAX_WORDS = 1 << 29  # list and offset fields: 29-30 bits of words

# capnp type name -> (struct format char, size in bytes)
_PRIM = {
    "int8": ("b", 1),
    "int16": ("h", 2),
    "int32": ("i", 4),
    "int64": ("q", 8),
    "uint8": ("B", 1),
    "uint16": ("H", 2),
    "uint32": ("I", 4),
    "uint64": ("Q", 8),
    "float32": ("f", 4),
    "float64": ("d", 8),
    "enum": ("H", 2),
}
_BITS_FMT = {"f": "I", "d": "Q"}
_ELSIZE = {1: 2, 2: 3, 4: 4, 8: 5}  # element bytes -> capnp element-size code
_INT_CODES = frozenset("bhiqBHIQ")
_ARRAY_CODE = {"b": "b", "h": "h", "i": "i", "q": "q", "B": "B", "H": "H", "I": "I", "Q": "Q", "f": "f", "d": "d"}


class Unsupported(Exception):  # noqa: N818 - control flow, never escapes the producer
    """The schema uses a feature the fast encoder does not write."""


class EncodeError(Exception):
    """Record *position* could not be encoded; *cause* says how (run :func:`diagnose` for why)."""

    def __init__(self, position: int, cause: BaseException) -> None:
        super().__init__(position, cause)
        self.position = position
        self.cause = cause


class _UnknownField(Exception):  # noqa: N818 - control flow
    pass


class _BadValue(Exception):  # noqa: N818 - control flow
    pass


def _ptr(target: int, ppos: int, elsize: int, count: int) -> int:
    """A list pointer at byte *ppos* to a list at byte *target*."""
    if count >= _MAX_WORDS:
        raise OverflowError("list too long for one Cap'n Proto segment")
    return (((((target - ppos) >> 3) - 1) & _OFFSET_MASK) << 2) | 1 | (elsize << 32) | (count << 35)


# --- element descriptors ------------------------------------------------------
# A hashable description of a field's or list element's type:
#   ("prim", fmt, size) ("enum", id) ("bool",) ("text",) ("data",) ("void",)
#   ("struct", id) ("list", elem)


def _describe(typ: Any, schema: Any, structs: dict[int, Any], enums: dict[int, dict[str, int]]) -> tuple[Any, ...]:
    kind = typ.which()
    if kind in _PRIM and kind != "enum":
        return ("prim", *_PRIM[kind])
    if kind in ("bool", "text", "data", "void"):
        return (kind,)
    if kind == "enum":
        enums[typ.enum.typeId] = dict(schema.enumerants)
        return ("enum", typ.enum.typeId)
    if kind == "struct":
        structs.setdefault(typ.struct.typeId, schema)
        return ("struct", typ.struct.typeId)
    if kind == "list":
        elem = typ.list.elementType
        inner = schema.elementType if elem.which() in ("struct", "enum", "list") else None
        return ("list", _describe(elem, inner, structs, enums))
    raise Unsupported(f"{kind} fields")


@dataclass(frozen=True)
class _Field:
    """How the columnar path writes one top-level field."""

    kind: str  # "data" (a number or enum), "bool" or "pointer"
    code: str = ""  # array/struct type code of a data field
    dtype: str = ""  # its numpy dtype
    offset: int = 0  # byte offset in the data section (bit offset for a bool)
    default: Any = 0
    enum: dict[str, int] | None = None
    ptr_index: int = 0

    @classmethod
    def scalar(cls, desc: tuple[Any, ...], offset: int, default: Any, enums: dict[int, dict[str, int]]) -> _Field:
        if desc[0] == "bool":
            return cls("bool", offset=offset, default=default)
        if desc[0] == "enum":
            return cls("data", "H", "<u2", offset, default, enums[desc[1]])
        code = desc[1]
        return cls("data", code, _DTYPE[code], offset, default)


_DTYPE = {
    "b": "i1",
    "h": "<i2",
    "i": "<i4",
    "q": "<i8",
    "B": "u1",
    "H": "<u2",
    "I": "<u4",
    "Q": "<u8",
    "f": "<f4",
    "d": "<f8",
}


class _StructPlan:
    """A compiled struct layout and the generated functions that encode one record of it.

    Two functions are generated. The fast one takes every field with one
    ``itemgetter`` call and packs the record with one ``pack_into``; it only
    handles records that carry every field with a non-None value. Anything else
    (a missing or None field, or a value it cannot pack) goes to the slow one,
    which reads fields one by one and raises on bad values.
    """

    def __init__(self, schema: Any, structs: dict[int, Any], enums: dict[int, dict[str, int]]) -> None:
        node = schema.node
        self.type_id = node.id
        self.name = node.displayName[node.displayNamePrefixLength :]
        self.data_words = node.struct.dataWordCount
        self.ptr_count = node.struct.pointerCount
        self.words = self.data_words + self.ptr_count
        if node.struct.discriminantCount:
            raise Unsupported(f"{self.name}: unions")
        #: field index -> element descriptor, for every pointer field
        self.pointers: dict[int, tuple[Any, ...]] = {}
        self.constants: dict[str, Any] = {}
        self.source = self._generate(schema, structs, enums)
        namespace: dict[str, Any] = {"_M": _MISSING, "_Unknown": _UnknownField, "_bool": _bool, "_fxor": _fxor}
        namespace["_S"] = struct.Struct(self.fmt)
        namespace["_G"] = self.itemgetter = operator.itemgetter(*self.getter) if self.getter else (lambda d: ())
        namespace.update(self.constants)
        exec(compile(self.source, f"<hollowd encoder {self.name}>", "exec"), namespace)  # noqa: S102
        self.make: Callable[..., Callable[[Mapping[str, Any], int], None]] = namespace["_make"]

    def _generate(self, schema: Any, structs: dict[int, Any], enums: dict[int, dict[str, int]]) -> str:
        data: list[tuple[int, str, str]] = []  # (byte offset, fmt, expression of v<i>)
        bools: dict[int, list[str]] = {}
        ptrs: dict[int, str] = {}
        slow: list[str] = []
        slow_data: list[tuple[int, str, str]] = []
        slow_bools: dict[int, list[str]] = {}
        self.getter: list[str] = []
        self.columns: list[tuple[int, _Field]] = []
        for i, field in enumerate(schema.fields_list):
            proto = field.proto
            if proto.which() != "slot":
                raise Unsupported(f"{self.name}.{proto.name}: groups")
            name, slot = proto.name, proto.slot
            kind = slot.type.which()
            desc = _describe(slot.type, field.schema if kind in ("struct", "enum", "list") else None, structs, enums)
            slow.append(f"v = d.get({name!r}, _M)\nif v is not _M:\n    n += 1")
            if desc[0] == "void":
                continue
            self.getter.append(name)
            var = f"v{i}"
            if desc[0] in ("prim", "enum", "bool"):
                conv, fmt, offset = self._scalar(desc, slot, i, enums)
                self.columns.append((i, _Field.scalar(desc, offset, _default(slot), enums)))
                if desc[0] == "bool":
                    bools.setdefault(offset // 8, []).append(f"({conv} << {offset % 8})")
                    slow_bools.setdefault(offset // 8, []).append(f"({_none_safe(conv)} << {offset % 8})")
                else:
                    data.append((offset, fmt, conv))
                    slow_data.append((offset, fmt, _none_safe(conv)))
                slow.append(f"{var} = None if v is _M else v")
            else:
                self.pointers[i] = desc
                self.columns.append((i, _Field("pointer", ptr_index=slot.offset)))
                ptrs[slot.offset] = f"P{i}({var}, pos + {(self.data_words + slot.offset) * 8})"
                slow.append(f"{var} = None if v is _M else v")
        for byte, parts in bools.items():
            data.append((byte, "B", " | ".join(parts)))
            slow_data.append((byte, "B", " | ".join(slow_bools[byte])))
        self.fmt = _data_format(data, self.data_words) + "Q" * self.ptr_count
        pointer_values = [ptrs.get(j, "0") for j in range(self.ptr_count)]
        fast_values = [expr for _, _, expr in sorted(data)] + pointer_values
        # The slow path maps None (absent) to the stored zero, which reads as the default.
        slow_values = [expr for _, _, expr in sorted(slow_data)] + [_none_safe(e) for e in pointer_values]
        names = ", ".join(f"v{i}" for i in self._getter_indexes(schema))
        unpack = f"{names} = _G(d)" if len(self.getter) == 1 else f"{names}, = _G(d)" if names else "_G(d)"
        binds = "".join(f"    P{i} = P[{i}]\n" for i in self.pointers)
        return (
            "def _make(buf, P):\n"
            "    pack = _S.pack_into\n"
            f"{binds}"
            "    def slow(d, pos):\n"
            "        n = 0\n"
            + "".join("        " + line.replace("\n", "\n        ") + "\n" for line in slow)
            + "        if n != len(d):\n            raise _Unknown\n"
            f"        pack(buf, pos{''.join(', ' + v for v in slow_values)})\n"
            "    def encode(d, pos):\n"
            "        try:\n"
            f"            {unpack}\n"
            f"            if len(d) == {len(self.getter)}:\n"
            f"                pack(buf, pos{''.join(', ' + v for v in fast_values)})\n"
            "                return\n"
            "        except Exception:\n"
            "            pass\n"
            "        slow(d, pos)\n"
            "    return encode\n"
        )

    @staticmethod
    def _getter_indexes(schema: Any) -> list[int]:
        return [
            i
            for i, f in enumerate(schema.fields_list)
            if f.proto.which() == "slot" and f.proto.slot.type.which() != "void"
        ]

    def _scalar(
        self, desc: tuple[Any, ...], slot: Any, i: int, enums: dict[int, dict[str, int]]
    ) -> tuple[str, str, int]:
        """(expression, struct format, byte offset, or bit offset for a bool) of a data field."""
        var = f"v{i}"
        default = _default(slot)
        if desc[0] == "bool":
            return (f"(_bool({var}) ^ {int(bool(default))})", "", slot.offset)
        fmt, size = ("H", 2) if desc[0] == "enum" else (desc[1], desc[2])
        conv = var
        if desc[0] == "enum":
            self.constants[f"_E{i}"] = enums[desc[1]]
            conv = f"(_E{i}[{var}] if type({var}) is str else {var})"
        if default:
            if fmt in _BITS_FMT:
                self.constants[f"_D{i}"] = default
                conv = f"_fxor({conv}, {fmt!r}, _D{i})"
                fmt = _BITS_FMT[fmt]
            else:
                conv = f"({conv} ^ {default})"
        return conv, fmt, slot.offset * size


def _none_safe(expr: str) -> str:
    """Wrap a value expression so that a None field packs as zero (the default)."""
    names = sorted(set(re.findall(r"\bv\d+\b", expr)))
    if not names:
        return expr
    return f"(0 if {names[0]} is None else {expr})"


def _default(slot: Any) -> Any:
    if not slot.hadExplicitDefault:
        return 0
    value = slot.defaultValue
    v = getattr(value, value.which())
    if slot.type.which() == "enum":
        return int(value.enum)
    return v


def _data_format(data: list[tuple[int, str, str]], words: int) -> str:
    fmt, at = "<", 0
    for offset, f, _ in sorted(data):
        if offset > at:
            fmt += f"{offset - at}x"
        fmt += f
        at = offset + struct.calcsize("<" + f)
    if words * 8 > at:
        fmt += f"{words * 8 - at}x"
    return fmt


def _bool(v: Any) -> int:
    if v is True:
        return 1
    if v is False:
        return 0
    raise _BadValue


def _fxor(v: Any, fmt: str, default: float) -> int:
    bits = _BITS_FMT[fmt]
    (a,) = struct.unpack("<" + bits, struct.pack("<" + fmt, v))
    (b,) = struct.unpack("<" + bits, struct.pack("<" + fmt, default))
    return int(a ^ b)


class RecordEncoder:
    """Encodes a list of record dicts (None for a hole) of one struct type as one message.

    The message's root is ``Records`` (hollow.capnp) whose ``list`` is the
    List(T); its bytes are the 8-byte segment table followed by the segment.
    """

    def __init__(self, schema: Any) -> None:
        self.schema = schema
        structs: dict[int, Any] = {schema.node.id: schema}
        enums: dict[int, dict[str, int]] = {}
        self.plans: dict[int, _StructPlan] = {}
        pending = [schema.node.id]
        while pending:
            sid = pending.pop()
            if sid in self.plans:
                continue
            self.plans[sid] = _StructPlan(structs[sid], structs, enums)
            pending.extend(k for k in structs if k not in self.plans)
        self.top = self.plans[schema.node.id]
        self.enums = enums

    def encode(
        self, records: list[Mapping[str, Any] | None], columns: ColumnCache | None = None
    ) -> tuple[bytes, bytearray]:
        """Return (segment table, segment). Raises :class:`EncodeError` for the first bad record.

        *columns*, when given, caches columns of this very list (see :class:`ColumnCache`).

        Tries the columnar path first (whole columns through ``array`` and
        numpy); any record it cannot take makes the whole list go record by
        record, which is slower and names the bad record. Which path runs
        depends only on the data, so equal data always gives equal bytes.
        """
        top = self.top
        n = len(records)
        if n * top.words >= _MAX_WORDS or n >= _OFFSET_MASK:
            raise OverflowError(f"{n} records of {top.name} exceed one Cap'n Proto segment")
        buf = self._start(n)
        try:
            _Columns(self, buf, records, columns).encode()
        except _Fallback:
            buf = self._start(n)
            self._encode_rows(buf, records)
        if len(buf) % 8:
            raise AssertionError("segment not word-aligned")  # pragma: no cover
        return struct.pack("<II", 0, len(buf) // 8), buf

    def _start(self, n: int) -> bytearray:
        top = self.top
        buf = bytearray(24 + n * top.words * 8)
        struct.pack_into(
            "<QQQ",
            buf,
            0,
            1 << 48,  # root: a struct with no data and one pointer, right after
            _ptr(16, 8, 7, n * top.words),
            (n << 2) | (top.data_words << 32) | (top.ptr_count << 48),
        )
        return buf

    def _encode_rows(self, buf: bytearray, records: list[Mapping[str, Any] | None]) -> None:
        enc = _bind(buf, self.plans, self.enums, {})[self.schema.node.id]
        size = self.top.words * 8
        pos = 24
        for i, d in enumerate(records):
            if d is not None:
                try:
                    enc(d, pos)
                except Exception as e:
                    raise EncodeError(i, e) from e
            pos += size


class ColumnCache:
    """Whole columns of a list of record dicts, each taken once (one C-level pass per field).

    ``get(name)`` is None when some record lacks the field or is not a dict. ``ints(name)`` is
    the column as integers (int64, or uint64 when a value needs it), converted once and, when the
    column was not taken as a list, straight from the records: an integer key is then looked at
    once for its fingerprint and its encoding, where taking it, converting it for each, and
    freeing the list touched every value four times (0.2 s each for 1M shuffled ids).
    Shared by key checking, index building and the encoder's columnar path.
    """

    def __init__(self, records: list[Any]) -> None:
        self.records = records
        self._columns: dict[str, list[Any] | None] = {}
        self._ints: dict[str, Any] = {}
        self._codes: dict[str, tuple[list[Any], Any] | None] = {}

    def get(self, name: str) -> list[Any] | None:
        if name not in self._columns:
            try:
                self._columns[name] = list(map(itemgetter(name), self.records))
            except (KeyError, TypeError):
                self._columns[name] = None
        return self._columns[name]

    def codes(self, name: str) -> tuple[list[Any], Any] | None:
        """:func:`distinct_codes` of the column, made once; None when it cannot be taken, or a value
        is not hashable."""
        if name not in self._codes:
            col = self.get(name)
            try:
                self._codes[name] = None if col is None else distinct_codes(col, len(col))
            except TypeError:
                self._codes[name] = None
        return self._codes[name]

    def ints(self, name: str) -> Any:
        """The column as an int64 (or uint64) array; None when a value is not an int (a None, a
        float, a str...), is out of 64-bit range, or some record lacks the field."""
        if name not in self._ints:
            self._ints[name] = None
            for code, dtype in (("q", np.int64), ("Q", np.uint64)):  # signed first, as index.fingerprints
                col = self._columns.get(name)
                try:
                    values = array(code, map(itemgetter(name), self.records) if col is None else col)
                except OverflowError:
                    continue
                except (KeyError, TypeError):
                    break
                self._ints[name] = np.frombuffer(values, dtype=dtype) if len(values) else np.zeros(0, dtype)
                break
        return self._ints[name]


def distinct_codes(values: Iterable[Any], count: int = -1) -> tuple[list[Any], Any]:
    """The distinct values in order of first appearance, and each value's number among them (an
    int64 vector): one dict of the distinct values, one C-level pass (``map`` takes the dict's
    length, its next number, before it calls ``setdefault`` with the value). Equal values are one
    (``1``, ``1.0`` and ``True`` too, as in any dict). *count* is how many values there are, if known
    (numpy's ``fromiter`` then makes its vector once). TypeError when a value is not hashable."""
    seen: dict[Any, int] = {}
    codes = np.fromiter(map(seen.setdefault, values, map(len, repeat(seen))), dtype=np.int64, count=count)
    return list(seen), codes


class _Fallback(Exception):  # noqa: N818 - control flow
    """The columnar path cannot take this input; encode record by record."""


class _Columns:
    """The columnar path: each top-level field of every record at once.

    Scalars go through ``array`` (which rejects wrong types and out-of-range
    values like ``struct`` does; integers once per column, straight from the
    records: ``ColumnCache.ints``) into a strided numpy view of the list. Text
    that repeats is interned by :func:`distinct_codes` and its pointers computed
    as a vector. Lists of Text are interned per distinct list, by vectors of
    string ids. Other pointer fields use the per-record encoders, one column at
    a time.
    """

    def __init__(
        self,
        encoder: RecordEncoder,
        buf: bytearray,
        records: list[Mapping[str, Any] | None],
        columns: ColumnCache | None = None,
    ) -> None:
        self.enc, self.buf, self.top = encoder, buf, encoder.top
        self.n = len(records)
        self.types = set(map(type, records))  # one pass: holes, and whether every record is a dict
        holes = type(None) in self.types
        self.types.discard(type(None))
        if holes:
            self.ordinals: Any = np.fromiter((i for i, r in enumerate(records) if r is not None), np.int64)
            self.records = [r for r in records if r is not None]
        else:
            self.ordinals = np.arange(self.n, dtype=np.int64)
            self.records = records  # type: ignore[assignment]
        self.columns = columns if columns is not None and not holes else ColumnCache(self.records)
        self._ppos: Any = None

    def encode(self) -> None:
        top, recs = self.top, self.records
        if not recs:
            return
        if self.types != {dict} or set(map(len, recs)) != {len(top.getter)}:
            raise _Fallback  # not all plain dicts with exactly the schema's fields
        pointer_cols: list[tuple[int, int, list[Any], str]] = []
        for (i, field), name in zip(top.columns, top.getter, strict=True):
            if field.kind == "pointer":
                pointer_cols.append((i, field.ptr_index, self._column(name), name))
            else:
                self._data_column(field, name)
        self.tcache: dict[str, tuple[int, int]] = {}
        row_encoders = None
        for i, slot, col, name in pointer_cols:
            desc = top.pointers[i]
            if desc[0] == "text":
                self._text_column(slot, col, name)
            elif desc == ("list", ("text",)):
                self._text_lists(slot, col)
            else:
                if row_encoders is None:
                    row_encoders = _bind(self.buf, self.enc.plans, self.enc.enums, self.tcache, pointers_only=True)
                self._row_pointers(slot, col, row_encoders[i])

    # -- helpers --------------------------------------------------------------

    def _column(self, name: str) -> list[Any]:
        col = self.columns.get(name)  # one pass per field beats rows + transpose
        if col is None:
            raise _Fallback
        return col

    def _data_column(self, field: _Field, name: str) -> None:
        if field.kind == "data" and field.code in _INT_CODES and field.enum is None:
            ints = self.columns.ints(name)  # no list of the column, when its values are all ints
            if ints is not None:
                self._ints(field, ints)
                return
        if field.kind == "data":
            self._scalars(field, self._column(name))
        else:
            self._bools(field, self._column(name))

    def _view(self, byte_offset: int, dtype: str) -> Any:
        """A strided view of one field across every live record."""
        stride = self.top.words * 8
        return np.ndarray(shape=(self.n,), dtype=dtype, buffer=self.buf, offset=24 + byte_offset, strides=(stride,))

    def _put(self, byte_offset: int, dtype: str, values: Any) -> None:
        view = self._view(byte_offset, dtype)
        if len(self.records) == self.n:
            view[:] = values
        else:
            view[self.ordinals] = values

    def _scalars(self, field: _Field, col: list[Any]) -> None:
        if field.enum is not None:
            names = field.enum
            try:
                col = [names[v] if type(v) is str else v for v in col]
            except KeyError:
                raise _Fallback from None
        default = field.default
        try:
            arr = array(field.code, col)
        except TypeError:  # a None (absent: the default), or a value of the wrong type
            if None not in col:  # scanned for only now: a scan of a million keys cost 0.1 s
                raise _Fallback from None
            col = [default if v is None else v for v in col]
            try:
                arr = array(field.code, col)
            except (TypeError, OverflowError, ValueError):
                raise _Fallback from None
        except (OverflowError, ValueError):
            raise _Fallback from None
        values = np.frombuffer(arr, dtype=field.dtype) if len(arr) else np.zeros(0, field.dtype)
        if field.code in "fd":
            overflow = field.code == "f" and np.isinf(values).any()
            if overflow and (np.isinf(values) & ~np.isinf(np.array(col, dtype=np.float64))).any():
                raise _Fallback  # a finite value overflowed Float32; the row path names it
            if default:
                bits = "<u4" if field.code == "f" else "<u8"
                values = values.view(bits) ^ np.array([default], dtype=field.dtype).view(bits)[0]
                self._put(field.offset, bits, values)
                return
        elif default:
            values = values ^ np.array(default, dtype=field.dtype)
        self._put(field.offset, field.dtype, values)

    def _ints(self, field: _Field, values: Any) -> None:
        """An integer column given as an int64 or uint64 array: range-checked as ``array`` would."""
        limits = np.iinfo(field.dtype)
        if len(values) and (int(values.min()) < limits.min or int(values.max()) > limits.max):
            raise _Fallback  # out of the field's range: the row path names the record
        values = values.astype(field.dtype, copy=False)
        if field.default:
            values = values ^ np.array(field.default, dtype=field.dtype)
        self._put(field.offset, field.dtype, values)

    def _bools(self, field: _Field, col: list[Any]) -> None:
        if None in col:
            col = [bool(field.default) if v is None else v for v in col]
        if not set(map(type, col)) <= {bool}:
            raise _Fallback
        bits = np.array(col, dtype=np.uint8) ^ np.uint8(bool(field.default))
        view = self._view(field.offset // 8, "u1")
        target = view if len(self.records) == self.n else view[self.ordinals]
        merged = target | (bits << np.uint8(field.offset % 8))
        self._put(field.offset // 8, "u1", merged)

    def _text_column(self, slot: int, col: list[Any], name: str | None = None) -> None:
        """Write a Text column: in order when its values are mostly distinct, else once per value.

        A None (absent) is looked for only once writing the column as it is has failed, before
        anything was written. *name* is the column's in the column cache, whose distinct values
        the secondary indexes share."""
        null = None
        try:
            starts, lens = self._texts(col, name)
        except _Fallback:
            if None not in col:
                raise
            null = np.fromiter((v is None for v in col), dtype=bool, count=len(col))
            starts, lens = self._texts(["" if v is None else v for v in col])
        self._pointer_column(slot, starts, lens + 1, 2, null)

    def _texts(self, col: list[Any], name: str | None = None) -> tuple[Any, Any]:
        """Write the Text values of a column (*name*'s in the column cache, if given); return each
        one's byte position and length. Raises :class:`_Fallback`, having written nothing, when
        one is not a str."""
        sample = col[:4096]
        try:
            if len(set(sample)) > len(sample) // 2:
                starts, lens = self._write_strings(col)
            else:
                coded = self.columns.codes(name) if name is not None else None
                distinct, which = coded if coded is not None else distinct_codes(col, len(col))
                d_starts, d_lens = self._write_strings(distinct)
                starts, lens = d_starts[which], d_lens[which]
        except (TypeError, UnicodeEncodeError):
            raise _Fallback from None
        return starts, lens

    def _write_strings(self, strings: list[str]) -> tuple[Any, Any]:
        """Append strings as Cap'n Proto Text blobs; return their byte positions and lengths.

        All-ASCII columns (the common case) are encoded with one ``join`` and
        scattered into their word-aligned places by numpy; others one by one.
        """
        try:
            lens = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
            sizes = ((lens >> 3) + 1) << 3  # room for the NUL, rounded up to a word
            raw = "".join(map(str.ljust, strings, sizes.tolist(), repeat("\0"))).encode()
        except (TypeError, UnicodeEncodeError):
            raise _Fallback from None
        if len(raw) != int(sizes.sum()):  # some text is not ASCII: byte lengths differ
            return self._write_blobs(list(map(str.encode, strings)))
        base = len(self.buf)
        self.buf.extend(raw)
        return base + np.cumsum(sizes) - sizes, lens

    def _write_blobs(self, encoded: list[bytes]) -> tuple[Any, Any]:
        """Append NUL-terminated, word-padded blobs; return their byte positions and lengths."""
        lens = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        pads = 8 - (lens & 7)
        sizes = lens + pads
        starts = len(self.buf) + np.cumsum(sizes) - sizes
        self.buf.extend(b"".join(chain.from_iterable(zip(encoded, map(_ZPAD.__getitem__, pads.tolist()), strict=True))))
        return starts, lens

    def _pointer_column(self, slot: int, targets: Any, counts: Any, elsize: int, null: Any | None) -> None:
        if self._ppos is None:  # each live record's byte position: the same for every pointer field
            self._ppos = 24 + self.ordinals * (self.top.words * 8)
        words = np.subtract(targets, self._ppos, dtype=np.int64)  # one new vector, the rest in place
        words -= (self.top.data_words + slot) * 8
        words >>= 3
        words -= 1
        words &= _OFFSET_MASK
        words <<= 2
        words |= 1 | (elsize << 32)
        words = words.view(np.uint64)
        shifted = counts.astype(np.uint64)
        shifted <<= np.uint64(35)
        words |= shifted
        if null is not None:
            words[null] = 0
        self._put((self.top.data_words + slot) * 8, "<u8", words)

    def _text_lists(self, slot: int, col: list[Any]) -> None:
        """Write a List(Text) column: each distinct list once, each distinct string once.

        Interned exactly, and without a tuple a record: each string gets an id (one dict of the
        distinct strings, one C-level pass over all elements), each list is packed into a 64-bit
        key of its ids (one vector step per element position, the longest list's length), and
        the keys are grouped by one sort (:func:`_groups`). Lists too long beside the others, or
        too many distinct strings for the packing, are interned through a tuple a record instead
        (:func:`_lists_by_tuples`); both give the same bytes. Lists are interned even when a sample
        of them looks distinct: 1M lists of 2-3 of 49 words look distinct 4,096 at a time, and not
        interning them made the file 15% larger (docs/decisions.md §70, §120)."""
        types = set(map(type, col))
        if not types <= {list, tuple, type(None)}:
            raise _Fallback
        null = None
        if type(None) in types:
            null = np.fromiter((v is None for v in col), dtype=bool, count=len(col))
            col = [() if v is None else v for v in col]
        lens = np.fromiter(map(len, col), dtype=np.int64, count=len(col))
        try:  # each element's id: its string's number in order of first appearance
            strings, ids = distinct_codes(chain.from_iterable(col), int(lens.sum()))
        except TypeError:  # an element that is not even hashable: the row path names it
            raise _Fallback from None
        lists = _distinct_lists(ids, lens, len(strings))
        if lists is None:
            which, counts, per_record = _lists_by_tuples(col, strings)
        else:
            rows, per_record = lists
            counts = lens[rows]
            starts = np.cumsum(lens) - lens
            which = ids[np.repeat(starts[rows] - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))]
        try:
            s_starts, s_lens = self._write_strings(strings)
        except TypeError:
            raise _Fallback from None
        area = len(self.buf)
        self.buf.extend(bytes(8 * len(which)))
        at = area + 8 * np.arange(len(which), dtype=np.int64)
        offsets = ((s_starts[which] - at) >> 3) - 1
        words = ((offsets & _OFFSET_MASK) << 2).astype(np.uint64) | np.uint64(0x200000001)
        words |= (s_lens[which] + 1).astype(np.uint64) << np.uint64(35)
        if len(which):
            np.frombuffer(self.buf, dtype="<u8", count=len(which), offset=area)[:] = words
        list_at = area + 8 * (np.cumsum(counts) - counts)
        self._pointer_column(slot, list_at[per_record], counts[per_record], 6, null)

    def _row_pointers(self, slot: int, col: list[Any], fn: Any) -> None:
        base = 24 + (self.top.data_words + slot) * 8
        stride = self.top.words * 8
        try:
            words = [
                0 if v is None else fn(v, base + o * stride) for v, o in zip(col, self.ordinals.tolist(), strict=True)
            ]
        except Exception:  # noqa: BLE001 - the row path names the bad record
            raise _Fallback from None
        self._put((self.top.data_words + slot) * 8, "<u8", np.array(words, dtype=np.uint64))


def _lists_by_tuples(col: list[Any], strings: list[Any]) -> tuple[Any, Any, Any]:
    """Each distinct list (a tuple a record, a dict of the tuples): the string ids of the distinct
    lists one after another in order of first appearance, each one's length, each record's list.
    The ids are positions in *strings* (the distinct strings in order of first appearance), as
    :func:`_distinct_lists` gives them."""
    keys = list(map(tuple, col))
    distinct = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    dense = {s: i for i, s in enumerate(strings)}
    flat = list(chain.from_iterable(distinct))
    which = np.fromiter(map(dense.__getitem__, flat), dtype=np.int64, count=len(flat))
    counts = np.fromiter(map(len, distinct), dtype=np.int64, count=len(distinct))
    per_record = np.fromiter(map(distinct.__getitem__, keys), dtype=np.int64, count=len(keys))
    return which, counts, per_record


def _distinct_lists(ids: Any, lens: Any, nstrings: int) -> tuple[Any, Any] | None:
    """The distinct lists among lists given as their elements' ids (*ids*, all lists one after
    another, each id below *nstrings*) and lengths (*lens*), as vectors: the first record of each
    distinct list in order of first appearance, and each record's distinct list.

    Each list becomes a key of its ids + 1 (0 pads a shorter list), several ids a 64-bit word;
    when the next id does not fit, the keys so far are replaced by their group numbers
    (:func:`_groups`), which need only as many bits as there are records. None when one
    element position's pass costs more than four times the elements (a list far longer than the
    others), or when the ids do not fit beside a group number: the caller interns by tuples."""
    n = len(lens)
    longest = int(lens.max()) if n else 0
    if n * longest > 4 * (len(ids) + n):
        return None
    bits = nstrings.bit_length()
    nbits = max(n - 1, 1).bit_length()  # a record's index, sorted below its key
    room = 64 - nbits
    if bits > room - nbits:
        return None
    at = np.cumsum(lens) - lens  # where each list starts, then its j-th element
    padded = np.zeros(len(ids) + longest, dtype=np.uint64)
    np.add(ids, 1, out=padded[: len(ids)], casting="unsafe")
    key = np.zeros(n, dtype=np.uint64)
    column = np.empty(n, dtype=np.uint64)
    present = np.empty(n, dtype=bool)
    used = 0
    for j in range(longest):
        if used + bits > room:
            key = _groups(key, nbits)[0].astype(np.uint64)
            used = nbits
        np.take(padded, at, out=column)
        np.greater(lens, j, out=present)
        column *= present  # past a list's end: the next list's ids, cleared
        key <<= np.uint64(bits)
        key |= column
        at += 1
        used += bits
    group, first = _groups(key, nbits)
    order = np.argsort(first)  # the distinct lists in order of first appearance
    rank = np.empty(len(first), dtype=np.int64)
    rank[order] = np.arange(len(first), dtype=np.int64)
    return first[order], rank[group]


def _groups(key: Any, nbits: int) -> tuple[Any, Any]:
    """Equal keys grouped, by one sort: each key's group (groups in ascending key order) and the
    first index of each group. Every key is below ``2 ** (64 - nbits)``, *nbits* the bits of an
    index (:func:`hollowd.sorting.stable_order`)."""
    n = len(key)
    order, ordered = sorting.stable_order(key, 1 << (64 - nbits))
    new = sorting.run_starts(ordered)
    group = np.empty(n, dtype=np.int64)
    group[order] = np.cumsum(new) - 1
    return group, order[new]


def _bind(
    buf: bytearray,
    plans: dict[int, _StructPlan],
    enums: dict[int, dict[str, int]],
    tcache: dict[str, tuple[int, int]],
    *,
    pointers_only: bool = False,
) -> dict[Any, Any]:
    """Instantiate every encoder of one message around its buffer.

    Text is interned: stored once per distinct value, *tcache* mapping each
    value to its (byte position, length with NUL). Returns the record
    encoders by struct id or, with *pointers_only*, the top-level type's
    pointer-field encoders by field index.
    """
    ext = buf.extend

    def text(v: str, ppos: int) -> int:
        t = tcache.get(v)
        if t is None:
            b = v.encode()
            tpos = len(buf)
            n = len(b)
            ext(b)
            ext(_ZPAD[8 - (n & 7)])  # the NUL, then up to the next word
            t = tcache[v] = (tpos, n + 1)
        return (((((t[0] - ppos) >> 3) - 1) & _OFFSET_MASK) << 2) | 0x200000001 | (t[1] << 35)

    def data(v: Any, ppos: int) -> int:
        if type(v) is not bytes:
            if not isinstance(v, (bytearray, memoryview)):
                raise _BadValue
            v = bytes(v)
        tpos = len(buf)
        n = len(v)
        ext(v)
        ext(_ZPAD[-n & 7])
        return _ptr(tpos, ppos, 2, n)

    fns: dict[Any, Any] = {}
    ctx = _ListContext(buf, text, data, fns, enums)
    raw: dict[int, Any] = {}
    top: dict[int, Any] = {}
    for sid, plan in plans.items():
        pointers: dict[int, Any] = {}
        top = top or pointers
        for i, desc in plan.pointers.items():
            if desc[0] == "text":
                pointers[i] = text
            elif desc[0] == "data":
                pointers[i] = data
            elif desc[0] == "struct":
                pointers[i] = _late(fns, desc[1])
            else:
                pointers[i] = ctx.encoder(desc)
        raw[sid] = plan.make(buf, pointers)
        fns[sid] = _struct_pointer(buf, raw[sid], plan)
        fns["raw", sid] = raw[sid]
        fns["words", sid] = plan.words
        fns["tail", sid] = (plan.data_words << 32) | (plan.ptr_count << 48)
    return top if pointers_only else raw


def _late(fns: dict[Any, Any], sid: int) -> Callable[[Any, int], int]:
    """A struct-pointer encoder looked up at call time (struct types may refer to each other)."""

    def pointer(v: Any, ppos: int) -> int:
        return int(fns[sid](v, ppos))

    return pointer


def _struct_pointer(buf: bytearray, enc: Any, plan: _StructPlan) -> Callable[[Any, int], int]:
    zeros = bytes(plan.words * 8)
    plan_tail: int = (plan.data_words << 32) | (plan.ptr_count << 48)

    def pointer(v: Any, ppos: int) -> int:
        if type(v) is not dict:
            raise _BadValue
        spos = len(buf)
        buf.extend(zeros)
        enc(v, spos)
        tail: int = plan_tail
        if not plan.words:
            return (_OFFSET_MASK << 2) | tail  # zero-sized structs point at offset -1
        return (((((spos - ppos) >> 3) - 1) & _OFFSET_MASK) << 2) | tail

    return pointer


class _ListContext:
    """Builds list encoders (closures over one message's buffer) from element descriptors."""

    def __init__(
        self, buf: bytearray, text: Any, data: Any, fns: dict[Any, Any], enums: dict[int, dict[str, int]]
    ) -> None:
        self.buf, self.text, self.data, self.fns, self.enums = buf, text, data, fns, enums

    def encoder(self, desc: tuple[Any, ...]) -> Callable[[Any, int], int]:
        elem = desc[1]
        kind = elem[0]
        if kind in ("prim", "enum"):
            return self._primitive(elem)
        if kind == "bool":
            return self._bools()
        if kind == "void":
            return self._voids()
        if kind == "struct":
            return self._structs(elem[1])
        inner = {"text": self.text, "data": self.data}.get(kind) or self.encoder(elem)
        return self._pointers(inner, intern=kind == "text")

    def _primitive(self, elem: tuple[Any, ...]) -> Callable[[Any, int], int]:
        buf = self.buf
        code, size = ("H", 2) if elem[0] == "enum" else (_ARRAY_CODE[elem[1]], elem[2])
        names = self.enums.get(elem[1], {}) if elem[0] == "enum" else None
        if code == "q" and array("q").itemsize != 8:  # pragma: no cover
            raise Unsupported("64-bit arrays")

        def encode(v: Any, ppos: int) -> int:
            if type(v) is not list and type(v) is not tuple:
                raise _BadValue
            if names is not None:
                v = [names[x] if type(x) is str else x for x in v]
            raw = array(code, v).tobytes()
            lpos = len(buf)
            buf.extend(raw)
            buf.extend(_ZPAD[-len(raw) & 7])
            return _ptr(lpos, ppos, _ELSIZE[size], len(v))

        return encode

    def _bools(self) -> Callable[[Any, int], int]:
        buf = self.buf

        def encode(v: Any, ppos: int) -> int:
            if type(v) is not list and type(v) is not tuple:
                raise _BadValue
            bits = 0
            for i, x in enumerate(v):
                bits |= _bool(x) << i
            raw = bits.to_bytes((len(v) + 7) // 8, "little")
            lpos = len(buf)
            buf.extend(raw)
            buf.extend(_ZPAD[-len(raw) & 7])
            return _ptr(lpos, ppos, 1, len(v))

        return encode

    def _voids(self) -> Callable[[Any, int], int]:
        def encode(v: Any, ppos: int) -> int:
            if type(v) is not list and type(v) is not tuple:
                raise _BadValue
            return _ptr(ppos + 8, ppos, 0, len(v))

        return encode

    def _structs(self, sid: int) -> Callable[[Any, int], int]:
        buf, fns = self.buf, self.fns

        def encode(v: Any, ppos: int) -> int:
            if type(v) is not list and type(v) is not tuple:
                raise _BadValue
            enc, words, tail = fns["raw", sid], fns["words", sid], fns["tail", sid]
            n = len(v)
            lpos = len(buf)
            buf.extend(bytes(8 + n * words * 8))
            struct.pack_into("<Q", buf, lpos, (n << 2) | tail)
            at = lpos + 8
            for d in v:
                if type(d) is not dict:
                    raise _BadValue
                enc(d, at)
                at += words * 8
            return _ptr(lpos, ppos, 7, n * words)

        return encode

    def _pointers(self, inner: Any, *, intern: bool) -> Callable[[Any, int], int]:
        buf = self.buf
        cache: dict[tuple[Any, ...], tuple[int, int]] = {}

        def encode(v: Any, ppos: int) -> int:
            if type(v) is not list and type(v) is not tuple:
                raise _BadValue
            key = tuple(v) if intern else None
            hit = cache.get(key) if key is not None else None
            if hit is None:
                n = len(v)
                lpos = len(buf)
                buf.extend(bytes(8 * n))
                ptrs = [inner(x, lpos + 8 * i) for i, x in enumerate(v)]
                struct.pack_into(f"<{n}Q", buf, lpos, *ptrs)
                hit = (lpos, n)
                if key is not None:
                    cache[key] = hit
            return _ptr(hit[0], ppos, 6, hit[1])

        return encode


class BuilderEncoder:
    """The slow path, for schemas the fast encoder cannot write: pycapnp's own builders."""

    def __init__(self, schema: Any) -> None:
        self.schema = schema

    def encode(self, records: list[Mapping[str, Any] | None], columns: Any = None) -> tuple[bytes, bytes]:
        del columns  # builders take whole records
        env = reader_schema.envelope()
        message = env.Records.new_message()
        lst = message.list.init_as_list(capnp._ListSchema(self.schema), len(records))
        for i, d in enumerate(records):
            if d is not None:
                try:
                    lst[i] = {k: v for k, v in d.items() if v is not None}  # None: absent
                except Exception as e:
                    raise EncodeError(i, e) from e
        segments = message.to_segments()
        table = struct.pack(f"<I{len(segments)}I", len(segments) - 1, *(len(s) // 8 for s in segments))
        table += _ZPAD[-len(table) & 7]
        return table, b"".join(segments)


def encoder_for(schema: Any) -> RecordEncoder | BuilderEncoder:
    """The fast encoder for *schema*, or pycapnp's builders when it uses unions, groups or AnyPointer."""
    try:
        return RecordEncoder(schema)
    except Unsupported:
        return BuilderEncoder(schema)


# --- naming what is wrong with a record ----------------------------------------------

_INT_RANGES = {
    "int8": (-(1 << 7), (1 << 7) - 1),
    "int16": (-(1 << 15), (1 << 15) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
    "uint8": (0, (1 << 8) - 1),
    "uint16": (0, (1 << 16) - 1),
    "uint32": (0, (1 << 32) - 1),
    "uint64": (0, (1 << 64) - 1),
}
_TYPE_NAMES = {k: k.capitalize().replace("Uint", "UInt") for k in _INT_RANGES} | {
    "float32": "Float32",
    "float64": "Float64",
    "bool": "Bool",
    "text": "Text",
    "data": "Data",
}


def diagnose(schema: Any, record: Any, path: str = "") -> tuple[str, str] | None:
    """The first problem with *record* as a value of struct *schema*: (field path, what is wrong).

    None when nothing is found (then the encoder's own exception is the best account).
    """
    if not isinstance(record, Mapping):
        return (path or "(record)", f"expected a dict, got {type(record).__name__}")
    fields = {f.proto.name: f for f in schema.fields_list}
    for name in record:
        if name not in fields:
            where = f"{path}.{name}" if path else str(name)
            return (where, f"unknown field; {schema.node.displayName.split(':')[-1]} has: {', '.join(fields)}")
    for name, value in record.items():
        if value is None:
            continue
        field = fields[name]
        where = f"{path}.{name}" if path else name
        proto = field.proto
        if proto.which() != "slot":
            continue  # groups: left to pycapnp
        problem = _check_value(proto.slot.type, _field_schema(field), value, where)
        if problem:
            return problem
    return None


def _field_schema(field: Any) -> Any:
    try:
        return field.schema
    except capnp.KjException:
        return None  # primitive types have no schema object


def _check_value(typ: Any, schema: Any, value: Any, where: str) -> tuple[str, str] | None:  # noqa: PLR0911, PLR0912 - one branch per Cap'n Proto type
    kind = typ.which()
    got = f"got {type(value).__name__} {value!r}"[:120]
    if kind in _INT_RANGES:
        lo, hi = _INT_RANGES[kind]
        if type(value) is not int and type(value) is not bool:
            return (where, f"expected {_TYPE_NAMES[kind]} (an int), {got}")
        if not lo <= value <= hi:
            return (where, f"{value} is out of range for {_TYPE_NAMES[kind]} ({lo}..{hi})")
        return None
    if kind in ("float32", "float64"):
        if not isinstance(value, (int, float)):
            return (where, f"expected {_TYPE_NAMES[kind]} (a float), {got}")
        if kind == "float32":
            try:
                struct.pack("<f", value)
            except OverflowError:
                return (where, f"{value} is out of range for Float32")
        return None
    if kind == "bool":
        return None if type(value) is bool else (where, f"expected Bool, {got}")
    if kind == "text":
        if not isinstance(value, str):
            return (where, f"expected Text (a str), {got}")
        try:
            value.encode()
        except UnicodeEncodeError as e:
            return (where, f"not encodable as UTF-8 ({e.reason} at character {e.start}), {got}")
        return None
    if kind == "data":
        return None if isinstance(value, (bytes, bytearray, memoryview)) else (where, f"expected Data (bytes), {got}")
    if kind == "enum":
        names = dict(schema.enumerants)
        if isinstance(value, str) and value not in names:
            return (where, f"{value!r} is not one of {', '.join(names)}")
        if not isinstance(value, (str, int)):
            return (where, f"expected an enumerant name, {got}")
        return None
    if kind == "struct":
        return diagnose(schema, value, where)
    if kind == "list":
        if not isinstance(value, (list, tuple)):
            return (where, f"expected a list, {got}")
        elem = typ.list.elementType
        elem_schema = schema.elementType if elem.which() in ("struct", "enum", "list") else None
        for i, v in enumerate(value):
            problem = _check_value(elem, elem_schema, v, f"{where}[{i}]")
            if problem:
                return problem
        return None
    return None

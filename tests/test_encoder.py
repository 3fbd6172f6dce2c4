"""The producer's own Cap'n Proto encoder against pycapnp's builders.

Both of its paths (whole columns, and record by record) must produce messages
that pycapnp reads back exactly as it reads what its own builders wrote, for
every field kind, explicit defaults (stored XOR-ed), absent and None fields.
"""

from __future__ import annotations

import gc
import struct
from pathlib import Path
from typing import Any
from unittest import mock

import capnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hollow import schema as reader_schema
from hollowd import encoder

SCHEMA = Path(__file__).resolve().parent / "schemas" / "everything.capnp"
MODULE = reader_schema.load_schema_file(SCHEMA)
THING = MODULE.Thing.schema


def _read(table: bytes, segment: Any) -> list[dict[str, Any]]:
    message = reader_schema.read_message(bytes(table) + bytes(segment))
    records = message.get_root(reader_schema.envelope().Records).list.as_list(capnp._ListSchema(THING))
    return [r.to_dict() for r in records]


def _f32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


ints = {
    "int64": st.integers(-(2**63), 2**63 - 1),
    "int32": st.integers(-(2**31), 2**31 - 1),
    "int16": st.integers(-(2**15), 2**15 - 1),
    "int8": st.integers(-128, 127),
    "uint64": st.integers(0, 2**64 - 1),
    "uint8": st.integers(0, 255),
}
text = st.text(max_size=12)
person = st.fixed_dictionaries({}, optional={"name": text, "age": ints["uint8"]})
FIELDS: dict[str, Any] = {
    "flag": st.booleans(),
    "count": ints["int32"],
    "ratio": st.floats(-1e30, 1e30, allow_nan=False).map(_f32),
    "name": text,
    "color": st.sampled_from(["red", "green", "blue"]),
    "other": st.booleans(),
    "nums": st.lists(ints["int16"], max_size=4),
    "bits": st.lists(st.booleans(), max_size=10),
    "colors": st.lists(st.sampled_from(["red", "green", "blue"]), max_size=3),
    "blobs": st.lists(st.binary(max_size=9), max_size=3),
    "nested": st.lists(st.lists(text, max_size=3), max_size=3),
    "d": st.binary(max_size=20),
    "big": ints["uint64"],
    "neg": ints["int8"],
    "owner": person,
    "people": st.lists(person, max_size=3),
    "score": st.floats(allow_nan=False, allow_infinity=False),
    "tags": st.lists(st.sampled_from(["a", "b", "ccc", "Ωmega"]), max_size=3),
}
complete = st.fixed_dictionaries({"id": ints["int64"], **FIELDS})
partial = st.fixed_dictionaries({"id": ints["int64"]}, optional={**FIELDS, "name": st.none() | text})


def _builder_encoding(records: list[dict[str, Any] | None]) -> list[dict[str, Any]]:
    without_none = [None if r is None else {k: v for k, v in r.items() if v is not None} for r in records]
    return _read(*encoder.BuilderEncoder(THING).encode(without_none))


@settings(max_examples=60, deadline=None)
@given(st.lists(complete, min_size=1, max_size=6), st.lists(st.booleans(), min_size=6, max_size=6))
def test_columnar_path_matches_pycapnp(records: list[dict[str, Any]], holes: list[bool]) -> None:
    with_holes: list[dict[str, Any] | None] = [None if h else r for r, h in zip(records, holes, strict=False)]
    enc = encoder.RecordEncoder(THING)
    buf = enc._start(len(with_holes))
    encoder._Columns(enc, buf, with_holes).encode()  # raises _Fallback if the columnar path refused
    assert _read(struct.pack("<II", 0, len(buf) // 8), buf) == _builder_encoding(with_holes)


with_nones = st.fixed_dictionaries({"id": ints["int64"], **{k: st.none() | v for k, v in FIELDS.items()}})


@settings(max_examples=60, deadline=None)
@given(st.lists(with_nones, min_size=1, max_size=6))
def test_columnar_path_takes_none_as_absent(records: list[dict[str, Any]]) -> None:
    """Every field present, any of them None (absent): still the columnar path, which looks for the
    None only after a column's plain conversion failed (issue 10), and reads as pycapnp writes it."""
    enc = encoder.RecordEncoder(THING)
    buf = enc._start(len(records))
    encoder._Columns(enc, buf, list(records)).encode()  # raises _Fallback if the columnar path refused
    assert _read(struct.pack("<II", 0, len(buf) // 8), buf) == _builder_encoding(list(records))


@settings(max_examples=60, deadline=None)
@given(st.lists(partial, min_size=1, max_size=6))
def test_record_path_matches_pycapnp(records: list[dict[str, Any]]) -> None:
    table, segment = encoder.RecordEncoder(THING).encode(list(records))
    assert _read(table, segment) == _builder_encoding(list(records))


def test_repeated_text_is_stored_once() -> None:
    records = [{"id": i, "name": "the same long name, again and again", "tags": ["x", "y"]} for i in range(1000)]
    table, segment = encoder.RecordEncoder(THING).encode(records)
    per_record = len(segment) / len(records)
    assert per_record < THING.node.struct.dataWordCount * 8 + THING.node.struct.pointerCount * 8 + 8
    assert _read(table, segment)[999]["name"] == "the same long name, again and again"


def test_equal_input_gives_equal_bytes() -> None:
    records = [{"id": i, "name": f"n{i % 7}", "nums": [i, -i]} for i in range(100)]
    assert encoder.RecordEncoder(THING).encode(records) == encoder.RecordEncoder(THING).encode(list(records))


def test_diagnose_names_nested_field() -> None:
    bad = {"id": 1, "people": [{"name": "a"}, {"name": "b", "age": 300}]}
    assert encoder.diagnose(THING, bad) == ("people[1].age", "300 is out of range for UInt8 (0..255)")
    assert encoder.diagnose(THING, {"id": 1, "colour": "red"})[0] == "colour"
    assert encoder.diagnose(THING, {"id": 1, "color": "mauve"}) == ("color", "'mauve' is not one of red, green, blue")


def test_lists_of_text_read_back_whether_they_repeat_or_not() -> None:
    """Lists of Text that mostly differ and lists that repeat (stored once): every list, an empty
    one, a None and non-ASCII text read back as pycapnp's builders write them (issue 10)."""
    words = ["a", "bb", "ccc", "Ωmega", ""]
    rest = {
        "flag": True, "count": 1, "ratio": 0.5, "name": "n", "color": "red", "other": False, "nums": [1],
        "bits": [True], "colors": ["red"], "blobs": [b"x"], "nested": [["a"]], "d": b"d", "big": 1, "neg": -1,
        "owner": {"name": "o"}, "people": [], "score": 1.0,
    }  # fmt: skip
    distinct = [{"id": i, **rest, "tags": [words[i % 5], f"t{i}", words[i // 5 % 5]][: i % 4]} for i in range(5000)]
    repeating = [{"id": i, **rest, "tags": [words[i % 5], words[i % 3]][: i % 3]} for i in range(5000)]
    for records in (distinct, repeating):
        records[7]["tags"] = None
        records[4999]["tags"] = []
        enc = encoder.RecordEncoder(THING)
        buf = enc._start(len(records))
        encoder._Columns(enc, buf, list(records)).encode()  # raises _Fallback if the columnar path refused
        assert _read(struct.pack("<II", 0, len(buf) // 8), buf) == _builder_encoding(records)
    segment = encoder.RecordEncoder(THING).encode(repeating)[1]
    assert len(segment) < len(encoder.RecordEncoder(THING).encode(distinct)[1])  # repeated lists stored once


def _tags_records(tags: list[Any]) -> list[dict[str, Any]]:
    rest = {
        "flag": True, "count": 1, "ratio": 0.5, "name": "n", "color": "red", "other": False, "nums": [1],
        "bits": [True], "colors": ["red"], "blobs": [b"x"], "nested": [["a"]], "d": b"d", "big": 1, "neg": -1,
        "owner": {"name": "o"}, "people": [], "score": 1.0,
    }  # fmt: skip
    return [{"id": i, **rest, "tags": t} for i, t in enumerate(tags)]


def _columnar(records: list[dict[str, Any] | None]) -> bytearray:
    enc = encoder.RecordEncoder(THING)
    buf = enc._start(len(records))
    encoder._Columns(enc, buf, list(records)).encode()  # raises _Fallback if the columnar path refused
    return buf


word = st.sampled_from(["a", "bb", "ccc", "Ωmega", "", "a\0b"]) | st.text(max_size=4)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.none() | st.lists(word, max_size=8) | st.lists(word, max_size=2).map(tuple), min_size=1, max_size=40),
    st.sampled_from([0, 3, 8]),
)
def test_lists_of_text_interned_as_vectors_give_the_bytes_tuples_give(tags: list[Any], repeat: int) -> None:
    """A List(Text) column interned by packed vectors of string ids (issue 10) writes exactly the
    bytes interning by a tuple a record writes, for repeated, distinct, empty and None lists, and
    reads back as pycapnp's builders write it."""
    records = _tags_records(tags + tags[:repeat])
    vectors = _columnar(records)
    assert _read(struct.pack("<II", 0, len(vectors) // 8), vectors) == _builder_encoding(list(records))
    with mock.patch.object(encoder, "_distinct_lists", return_value=None):  # the tuple path
        assert _columnar(records) == vectors


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 40), max_size=9), min_size=1, max_size=60),
    st.sampled_from([41, 1 << 12, 1 << 40]),
)
def test_distinct_lists_are_found_exactly(lists: list[list[int]], nstrings: int) -> None:
    """The packed keys find the distinct lists (in order of first appearance) and each list's, also
    when the ids do not fit in one word (groups numbered between element positions) or cannot be
    packed at all (None: the caller interns by tuples)."""
    ids = np.array([x for lst in lists for x in lst], dtype=np.int64)
    lens = np.array([len(lst) for lst in lists], dtype=np.int64)
    found = encoder._distinct_lists(ids, lens, nstrings)
    nbits = max(len(lists) - 1, 1).bit_length()
    longest = max(map(len, lists))
    if nstrings.bit_length() > 64 - 2 * nbits or len(lists) * longest > 4 * (len(ids) + len(lists)):
        assert found is None
        return
    assert found is not None
    distinct = {k: i for i, k in enumerate(dict.fromkeys(map(tuple, lists)))}
    first = {k: i for i, k in reversed(list(enumerate(map(tuple, lists))))}
    assert found[0].tolist() == [first[k] for k in distinct]
    assert found[1].tolist() == [distinct[tuple(lst)] for lst in lists]


def test_a_list_far_longer_than_the_others_is_interned_by_tuples() -> None:
    lists = [[1, 2]] * 50 + [list(range(1000))]
    ids = np.array([x for lst in lists for x in lst], dtype=np.int64)
    assert encoder._distinct_lists(ids, np.array([len(x) for x in lists]), 1000) is None
    records = _tags_records([[f"w{x}" for x in lst] for lst in lists])
    buf = _columnar(records)
    assert _read(struct.pack("<II", 0, len(buf) // 8), buf) == _builder_encoding(list(records))


def test_lists_of_text_are_interned_without_an_object_a_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """While a List(Text) column is written, the Python objects alive are a few per distinct string,
    not a tuple per record (issue 10: 1M tuples, their dict and a lookup each were 1.1 s of a first
    build). Counted by the collector's allocation count, the collector off."""
    words = [f"word{i}" for i in range(50)]
    records = _tags_records([[words[i % 50], words[i * 7 % 50], words[i % 3]][: 1 + i % 3] for i in range(20_000)])
    alive: list[int] = []
    real_lists, real_pointers = encoder._Columns._text_lists, encoder._Columns._pointer_column

    def lists(self: Any, slot: int, col: list[Any]) -> None:
        alive.append(gc.get_count()[0])
        real_lists(self, slot, col)

    def pointers(self: Any, slot: int, targets: Any, counts: Any, elsize: int, null: Any) -> None:
        if elsize == 6 and len(alive) == 1:
            alive.append(gc.get_count()[0])  # the column's work done, its locals still alive
        real_pointers(self, slot, targets, counts, elsize, null)

    monkeypatch.setattr(encoder._Columns, "_text_lists", lists)
    monkeypatch.setattr(encoder._Columns, "_pointer_column", pointers)
    gc.collect()
    gc.disable()
    try:
        _columnar(records)
    finally:
        gc.enable()
    assert len(alive) == 2
    assert alive[1] - alive[0] < 1000  # the tuple a record made it 20,000 and more


@pytest.mark.parametrize(
    ("values", "expect"),
    [
        ([1, -2, 3], ("int64", [1, -2, 3])),
        ([0, 2**63, 2**64 - 1], ("uint64", [0, 2**63, 2**64 - 1])),
        ([True, 2], ("int64", [1, 2])),
        ([1, None], None),
        ([1, 1.5], None),
        ([1, "2"], None),
        ([-1, 2**63], None),
        ([2**64], None),
        ([], ("int64", [])),
    ],
)
def test_an_integer_column_is_converted_once_as_array_converts_it(values: list[Any], expect: Any) -> None:
    """``ColumnCache.ints``: the column as 64-bit integers straight from the records (no list of it),
    or None where ``array`` refuses a value, and the same array for the next user (the key's
    fingerprints, then the encoder)."""
    cache = encoder.ColumnCache([{"k": v} for v in values])
    got = cache.ints("k")
    if expect is None:
        assert got is None
    else:
        assert (str(got.dtype), got.tolist()) == expect
    assert cache.ints("k") is got
    assert cache._columns == {}  # never taken as a list
    assert encoder.ColumnCache([{"k": 1}, {}]).ints("k") is None  # a record without the field


def test_distinct_codes_number_values_in_order_of_first_appearance() -> None:
    distinct, codes = encoder.distinct_codes(["b", "a", "b", None, "c", "a"])
    assert distinct == ["b", "a", None, "c"]
    assert codes.tolist() == [0, 1, 0, 2, 3, 1]
    with pytest.raises(TypeError):
        encoder.distinct_codes([["unhashable"]])

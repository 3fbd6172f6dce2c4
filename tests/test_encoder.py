"""The producer's own Cap'n Proto encoder against pycapnp's builders.

Both of its paths (whole columns, and record by record) must produce messages
that pycapnp reads back exactly as it reads what its own builders wrote, for
every field kind, explicit defaults (stored XOR-ed), absent and None fields.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import capnp
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

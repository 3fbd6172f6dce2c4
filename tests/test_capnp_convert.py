"""Conformance: what the producer publishes decodes, in the reference implementation, to what was published.

The C++ ``capnp`` tool (Debian's ``capnproto``) reads each type's records section of a
published state file straight from its bytes, through a wrapper schema whose root
``struct RecordsOf<T> { list @0 :List(T); }`` has the layout of hollow.capnp's
``Records`` (one pointer, no data words), and prints it as JSON with
``capnp convert binary:json``. The JSON is compared, field by field, with the records
given to the producer, as a reader sees them: absent and None fields read as their
schema defaults, floats as stored (Float32 after rounding to 32 bits). No pycapnp
builder is involved, so this checks hollowd's own encoder, both of its paths: a first
version whose records all carry every field is encoded column by column, any other
record by record (so is the second version, which has holes).

``capnp`` must be on PATH: ``.ci/run`` installs it; elsewhere the test is skipped
(``apt-get install capnproto`` to run it), except under CI, where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hollow import schema as reader_schema
from hollow.state import StateFile
from hollowd import Producer
from tests.helpers import f32

SCHEMAS = Path(__file__).resolve().parent / "schemas"
SCHEMA = SCHEMAS / "conformance.capnp"
NAMESPACE = "conformance"
KEYS = {"Item": "id", "Label": "code"}
MODULE = reader_schema.load_schema_file(SCHEMA)
STRUCTS = {name: getattr(MODULE, name).schema for name in KEYS}
INTS = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}


@pytest.fixture(scope="module")
def tool() -> str:
    """The path of the reference ``capnp`` tool; skips the test without it, or fails it under CI."""
    path = shutil.which("capnp")
    if path is None:
        reason = "the reference tool `capnp` is not on PATH (Debian: apt-get install capnproto; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason + ", and CI is set")
        pytest.skip(reason)
    return path


def record_messages(path: Path, type_name: str) -> list[tuple[bytes, dict[int, int]]]:
    """Every records message a version of *type_name* is read from, each with the ordinals it supplies.

    Each is a standalone Cap'n Proto message (segment table included) whose root is
    hollow.capnp's ``Records``; the map sends a list position to the version's ordinal.
    A base supplies its live, unmasked ordinals; each chunk of an overlay (format 4)
    the entries that refer to it. This is the one place that knows where the file
    keeps them: adapt it when the format changes.
    """
    state = StateFile(path, namespace=NAMESPACE)
    view = state.type(type_name)
    base = state.base or state
    section = base._type_states[type_name].records
    holes = set(view.holes.tolist())
    ov = view.overlay
    masked: set[int] = set()
    chunks: list[tuple[bytes, dict[int, int]]] = []
    if ov is not None:
        ts = state._type_states[type_name].overlay
        masked = set(state.array(ts.masked, "Q", what="masked").tolist())
        by_chunk: dict[int, dict[int, int]] = {}
        for ordinal, ref in zip(ov.ordinals.tolist(), ov.refs.tolist(), strict=True):
            by_chunk.setdefault(ref >> 32, {})[ref & 0xFFFFFFFF] = ordinal
        for i, sec in enumerate(ts.chunks):
            chunks.append((bytes(state.raw(sec, what="chunk")), by_chunk.get(i, {})))
    base_view = base.type(type_name)
    live = {o: o for o in range(base_view.size) if o not in holes and o not in masked and o < view.size}
    if ov is None:
        live = {o: o for o in range(view.size) if o not in holes}
    return [(bytes(base.raw(section, what="records")), live), *chunks]


# --- what a reader sees, in one canonical form for both sides ---------------------------
#
# Text as str, Data as bytes, 64-bit integers as int (the JSON has them as strings),
# floats as repr() (exact, keeps -0.0 apart from 0.0, and nan equal to nan; Float32
# rounded to 32 bits first), enums by name, structs as dicts of every field.


def canon(typ: Any, schema: Any, value: Any) -> Any:
    """*value* (given to the producer, or parsed from capnp's JSON) of Cap'n Proto type *typ*, canonical."""
    kind = typ.which()
    if kind in INTS:
        return int(value)
    if kind == "float32":
        return repr(f32(float(value)))
    if kind == "float64":
        return repr(float(value))
    if kind == "bool":
        assert isinstance(value, bool), value
        return value
    if kind == "text":
        assert isinstance(value, str), value
        return value
    if kind == "data":
        return bytes(value)
    if kind == "enum":
        if isinstance(value, str):
            return value
        return {v: k for k, v in schema.enumerants.items()}[value]
    if kind == "void":
        assert value is None, value
        return None
    if kind == "list":
        elem = typ.list.elementType
        inner = schema.elementType if elem.which() in ("struct", "enum", "list") else None
        return [canon(elem, inner, v) for v in value]
    if kind == "struct":
        return full(schema, value)
    raise AssertionError(f"no canonical form for {kind}")


def default(field: Any) -> Any:
    """What a reader sees for the field when it is absent: its schema default, canonical."""
    slot = field.proto.slot
    typ = slot.type
    kind = typ.which()
    schema = field.schema if kind in ("struct", "enum", "list") else None
    value = slot.defaultValue
    if kind in ("text", "data", "list", "struct") and not slot.hadExplicitDefault:
        return canon(typ, schema, {"text": "", "data": b"", "list": [], "struct": {}}[kind])
    if kind == "list":
        return canon(typ, schema, list(value.list.as_list(schema)))
    if kind == "struct":
        raise AssertionError("struct defaults are not used in conformance.capnp")
    if kind == "void":
        return None
    return canon(typ, schema, getattr(value, value.which()))


def full(schema: Any, record: dict[str, Any]) -> dict[str, Any]:
    """Every field of a struct as a reader sees it: the value when present and not None, else the default."""
    unknown = set(record) - set(schema.fields)
    assert not unknown, f"{schema.node.displayName}: unknown fields {unknown}"
    out = {}
    for field in schema.fields_list:
        name, typ = field.proto.name, field.proto.slot.type
        value = record.get(name)
        inner = field.schema if typ.which() in ("struct", "enum", "list") else None
        out[name] = default(field) if value is None else canon(typ, inner, value)
    return out


def _json_int(text: str) -> int | float:
    return -0.0 if text == "-0" else int(text)  # capnp prints a Float32/64 -0.0 as "-0"


def capnp_records(tool: str, wrapper: Path, data: bytes, type_name: str) -> list[dict[str, Any]]:
    """The records section decoded by the reference implementation: one JSON object per ordinal."""
    out = subprocess.run(
        [tool, "convert", "binary:json", "--short", f"-I{SCHEMAS}", str(wrapper), f"RecordsOf{type_name}"],
        input=data,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, f"capnp convert failed ({out.returncode}): {out.stderr.decode(errors='replace')}"
    decoded = json.loads(out.stdout, parse_int=_json_int)
    records: list[dict[str, Any]] = decoded.get("list", [])
    return records


def check_version(tool: str, wrapper: Path, path: Path, published: dict[str, dict[Any, dict[str, Any]]]) -> None:
    """Every type of the state file at *path* holds exactly *published* (type -> key -> record), per capnp."""
    for type_name, want in published.items():
        schema = STRUCTS[type_name]
        key_field = KEYS[type_name]
        seen: dict[Any, dict[str, Any]] = {}
        ordinals: set[int] = set()
        for data, supplies in record_messages(path, type_name):
            got = capnp_records(tool, wrapper, data, type_name)
            for position, ordinal in supplies.items():
                assert ordinal not in ordinals, f"{type_name}: ordinal {ordinal} supplied twice"
                ordinals.add(ordinal)
                rec = full(schema, got[position])
                assert rec[key_field] not in seen, f"{type_name}: a key appears twice"
                seen[rec[key_field]] = rec
        assert set(seen) == set(want), f"{type_name}: keys differ"
        for key, record in want.items():
            assert seen[key] == full(schema, record), f"{type_name} {key!r}"


# --- records ------------------------------------------------------------------------------


def ints(bits: int, signed: bool) -> st.SearchStrategy[int]:
    if signed:
        return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return st.integers(0, 2**bits - 1)


def maybe(s: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | s


text = st.text(max_size=10)
genre = st.sampled_from(["drama", "comedy", "horror", "documentary"]) | st.integers(0, 3)
float32 = st.floats(width=32) | st.floats(-3e38, 3e38)  # exact, or rounded by the encoder
point = st.fixed_dictionaries({}, optional={"x": ints(32, True), "y": maybe(ints(32, True)), "label": maybe(text)})
credit = st.fixed_dictionaries(
    {},
    optional={
        "name": maybe(text),
        "role": maybe(genre),
        "share": maybe(float32),
        "at": maybe(point),
        "aliases": maybe(st.lists(text, max_size=3)),
    },
)
ITEM_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "i8": ints(8, True),
    "i16": ints(16, True),
    "i32": ints(32, True),
    "i64": ints(64, True),
    "u8": ints(8, False),
    "u16": ints(16, False),
    "u32": ints(32, False),
    "u64": ints(64, False),
    "f32": float32,
    "f64": st.floats(),
    "flag": st.booleans(),
    "other": st.booleans(),
    "name": text,
    "blob": st.binary(max_size=10),
    "genre": genre,
    "nothing": st.none(),
    "tags": st.lists(text, max_size=4),
    "counts": st.lists(ints(32, False), max_size=4),
    "bigs": st.lists(ints(64, True), max_size=3),
    "u64s": st.lists(ints(64, False), max_size=3),
    "i8s": st.lists(ints(8, True), max_size=5),
    "ratios": st.lists(float32, max_size=3),
    "f64s": st.lists(st.floats(), max_size=3),
    "bits": st.lists(st.booleans(), max_size=70),  # more than one word of bits
    "genres": st.lists(genre, max_size=3),
    "blobs": st.lists(st.binary(max_size=5), max_size=3),
    "matrix": st.lists(st.lists(ints(16, True), max_size=3), max_size=3),
    "spot": point,
    "lead": credit,
    "credits": st.lists(credit, max_size=3),
    "plain": text,
}
# Every field present (but Void, which the columnar encoder does not count), in every record: the
# columnar encoder's case; or any field missing or None, so that the record-by-record path runs.
complete_item = st.fixed_dictionaries(
    {"id": ints(32, False), **{k: v for k, v in ITEM_FIELDS.items() if k != "nothing"}}
)
any_item = st.fixed_dictionaries({"id": ints(32, False)}, optional={k: maybe(v) for k, v in ITEM_FIELDS.items()})
label = st.fixed_dictionaries(
    {"code": text},
    optional={"weight": maybe(st.floats()), "parts": maybe(st.lists(point, max_size=3)), "note": maybe(st.binary())},
)
items = st.lists(complete_item, max_size=8, unique_by=lambda r: r["id"]) | st.lists(
    any_item, max_size=8, unique_by=lambda r: r["id"]
)
labels = st.lists(label, max_size=4, unique_by=lambda r: r["code"])
UPSERTS = {"Item": items, "Label": labels}


# --- the test --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wrapper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A schema whose RecordsOf<T> structs lay out like hollow.capnp's Records with a List(T)."""
    path = tmp_path_factory.mktemp("capnp") / "wrapper.capnp"
    path.write_text(
        "@0xe5d1a0c2b3f47a69;\n"
        f'using Conf = import "/{SCHEMA.name}";\n'
        + "".join(f"struct RecordsOf{name} {{ list @0 :List(Conf.{name}); }}\n" for name in KEYS)
    )
    return path


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first_items=items, first_labels=labels, data=st.data())
def test_reference_implementation_reads_what_was_published(
    tool: str, wrapper: Path, first_items: list[dict[str, Any]], first_labels: list[dict[str, Any]], data: st.DataObject
) -> None:
    root = Path("/dev/shm") / f"hollow-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    root.mkdir()
    try:
        with Producer(NAMESPACE, schema=SCHEMA, primary_keys=KEYS, root=root) as producer:
            published: dict[str, dict[Any, dict[str, Any]]] = {
                "Item": {r["id"]: r for r in first_items},
                "Label": {r["code"]: r for r in first_labels},
            }

            def populate(state: Any) -> None:
                state.add_all("Item", first_items)
                state.add_all("Label", first_labels)

            v1 = producer.run_cycle(populate)
            check_version(tool, wrapper, root / NAMESPACE / str(v1), published)

            # the second version: removals leave holes; upserts replace records or fill holes
            removed = {
                name: data.draw(st.lists(st.sampled_from(sorted(keys)), unique=True), label=f"removed {name}")
                if keys
                else []
                for name, keys in published.items()
            }
            upserts = {
                "Item": data.draw(items, label="upserted Item"),
                "Label": data.draw(labels, label="upserted Label"),
            }

            def change(delta: Any) -> None:
                for name in KEYS:
                    for key in removed[name]:
                        delta.remove(name, key)
                    for rec in upserts[name]:
                        delta.upsert(name, rec)

            v2 = producer.run_incremental(change)
            for name in KEYS:
                for key in removed[name]:
                    del published[name][key]
                published[name].update((r[KEYS[name]], r) for r in upserts[name])
            check_version(tool, wrapper, root / NAMESPACE / str(v2), published)
            # the same version written again as a base, by moving bytes (docs/decisions.md §18)
            assert producer.compact() == v2
            check_version(tool, wrapper, root / NAMESPACE / str(v2), published)
    finally:
        shutil.rmtree(root, ignore_errors=True)

"""Schema evolution both ways: an older or newer reader schema reads the data under Cap'n Proto's rules.

Two schema files with the same file id describe the same types; loading both
through ``capnp.load`` in one process aborts it (docs/pitfalls.md 21), so anything that
loads both runs in a subprocess.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import hollow
from hollowd import Producer
from tests.helpers import populate, run_python

FILE_ID = "@0xa1b2c3d4e5f60718;"

V1 = (
    FILE_ID
    + """
struct Stamp {
  unixMillis @0 :Int64;
}

struct Film {
  id @0 :UInt64;
  title @1 :Text;
  year @2 :UInt16;
  rating @3 :Float64;
  tags @4 :List(Text);
  released @5 :Stamp;
}
"""
)

V2 = V1.replace(
    "  released @5 :Stamp;\n",
    '  released @5 :Stamp;\n  subtitle @6 :Text;\n  rank @7 :UInt32 = 7;\n  notes @8 :Text = "none";\n',
)

OTHER_ID = V1.replace(FILE_ID, "@0xb1b2c3d4e5f60719;")
RENAMED = V1.replace("struct Film", "struct Picture")


def film(i: int, **over: Any) -> dict[str, Any]:
    rec = {
        "id": i,
        "title": f"Film {i}",
        "year": 1990 + i,
        "rating": i / 4,
        "tags": [f"t{i}", "x"],
        "released": {"unixMillis": 1000 + i},
    }
    rec.update(over)
    return rec


def old_fields(f: Any) -> list[Any]:
    return [f.id, f.title, f.year, f.rating, list(f.tags), f.released.unixMillis]


def expected_old_fields(i: int) -> list[Any]:
    r = film(i)
    return [r["id"], r["title"], r["year"], r["rating"], r["tags"], r["released"]["unixMillis"]]


@pytest.fixture
def schemas(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, text in {"v1": V1, "v2": V2, "other": OTHER_ID, "renamed": RENAMED}.items():
        d = tmp_path / name  # each in a directory of its own: the same file name, like two releases
        d.mkdir()
        (d / "films.capnp").write_text(text)
        out[name] = d / "films.capnp"
    return out


def produce(root: Path, schema: Path, records: list[dict[str, Any]]) -> int:
    with Producer("films", schema=schema, primary_keys={"Film": "id"}, indexes={"Film": ["year"]}, root=root) as p:
        return p.run_cycle(populate(records, "Film"))


def test_old_data_reads_through_newer_reader_schema_with_defaults(root: Path, schemas: dict[str, Path]) -> None:
    produce(root, schemas["v1"], [film(i) for i in range(5)])
    with hollow.open("films", root=root, schema=schemas["v2"]) as ds, ds.snapshot() as snap:
        f = snap["Film"][3]
        assert old_fields(f) == expected_old_fields(3)
        assert (f.subtitle, f.rank, f.notes) == ("", 7, "none")
        assert [x.id for x in snap["Film"].find(year=1992)] == [2]


def test_old_data_reads_through_its_embedded_schema(root: Path, schemas: dict[str, Path]) -> None:
    produce(root, schemas["v1"], [film(i) for i in range(5)])
    with hollow.open("films", root=root) as ds, ds.snapshot() as snap:
        f = snap["Film"][3]
        assert old_fields(f) == expected_old_fields(3)
        assert "subtitle" not in f.schema.fieldnames
        with pytest.raises(AttributeError):
            f.subtitle  # noqa: B018 - the field does not exist in the data's schema


def test_new_data_reads_through_older_reader_schema(root: Path, schemas: dict[str, Path]) -> None:
    produce(root, schemas["v2"], [film(i, subtitle=f"sub {i}", rank=i, notes="n") for i in range(5)])
    with hollow.open("films", root=root, schema=schemas["v1"]) as ds, ds.snapshot() as snap:
        f = snap["Film"][4]
        assert old_fields(f) == expected_old_fields(4)
        assert "subtitle" not in f.to_dict()
        with pytest.raises(AttributeError):
            f.subtitle  # noqa: B018 - the old reader does not know the field
        assert [old_fields(x) for x in snap["Film"]] == [expected_old_fields(i) for i in range(5)]


def test_new_data_reads_new_fields_through_embedded_schema(root: Path, schemas: dict[str, Path]) -> None:
    produce(root, schemas["v2"], [film(1, subtitle="sub", rank=3), film(2)])
    with hollow.open("films", root=root) as ds, ds.snapshot() as snap:
        assert (snap["Film"][1].subtitle, snap["Film"][1].rank, snap["Film"][1].notes) == ("sub", 3, "none")
        assert (snap["Film"][2].subtitle, snap["Film"][2].rank) == ("", 7)


def test_schema_change_with_equal_records_publishes_a_new_version(root: Path, schemas: dict[str, Path]) -> None:
    records = [film(i) for i in range(3)]
    v1 = produce(root, schemas["v1"], records)
    assert produce(root, schemas["v1"], records) == v1
    v2 = produce(root, schemas["v2"], records)
    assert v2 == v1 + 1
    with hollow.open("films", root=root) as ds, ds.snapshot() as snap:
        assert snap.version == v2
        assert "subtitle" in snap["Film"][1].schema.fieldnames
        assert "subtitle @6" in snap.schema_source


def test_reader_schema_with_another_file_id_is_a_mismatch(root: Path, schemas: dict[str, Path]) -> None:
    produce(root, schemas["v1"], [film(1)])
    with pytest.raises(hollow.SchemaMismatchError) as info:
        hollow.open("films", root=root, schema=schemas["other"]).close()
    assert "Film" in str(info.value)


def test_reader_schema_without_the_type_is_a_mismatch(root: Path, schemas: dict[str, Path]) -> None:
    produce(root, schemas["v1"], [film(1)])
    with pytest.raises(hollow.SchemaMismatchError) as info:
        hollow.open("films", root=root, schema=schemas["renamed"]).close()
    assert "Film" in str(info.value)


# Loads v1 and v2 (same file id) in one process through hollow, plus the
# embedded schema, plus a producer compiling v2: must not abort.
BOTH = r"""
import json, sys
import hollow
from hollowd import Producer
root, v1, v2 = sys.argv[1:4]
out = {}
for name, schema in (("v1", v1), ("v2", v2), ("embedded", None)):
    with hollow.open("films", root=root, schema=schema) as ds, ds.snapshot() as snap:
        f = snap["Film"][2]
        out[name] = [f.title, f.year, sorted(f.schema.fieldnames)]
with Producer("films2", schema=v2, primary_keys={"Film": "id"}, root=root) as p:
    p.run_cycle(lambda s: s.add("Film", {"id": 1, "title": "x", "subtitle": "y"}))
with hollow.open("films2", root=root, schema=v1) as ds, ds.snapshot() as snap:
    out["films2-v1"] = snap["Film"][1].title
with hollow.open("films2", root=root, schema=v2) as ds, ds.snapshot() as snap:
    out["films2-v2"] = snap["Film"][1].subtitle
print(json.dumps(out))
"""


def test_one_process_loads_both_schema_versions_through_hollow(root: Path, schemas: dict[str, Path]) -> None:
    produce(root, schemas["v1"], [film(i) for i in range(3)])
    out = run_python(BOTH, str(root), str(schemas["v1"]), str(schemas["v2"]))
    old = ["id", "rating", "released", "tags", "title", "year"]
    assert out["v1"] == ["Film 2", 1992, old]
    assert out["v2"] == ["Film 2", 1992, sorted([*old, "subtitle", "rank", "notes"])]
    assert out["embedded"] == ["Film 2", 1992, old]
    assert out["films2-v1"] == "x"
    assert out["films2-v2"] == "y"


# A process that knows only the namespace's name (no schema file at all).
ONLY_NAME = r"""
import json, sys
import hollow
with hollow.open("films", root=sys.argv[1]) as ds, ds.snapshot() as snap:
    f = snap["Film"][1]
    print(json.dumps({
        "types": snap.types,
        "fields": list(f.schema.fieldnames),
        "record": f.to_dict(),
        "source_mentions_film": "struct Film" in snap.schema_source,
    }))
"""


def test_embedded_schema_alone_is_enough_to_read(root: Path, schemas: dict[str, Path]) -> None:
    produce(root, schemas["v2"], [film(1, subtitle="sub")])
    out = run_python(ONLY_NAME, str(root))  # given no schema path, and none in its directory
    assert out["types"] == ["Film"]
    assert out["fields"] == ["id", "title", "year", "rating", "tags", "released", "subtitle", "rank", "notes"]
    assert out["record"]["title"] == "Film 1"
    assert out["record"]["subtitle"] == "sub"
    assert out["record"]["released"] == {"unixMillis": 1001}
    assert out["source_mentions_film"] is True


# A reader schema given as a module that pycapnp compiled (capnp.load), not a path.
AS_MODULE = r"""
import json, sys
import capnp
import hollow
module = capnp.load(sys.argv[2])
with hollow.open("films", root=sys.argv[1], schema=module) as ds, ds.snapshot() as snap:
    f = snap["Film"][1]
    print(json.dumps([f.title, f.subtitle, f.rank]))
"""


def test_reader_schema_can_be_a_compiled_module(root: Path, schemas: dict[str, Path]) -> None:
    produce(root, schemas["v1"], [film(1)])
    assert run_python(AS_MODULE, str(root), str(schemas["v2"])) == ["Film 1", "", 7]

"""Bad input rejects the whole cycle with an error that names the record; nothing moves (DESIGN invariant 4)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hollow
import hollowd
from hollowd import Producer
from tests.helpers import SCHEMAS, f32, movie, movies_producer, populate

GOOD = [movie(i) for i in range(100)]


def disk(root: Path, ns: str = "movies") -> list[tuple[str, int, int, int]]:
    """Every entry of the namespace directory with its inode, size and mtime."""
    d = root / ns
    out = []
    for name in sorted(os.listdir(d)):
        st_ = os.lstat(d / name)
        out.append((name, st_.st_ino, st_.st_size, st_.st_mtime_ns))
    return out


def announced_version(root: Path, ns: str = "movies") -> int:
    with hollow.open(ns, root=root) as ds:
        return ds.version


def reject(p: Producer, root: Path, fill: Callable[[Any], None], error: type[Exception]) -> Exception:
    """Run a cycle that must fail with *error*; check that the directory and the announcement did not move."""
    ns = p.namespace
    before, version = disk(root, ns), announced_version(root, ns)
    with pytest.raises(error) as info:
        p.run_cycle(fill)
    assert disk(root, ns) == before
    assert announced_version(root, ns) == version
    return info.value


def with_bad(bad: dict[str, Any], at: int = 57) -> Callable[[Any], None]:
    """The good records with *bad* inserted at input position *at*."""
    records = [*GOOD[:at], bad, *GOOD[at:]]
    return populate(records)


@pytest.fixture
def producer(root: Path) -> Any:
    with movies_producer(root) as p:
        p.run_cycle(populate(GOOD[:10]))
        yield p


# -- primary keys ----------------------------------------------------------------


def test_missing_primary_key_names_type_position_and_field(producer: Producer, root: Path) -> None:
    bad = movie(1000)
    del bad["id"]
    e = reject(producer, root, with_bad(bad), hollowd.MissingKeyError)
    assert isinstance(e, hollowd.ValidationError)
    msg = str(e)
    assert "Movie" in msg
    assert "position 57" in msg
    assert "'id'" in msg
    assert (e.type_name, e.field) == ("Movie", "id")


def test_none_primary_key_is_missing(producer: Producer, root: Path) -> None:
    e = reject(producer, root, with_bad(movie(1000, id=None), at=3), hollowd.MissingKeyError)
    assert "position 3" in str(e)


def test_missing_composite_key_field_names_type_position_and_field(producer: Producer, root: Path) -> None:
    def fill(state: Any) -> None:
        state.add("Role", {"movieId": 1, "actorId": 1, "character": "a"})
        state.add("Role", {"movieId": 1, "character": "b"})

    e = reject(producer, root, fill, hollowd.MissingKeyError)
    msg = str(e)
    assert "Role" in msg
    assert "position 1" in msg
    assert "'actorId'" in msg
    assert (e.type_name, e.field) == ("Role", "actorId")


def test_duplicate_primary_key_names_key_and_both_positions(producer: Producer, root: Path) -> None:
    e = reject(producer, root, with_bad(movie(42, title="again"), at=80), hollowd.DuplicateKeyError)
    assert isinstance(e, hollowd.ValidationError)
    msg = str(e)
    assert "Movie" in msg
    assert "42" in msg
    assert "42 and 80" in msg  # first seen at input position 42, again at 80
    assert e.type_name == "Movie"
    assert e.key == 42


def test_a_key_twice_is_found_when_one_record_is_unchanged(producer: Producer, root: Path) -> None:
    """Only changed records' keys are read in a later cycle: a new record with the key of an unchanged one,
    or an unchanged record given twice, is still refused, naming both positions."""
    e = reject(producer, root, populate([*GOOD[:10], movie(4, title="other")]), hollowd.DuplicateKeyError)
    assert "4 and 10" in str(e)
    assert e.key == 4
    e = reject(producer, root, populate([*GOOD[:10], GOOD[6]]), hollowd.DuplicateKeyError)
    assert "6 and 10" in str(e)


def test_a_record_nested_too_deeply_is_named_not_a_crash(producer: Producer, root: Path) -> None:
    deep: list[Any] = []
    inner = deep
    for _ in range(5000):  # past orjson's 254 levels and the interpreter's recursion limit
        inner.append([])
        inner = inner[0]
    e = reject(producer, root, with_bad(movie(1000, title=deep), at=7), hollowd.ValidationError)
    assert "position 7" in str(e)
    assert "nested too deeply" in str(e)


def test_duplicate_composite_key_is_rejected(producer: Producer, root: Path) -> None:
    def fill(state: Any) -> None:
        state.add("Role", {"movieId": 1, "actorId": 2, "character": "a"})
        state.add("Role", {"movieId": 2, "actorId": 1, "character": "b"})
        state.add("Role", {"movieId": 1, "actorId": 2, "character": "c"})

    e = reject(producer, root, fill, hollowd.DuplicateKeyError)
    assert "0 and 2" in str(e)
    assert e.key == (1, 2)


def test_str_key_for_uint64_key_is_rejected_naming_position(producer: Producer, root: Path) -> None:
    e = reject(producer, root, with_bad(movie(1000, id="1000"), at=5), hollowd.ValidationError)
    msg = str(e)
    assert "Movie" in msg
    assert "position 5" in msg
    assert "'1000'" in msg
    assert e.field == "id"


def test_float_key_for_uint64_key_is_rejected(producer: Producer, root: Path) -> None:
    reject(producer, root, with_bad(movie(1000, id=1000.0)), hollowd.ValidationError)


# -- fields ----------------------------------------------------------------------


def test_unknown_field_names_type_key_and_field(producer: Producer, root: Path) -> None:
    e = reject(producer, root, with_bad(movie(1000, director="Mann")), hollowd.ValidationError)
    msg = str(e)
    assert "Movie" in msg
    assert "1000" in msg
    assert "director" in msg
    assert (e.type_name, e.key, e.field) == ("Movie", 1000, "director")


def test_unknown_field_replacing_a_known_one_is_rejected(producer: Producer, root: Path) -> None:
    bad = movie(1000, director="Mann")
    del bad["genre"]  # as many fields as the schema has, one of them unknown
    e = reject(producer, root, with_bad(bad), hollowd.ValidationError)
    assert e.field == "director"


WRONG_TYPES = [
    pytest.param("year", "1999", id="str-for-UInt16"),
    pytest.param("year", 1999.0, id="float-for-UInt16"),
    pytest.param("title", 5, id="int-for-Text"),
    pytest.param("title", b"Heat", id="bytes-for-Text"),
    pytest.param("tags", "classic", id="str-for-List(Text)"),
    pytest.param("tags", {"a": 1}, id="dict-for-List(Text)"),
    pytest.param("tags", ["ok", 3], id="int-in-List(Text)"),
    pytest.param("rating", "high", id="str-for-Float32"),
    pytest.param("releasedAt", [1], id="list-for-struct"),
    pytest.param("releasedAt", 1_600_000_000_000, id="int-for-struct"),
]


@pytest.mark.parametrize(("field", "value"), WRONG_TYPES)
def test_wrong_type_names_type_key_and_field(producer: Producer, root: Path, field: str, value: Any) -> None:
    e = reject(producer, root, with_bad(movie(1000, **{field: value})), hollowd.ValidationError)
    msg = str(e)
    assert "Movie" in msg
    assert "1000" in msg
    assert field in msg
    assert (e.type_name, e.key) == ("Movie", 1000)
    assert e.field is not None
    assert e.field.startswith(field)


def test_wrong_type_in_a_lone_record_is_rejected(producer: Producer, root: Path) -> None:
    # One record only: the column-at-a-time path sees the whole column as bad.
    e = reject(producer, root, populate([movie(7, year="x")]), hollowd.ValidationError)
    assert e.field == "year"


def test_lone_surrogate_in_text_is_a_validation_error(producer: Producer, root: Path) -> None:
    e = reject(producer, root, with_bad(movie(1000, title="bad \udc80 text")), hollowd.ValidationError)
    assert (e.type_name, e.key, e.field) == ("Movie", 1000, "title")


def test_lone_surrogate_in_text_list_is_a_validation_error(producer: Producer, root: Path) -> None:
    e = reject(producer, root, with_bad(movie(1000, tags=["ok", "\ud800"])), hollowd.ValidationError)
    assert e.field is not None
    assert e.field.startswith("tags")


def test_non_dict_record_is_rejected(producer: Producer, root: Path) -> None:
    def fill(state: Any) -> None:
        populate(GOOD)(state)
        state.add("Movie", 42)

    e = reject(producer, root, fill, hollowd.ValidationError)
    assert "Movie" in str(e)
    assert "int" in str(e)
    assert e.type_name == "Movie"


def test_list_record_is_rejected(producer: Producer, root: Path) -> None:
    def fill(state: Any) -> None:
        state.add("Movie", [("id", 1)])

    reject(producer, root, fill, hollowd.ValidationError)


OUT_OF_RANGE = [
    pytest.param("year", 70000, "UInt16", id="UInt16-too-big"),
    pytest.param("year", -1, "UInt16", id="UInt16-negative"),
    pytest.param("rating", 1e39, "Float32", id="Float32-overflow"),
    pytest.param("releasedAt", {"unixMillis": 1 << 63}, "Int64", id="Int64-too-big"),
]


@pytest.mark.parametrize(("field", "value", "type_"), OUT_OF_RANGE)
def test_out_of_range_names_field_and_type(producer: Producer, root: Path, field: str, value: Any, type_: str) -> None:
    e = reject(producer, root, with_bad(movie(1000, **{field: value})), hollowd.ValidationError)
    msg = str(e)
    assert "Movie" in msg
    assert "1000" in msg
    assert field in msg
    assert type_ in msg
    assert "range" in msg


def test_negative_uint64_key_is_rejected(producer: Producer, root: Path) -> None:
    e = reject(producer, root, with_bad(movie(1000, id=-1)), hollowd.ValidationError)
    assert "Movie" in str(e)
    assert "-1" in str(e)
    assert e.field == "id"


def test_uint64_key_past_2_64_is_rejected(producer: Producer, root: Path) -> None:
    reject(producer, root, with_bad(movie(1000, id=1 << 64)), hollowd.ValidationError)


def test_wrong_type_in_nested_struct_names_the_field_path(producer: Producer, root: Path) -> None:
    e = reject(producer, root, with_bad(movie(1000, releasedAt={"unixMillis": "x"})), hollowd.ValidationError)
    assert "releasedAt.unixMillis" in str(e)
    assert e.field == "releasedAt.unixMillis"


def test_unknown_field_in_nested_struct_names_the_field_path(producer: Producer, root: Path) -> None:
    e = reject(
        producer, root, with_bad(movie(1000, releasedAt={"unixMillis": 1, "tz": "UTC"})), hollowd.ValidationError
    )
    assert e.field == "releasedAt.tz"


def test_bad_value_inside_list_of_structs_names_index_path(root: Path) -> None:
    with Producer("shop", schema=SCHEMAS / "commerce.capnp", primary_keys={"Order": "id"}, root=root) as p:
        p.run_cycle(populate([{"id": 1}], "Order"))
        order = {"id": 2, "items": [{"sku": "a", "quantity": 1}, {"sku": "b", "quantity": -1}]}
        e = reject(p, root, populate([order], "Order"), hollowd.ValidationError)
    assert e.field == "items[1].quantity"
    assert "Order" in str(e)
    assert "items[1].quantity" in str(e)


def test_unknown_enumerant_is_rejected(root: Path) -> None:
    with Producer("shop", schema=SCHEMAS / "commerce.capnp", primary_keys={"Order": "id"}, root=root) as p:
        p.run_cycle(populate([{"id": 1}], "Order"))
        e = reject(p, root, populate([{"id": 2, "status": "lost"}], "Order"), hollowd.ValidationError)
    assert e.field == "status"
    assert "lost" in str(e)


def test_unknown_record_type_is_a_schema_error(producer: Producer, root: Path) -> None:
    def fill(state: Any) -> None:
        state.add("Movie", movie(1))
        state.add("Film", {"id": 1})

    e = reject(producer, root, fill, hollowd.SchemaError)
    assert "Film" in str(e)
    assert "Movie" in str(e)


def test_first_cycle_rejected_announces_nothing(root: Path) -> None:
    with movies_producer(root) as p, pytest.raises(hollowd.ValidationError):
        p.run_cycle(populate([movie(1, year="x")]))
    assert sorted(os.listdir(root / "movies")) == [".producer.lock"]
    with pytest.raises(hollow.NamespaceNotFoundError):
        hollow.open("movies", root=root)


def test_good_cycle_after_rejected_cycle_gets_next_version(producer: Producer, root: Path) -> None:
    v = announced_version(root)
    reject(producer, root, with_bad(movie(1000, year=70000)), hollowd.ValidationError)
    v2 = producer.run_cycle(populate(GOOD))
    assert v2 == v + 1
    with hollow.open("movies", root=root) as ds, ds.snapshot() as snap:
        assert snap.version == v2
        assert len(snap["Movie"]) == len(GOOD)
        assert 1000 not in snap["Movie"]


def test_rejected_incremental_cycle_changes_nothing(producer: Producer, root: Path) -> None:
    before, v = disk(root), announced_version(root)
    with pytest.raises(hollowd.ValidationError):
        producer.run_incremental(
            lambda d: (d.upsert("Movie", movie(5, title="new")), d.upsert("Movie", movie(6, year="x")))
        )
    assert disk(root) == before
    with hollow.open("movies", root=root) as ds, ds.snapshot() as snap:
        assert snap.version == v
        assert snap["Movie"][5].title == "Movie 5"


# -- absent values ---------------------------------------------------------------


def test_none_field_reads_as_default(producer: Producer, root: Path) -> None:
    producer.run_cycle(populate([movie(1, title=None, year=None, rating=None, tags=None, releasedAt=None)]))
    with hollow.open("movies", root=root) as ds, ds.snapshot() as snap:
        m = snap["Movie"][1]
        assert (m.title, m.year, m.rating, list(m.tags), m.releasedAt.unixMillis) == ("", 0, 0.0, [], 0)
        assert m.genre == "Comedy"
        assert not m._has("releasedAt")


def test_record_missing_optional_fields_is_accepted(producer: Producer, root: Path) -> None:
    producer.run_cycle(populate([{"id": 1}, {"id": 2, "title": "Two"}, movie(3)]))
    with hollow.open("movies", root=root) as ds, ds.snapshot() as snap:
        movies = snap["Movie"]
        assert len(movies) == 3
        assert (movies[1].title, movies[1].year, list(movies[1].tags)) == ("", 0, [])
        assert movies[2].title == "Two"
        assert movies[3].title == "Movie 3"


def test_absent_indexed_field_is_found_under_its_default(producer: Producer, root: Path) -> None:
    producer.run_cycle(populate([{"id": 1}, movie(2)]))
    with hollow.open("movies", root=root) as ds, ds.snapshot() as snap:
        assert [m.id for m in snap["Movie"].find(genre="")] == [1]
        assert [m.id for m in snap["Movie"].find(year=0)] == [1]


# -- property: what goes in comes out ----------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
_movie = st.fixed_dictionaries(
    {"id": st.integers(0, (1 << 64) - 1)},
    optional={
        "title": _text,
        "year": st.integers(0, 65535),
        "rating": st.floats(width=32, allow_nan=False),
        "genre": _text,
        "tags": st.lists(_text, max_size=5),
        "releasedAt": st.fixed_dictionaries({}, optional={"unixMillis": st.integers(-(1 << 63), (1 << 63) - 1)}),
    },
)


_examples = iter(range(1 << 30))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None)
@given(records=st.lists(_movie, min_size=1, max_size=30, unique_by=lambda m: m["id"]))
def test_published_records_read_back_equal(root: Path, records: list[dict[str, Any]]) -> None:
    ns = f"prop{next(_examples)}"
    with Producer(
        ns, schema=SCHEMAS / "movies.capnp", primary_keys={"Movie": "id"}, indexes={"Movie": ["genre"]}, root=root
    ) as p:
        v = p.run_cycle(populate(records))
    with hollow.open(ns, root=root) as ds, ds.snapshot() as snap:
        assert snap.version == v
        movies = snap["Movie"]
        assert len(movies) == len(records)
        for r in records:
            m = movies[r["id"]]
            assert m.id == r["id"]
            assert m.title == r.get("title", "")
            assert m.year == r.get("year", 0)
            assert m.rating == f32(r.get("rating", 0.0))
            assert m.genre == r.get("genre", "")
            assert list(m.tags) == r.get("tags", [])
            assert m.releasedAt.unixMillis == r.get("releasedAt", {}).get("unixMillis", 0)
        genres = {r.get("genre", "") for r in records}
        for g in genres:
            assert sorted(m.id for m in movies.find(genre=g)) == sorted(
                r["id"] for r in records if r.get("genre", "") == g
            )


def test_none_primary_key_in_a_first_build_is_missing(root: Path) -> None:
    """A first build looks for a None integer key only once fingerprinting the keys failed (issue 10);
    it is still a missing key, named by position, before a key of the wrong type earlier on."""
    records = [movie(i) for i in range(10)]
    records[1]["id"] = "one"
    records[3]["id"] = None
    with movies_producer(root) as p:
        with pytest.raises(hollowd.MissingKeyError, match="position 3"):
            p.run_cycle(populate(records))
        assert p.versions() == []

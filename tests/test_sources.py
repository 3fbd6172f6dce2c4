"""Sources: JSON, JSON Lines, CSV (converted by the schema), directories, half-written files, callables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import hollow
from hollowd.errors import ConfigurationError
from hollowd.sources import CallableSource, FileSource, SourceError
from tests.helpers import movie, movies_producer


@pytest.fixture
def producer(root: Path):  # type: ignore[no-untyped-def]
    with movies_producer(root) as p:
        yield p


def read_titles(root: Path) -> dict[int, str]:
    with hollow.open("movies", root=root, follow=False) as ds, ds.snapshot() as snap:
        return {m.id: m.title for m in snap["Movie"]}


def test_json_list_and_object(producer, root: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "movies.json"
    f.write_text(json.dumps([movie(1), movie(2)]))
    producer.run_cycle(FileSource(f, producer.schema, type_name="Movie"))
    assert read_titles(root) == {1: "Movie 1", 2: "Movie 2"}
    f.write_text(json.dumps({"Movie": [movie(3)], "Actor": [{"id": 9, "name": "Ann"}]}))
    producer.run_cycle(FileSource(f, producer.schema))
    with hollow.open("movies", root=root, follow=False) as ds, ds.snapshot() as snap:
        assert [m.id for m in snap["Movie"]] == [3]
        assert snap["Actor"][9].name == "Ann"


def test_jsonl_refuses_a_half_written_file(producer, root: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "movies.jsonl"
    lines = [json.dumps(movie(i)) for i in range(3)]
    f.write_text("\n".join(lines) + "\n")
    v = producer.run_cycle(FileSource(f, producer.schema, type_name="Movie"))
    f.write_text("\n".join(lines) + "\n" + json.dumps(movie(3))[:20])  # the writer is mid-record
    with pytest.raises(SourceError, match="ends mid-record"):
        producer.run_cycle(FileSource(f, producer.schema, type_name="Movie"))
    assert read_titles(root) == {0: "Movie 0", 1: "Movie 1", 2: "Movie 2"}
    f.write_text("\n".join(lines) + "\n{broken\n")
    with pytest.raises(SourceError, match=r"movies.jsonl:4: not valid JSON"):
        producer.run_cycle(FileSource(f, producer.schema, type_name="Movie"))
    assert producer.versions() == [v]


def test_jsonl_names_the_line_of_a_bad_one_and_skips_blank_lines(producer, root: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "movies.jsonl"
    f.write_bytes(b"\n".join([json.dumps(movie(1)).encode(), b"", b"   ", json.dumps(movie(2)).encode()]) + b"\n")
    producer.run_cycle(FileSource(f, producer.schema, type_name="Movie"))
    assert read_titles(root) == {1: "Movie 1", 2: "Movie 2"}
    for bad, why in [(b"[1, 2]", "a list, not a record"), (b"7", "a number, not a record"), (b"NaN", "not valid JSON")]:
        f.write_bytes(json.dumps(movie(1)).encode() + b"\n\n" + bad + b"\n")
        with pytest.raises(SourceError, match=rf"movies.jsonl:3: {why}"):
            producer.run_cycle(FileSource(f, producer.schema, type_name="Movie"))
    f.write_bytes(b'{"id": 1, "title": "\xff"}\n')
    with pytest.raises(SourceError, match=r"movies.jsonl:1: not valid JSON \(str is not valid UTF-8"):
        producer.run_cycle(FileSource(f, producer.schema, type_name="Movie"))
    f.write_text(json.dumps(movie(1)) + "\n" + json.dumps(movie(2)) + ", " + json.dumps(movie(3)) + "\n")
    with pytest.raises(SourceError, match=r"movies.jsonl:2: not valid JSON"):  # two documents on one line
        producer.run_cycle(FileSource(f, producer.schema, type_name="Movie"))
    assert read_titles(root) == {1: "Movie 1", 2: "Movie 2"}


def test_json_that_does_not_parse_names_the_file(producer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "movies.json"
    f.write_text(json.dumps([movie(1)])[:-3])  # half written
    with pytest.raises(SourceError, match=r"movies.json: not valid JSON \(unexpected end of data"):
        producer.run_cycle(FileSource(f, producer.schema, type_name="Movie"))


def test_csv_cells_follow_the_schema(producer, root: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "movies.csv"
    f.write_text('id,title,year,rating,genre,tags\n1,Heat,1995,8.3,Crime,"[""heist""]"\n2,Up,,8.3,,[]\n')
    producer.run_cycle(FileSource(f, producer.schema, type_name="Movie"))
    with hollow.open("movies", root=root, follow=False) as ds, ds.snapshot() as snap:
        heat, up = snap["Movie"][1], snap["Movie"][2]
        assert (heat.year, heat.genre, list(heat.tags)) == (1995, "Crime", ["heist"])
        assert (up.year, up.genre) == (0, "")  # empty cells are absent fields
    f.write_text("id,title,year\n1,Heat,1995\n2,Up,20")  # the writer is mid-row: 20 is not 2009
    with pytest.raises(SourceError, match="ends mid-row"):
        producer.run_cycle(FileSource(f, producer.schema, type_name="Movie"))
    f.write_text("id,title,year\n1,Heat,nineteen\n")
    with pytest.raises(SourceError, match=r"movies.csv:2: column 'year'"):
        producer.run_cycle(FileSource(f, producer.schema, type_name="Movie"))


def test_directory_is_read_in_name_order(producer, root: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "data"
    d.mkdir()
    (d / "b.jsonl").write_text(json.dumps(movie(2)) + "\n")
    (d / "a.json").write_text(json.dumps([movie(1)]))
    (d / ".partial.json").write_text("[")  # hidden: a writer's temporary file
    (d / "notes.txt").write_text("ignored")
    src = FileSource(d, producer.schema, type_name="Movie")
    assert [p.name for p in src.files()] == ["a.json", "b.jsonl"]
    producer.run_cycle(src)
    assert read_titles(root) == {1: "Movie 1", 2: "Movie 2"}


def test_several_types_need_the_type_named(producer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "m.jsonl"
    f.write_text(json.dumps(movie(1)) + "\n")
    with pytest.raises(SourceError, match="several types"):
        producer.run_cycle(FileSource(f, producer.schema))


def test_missing_file(producer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SourceError, match="no such file"):
        producer.run_cycle(FileSource(tmp_path / "gone.json", producer.schema, type_name="Movie"))


def test_callable_source(producer, root: Path) -> None:  # type: ignore[no-untyped-def]
    producer.run_cycle(CallableSource("tests.test_sources:two_movies"))
    assert read_titles(root) == {10: "Movie 10", 11: "Movie 11"}
    with pytest.raises(ConfigurationError):
        CallableSource("tests.test_sources:nothing_here")


def two_movies(state) -> None:  # type: ignore[no-untyped-def]
    state.add("Movie", movie(10))
    state.add("Movie", movie(11))

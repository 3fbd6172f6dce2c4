"""Sources: JSON, JSON Lines, CSV (converted by the schema), directories, half-written files, callables."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

import hollow
from hollowd.errors import ConfigurationError, ValidationError
from hollowd.sources import CallableSource, ChangeBatch, ChangeLogSource, FileSource, IncrementalSource, SourceError
from hollowd.state import WriteState
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


# -- sources of changes ------------------------------------------------------------------


def line(doc: object) -> str:
    return json.dumps(doc) + "\n"


def applied(batch: ChangeBatch, producer) -> dict[int, str]:  # type: ignore[no-untyped-def]
    producer.run_incremental(batch.apply)
    return read_titles(producer.dir.parent)


def test_change_log_reads_complete_lines_from_its_cursor(producer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "movies.changes"
    f.write_text(line({"upsert": movie(1)}) + "\n" + line({"upsert": movie(2), "type": "Movie"}) + '{"remove": ')
    with ChangeLogSource(f, producer.schema, type_name="Movie") as log:
        first = log.read(None)
        assert [(c.key, c.where) for c in first.changes] == [(1, f"{f}:1"), (2, f"{f}:3")]
        assert (first.cursor["line"], first.cursor["offset"]) == (3, f.stat().st_size - len('{"remove": '))
        assert applied(first, producer) == {1: "Movie 1", 2: "Movie 2"}
        assert log.read(first.cursor).changes == []  # the last line is still being written
        with f.open("a") as w:
            w.write("1}\n" + line({"remove": 2}) + line({"upsert": movie(1, title="again")}))
        second = log.read(first.cursor)
        assert [(c.key, c.record is None, c.where) for c in second.changes] == [
            (1, True, f"{f}:4"),
            (2, True, f"{f}:5"),
            (1, False, f"{f}:6"),
        ]
        assert applied(second, producer) == {1: "again"}
        assert log.read(second.cursor).cursor == second.cursor


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{broken", "not valid JSON"),
        ("[1]", 'expected {"upsert": record} or {"remove": key} (and maybe "type"), got a list'),
        ('{"upsert": {"id": 3}, "remove": 3}', "got an object with 'upsert', 'remove'"),
        ('{"upsret": {"id": 3}}', "got an object with 'upsret'"),
        ('{"upsert": {"id": 3}, "typo": 1}', "got an object with 'upsert', 'typo'"),
        ('{"upsert": [3]}', "upsert: expected a record (an object), got a list"),
        ('{"upsert": {"title": "no id"}}', "upsert: the Movie record has no primary key field 'id'"),
        ('{"upsert": {"id": "3"}}', 'upsert: Movie.id is an integer, got "3"'),
        ('{"remove": "3"}', 'remove: Movie.id is an integer, got "3"'),
        ('{"remove": true}', "remove: Movie.id is an integer, got true"),
        ('{"remove": [3]}', "remove: Movie.id is an integer, got [3]"),
        (
            '{"remove": [1], "type": "Role"}',
            "remove: Role's key is (movieId, actorId): give a list of 2 values, got [1]",
        ),
        ('{"remove": [1, "2"], "type": "Role"}', 'remove: Role.actorId is an integer, got "2"'),
        ('{"remove": 1, "type": "Movies"}', 'unknown record type "Movies"; this namespace has: Movie, Actor, Role'),
    ],
)
def test_a_bad_change_names_its_line(producer, tmp_path: Path, text: str, why: str) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "movies.changes"
    f.write_text(line({"upsert": movie(1)}) + text + "\n")
    with ChangeLogSource(f, producer.schema, type_name="Movie") as log, pytest.raises(SourceError) as err:
        log.read(None)
    assert str(err.value).startswith(f"{f}:2: ")
    assert why in str(err.value)


def test_change_without_a_type_needs_one_when_there_are_several(producer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "movies.changes"
    f.write_text(line({"upsert": {"movieId": 1, "actorId": 2}, "type": "Role"}) + line({"remove": 1}))
    with ChangeLogSource(f, producer.schema) as log, pytest.raises(SourceError, match=rf'{f}:2: no "type"'):
        log.read(None)
    f.write_text(
        line({"upsert": {"movieId": 1, "actorId": 2}, "type": "Role"}) + line({"remove": [1, 2], "type": "Role"})
    )
    with ChangeLogSource(f, producer.schema) as log:
        batch = log.read(None)
    assert [c.key for c in batch.changes] == [(1, 2), (1, 2)]


def test_a_bad_field_names_the_line_of_the_upsert(producer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "movies.changes"
    f.write_text(line({"upsert": movie(1, year=70000)}) + line({"upsert": movie(2)}))
    with ChangeLogSource(f, producer.schema, type_name="Movie") as log:
        batch = log.read(None)
    with pytest.raises(ValidationError) as err:
        run_located(producer, batch)
    assert str(err.value).startswith(f"{f}:1: Movie id=1: field 'year': 70000 is out of range")
    assert producer.versions() == []


def run_located(producer, batch: ChangeBatch) -> int:  # type: ignore[no-untyped-def]
    """As the daemon applies a batch: an error about a record names the line that upserted it."""
    try:
        return int(producer.run_incremental(batch.apply))
    except ValidationError as e:
        raise batch.locate(e) from e


def test_change_log_rotated_is_finished_then_the_new_file_read(producer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "movies.changes"
    f.write_text(line({"upsert": movie(1)}))
    with ChangeLogSource(f, producer.schema, type_name="Movie") as log:
        cursor = log.read(None).cursor
        with f.open("a") as w:
            w.write(line({"upsert": movie(2)}) + '{"upsert": {"id": 9')  # the writer died mid-line
        f.rename(tmp_path / "movies.changes.1")
        f.write_text(line({"upsert": movie(3)}))
        batch = log.read(cursor)
        assert [c.where for c in batch.changes] == [f"{f}.1:2", f"{f}:1"]
        assert [level for level, _ in batch.notes] == [logging.WARNING, logging.INFO]
        assert "movies.changes.1:3 (the rotated file ends without a newline" in batch.notes[0][1]
        assert batch.cursor["ino"] == f.stat().st_ino
        assert (batch.cursor["line"], batch.cursor["offset"]) == (1, f.stat().st_size)
    with ChangeLogSource(f, producer.schema, type_name="Movie") as fresh:  # after a restart: found by its inode
        (tmp_path / "movies.changes.1").rename(tmp_path / "movies.changes.2")
        assert [c.where for c in fresh.read(cursor).changes] == [f"{f}.2:2", f"{f}:1"]
        (tmp_path / "movies.changes.2").unlink()
        assert [c.where for c in fresh.read(cursor).changes] == [f"{f}.2 (deleted):2", f"{f}:1"]  # kept open
    with ChangeLogSource(f, producer.schema, type_name="Movie") as third:  # gone: only the new file is left
        batch = third.read(cursor)
        assert [c.where for c in batch.changes] == [f"{f}:1"]
        assert "event=change-log-replaced" in batch.notes[0][1]


def test_change_log_mended_into_a_new_file_goes_on_from_its_offset(producer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "movies.changes"
    f.write_text(line({"upsert": movie(1)}))
    with ChangeLogSource(f, producer.schema, type_name="Movie") as log:
        cursor = log.read(None).cursor
        with f.open("a") as w:
            w.write('{"remove": "1"}\n')
        with pytest.raises(SourceError, match=rf"{f}:2: remove: Movie.id is an integer"):
            log.read(cursor)
        mended = tmp_path / "movies.changes.sed"  # as sed -i does: a new file renamed over the old one
        mended.write_text(line({"upsert": movie(1)}) + line({"remove": 1}))
        mended.rename(f)
        batch = log.read(cursor)
        assert [(c.key, c.record, c.where) for c in batch.changes] == [(1, None, f"{f}:2")]
        assert batch.notes == []


def test_change_log_truncated_or_rewritten_is_read_from_its_start(producer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "movies.changes"
    f.write_text(line({"upsert": movie(1)}) + line({"upsert": movie(2)}))
    with ChangeLogSource(f, producer.schema, type_name="Movie") as log:
        cursor = log.read(None).cursor
        with f.open("r+") as w:
            w.truncate(0)
            w.write(line({"remove": 1}))
        batch = log.read(cursor)
        assert [c.where for c in batch.changes] == [f"{f}:1"]
        assert "event=change-log-truncated" in batch.notes[0][1]
        assert "the file was shorter" in batch.notes[0][1]
        cursor = batch.cursor
        with f.open("r+") as w:  # same inode, as long, other bytes before the offset
            w.write(line({"remove": 2}) + line({"upsert": movie(3)}))
        batch = log.read(cursor)
        assert [c.key for c in batch.changes] == [2, 3]
        assert "rewritten before it" in batch.notes[0][1]


def test_change_log_that_is_not_a_file(producer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with ChangeLogSource(tmp_path / "none", producer.schema) as log, pytest.raises(SourceError, match="no such file"):
        log.read(None)
    with ChangeLogSource(tmp_path, producer.schema) as log, pytest.raises(SourceError, match="not a regular file"):
        log.read(None)
    os.mkfifo(tmp_path / "fifo")
    with ChangeLogSource(tmp_path / "fifo", producer.schema) as log, pytest.raises(SourceError, match="not a regular"):
        log.read(None)


def test_incremental_source(producer, root: Path) -> None:  # type: ignore[no-untyped-def]
    src = IncrementalSource("tests.test_sources:since", producer.schema, type_name="Movie")
    first = src.read(None)
    assert (len(first.changes), first.cursor) == (2, [2])
    assert applied(first, producer) == {0: "Movie 0", 1: "Movie 1"}
    second = src.read(first.cursor)
    assert (len(second.changes), second.cursor) == (1, [3])
    assert applied(second, producer) == {1: "Movie 1"}
    assert src.read(second.cursor).changes == []


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        ("tests.test_sources:breaks", "tests.test_sources:breaks: raised KeyError: 'nope'"),
        ("tests.test_sources:not_a_pair", "must return \\(changes, new_cursor\\), got a list"),
        ("tests.test_sources:bad_cursor", "its new cursor must be a JSON value"),
        ("tests.test_sources:bad_change", "tests.test_sources:bad_change: change 2: remove: Movie.id is an integer"),
    ],
)
def test_incremental_source_that_misbehaves(producer, ref: str, why: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SourceError, match=why):
        IncrementalSource(ref, producer.schema, type_name="Movie").read(None)


CHANGES = [{"upsert": movie(0)}, {"upsert": movie(1), "type": "Movie"}, {"remove": 0, "type": "Movie"}]


def since(cursor: list[int] | None) -> tuple[list[dict[str, object]], tuple[int]]:
    """Two changes at a time; the cursor is how many were given (a tuple: it comes back as a list)."""
    start = cursor[0] if cursor else 0
    changes = CHANGES[start : start + 2]
    return changes, (start + len(changes),)


def breaks(cursor: object) -> object:
    return {}["nope"]


def not_a_pair(cursor: object) -> object:
    return [[], None]


def bad_cursor(cursor: object) -> object:
    return [], {1, 2}


def bad_change(cursor: object) -> object:
    return [{"remove": 1}, {"remove": "x"}], 1


@pytest.mark.parametrize(
    "layout",
    [
        [b"", b"{1}", b"{2}"],
        [b"{1}", b" \t\r", b"", b"{2}"],
        [b"  {1}", b"{2}"],  # a record after blanks on its line is a record, not a blank line
        [b"{1}\r", b"{2}\r"],  # CRLF
        [b"{1}", b"\x0c", b"{2}", b"   "],  # any ASCII whitespace alone is a blank line, as json_lines says
        [b"{1}", b"\x0c", b"{2}"],  # ... also when no other blank line is there (it was refused then)
        [b"\t{1}", b"", b"", b"{2}", b"\r"],
    ],
)
def test_jsonl_blank_lines_anywhere_are_skipped_and_lines_keep_their_numbers(  # type: ignore[no-untyped-def]
    producer, layout: list[bytes], tmp_path: Path
) -> None:
    """Blank lines are found by a quick look at each line's first byte (the lowest line), not a regular
    expression over the file (0.9 s of a 124 MiB file's cycle); what is blank, and how lines are
    numbered in errors, stays the same."""

    def read(lines: list[bytes]) -> list[object]:
        f = tmp_path / "movies.jsonl"
        one, two = json.dumps(movie(1)).encode(), json.dumps(movie(2)).encode()
        f.write_bytes(b"".join(ln.replace(b"{1}", one).replace(b"{2}", two) + b"\n" for ln in lines))
        state = WriteState(producer.schema)
        FileSource(f, producer.schema, type_name="Movie")(state)
        return [r["id"] for r in state.materialize("Movie")["Movie"]]

    assert read(layout) == [1, 2]
    bad = [*layout, b"[7]"]
    with pytest.raises(SourceError, match=rf"movies.jsonl:{len(bad)}: a list, not a record"):
        read(bad)
    with pytest.raises(SourceError, match=r"movies.jsonl:2: a list, not a record"):
        read([layout[0], b"[7]", *layout[1:]])

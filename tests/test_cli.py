"""The ``hollow`` command line: read-only commands, human and JSON, and exit codes scripts rely on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hollowd import cli
from tests.helpers import movie, movies_producer, populate


@pytest.fixture
def published(root: Path) -> Path:
    with movies_producer(root) as p:
        p.run_cycle(populate(movie(i) for i in range(20)))
        p.run_cycle(
            lambda s: (
                s.add_all("Movie", [movie(i) for i in range(21)]),
                s.add("Role", {"movieId": 3, "actorId": 7, "character": "Ripley"}),
            )
        )
    return root


def run(root: Path, *args: str, json_out: bool = False) -> tuple[int, str, str]:
    argv = ["--root", str(root), *(["--json"] if json_out else []), *args]
    proc = subprocess.run(
        [sys.executable, "-m", "hollowd.cli", *argv], capture_output=True, text=True, timeout=60, check=False
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_status_human_and_json(published: Path) -> None:
    rc, out, _ = run(published, "status", "movies")
    assert rc == 0
    assert "announced 2" in out
    assert "announced latest" in out
    base = (published / "movies" / "1").stat().st_size
    assert f"+ base {base:,}" in out  # version 2 is an overlay on version 1's file
    rc, out, _ = run(published, "status", "movies", json_out=True)
    doc = json.loads(out)
    assert (rc, doc["announced"], doc["latest"], doc["pinned"]) == (0, 2, 2, None)
    assert [v["version"] for v in doc["versions"]] == [1, 2]
    assert [v["base_bytes"] for v in doc["versions"]] == [0, base]


def test_versions(published: Path) -> None:
    rc, out, _ = run(published, "versions", "movies", json_out=True)
    doc = json.loads(out)
    assert rc == 0
    assert [(v["version"], v["announced"]) for v in doc] == [(1, False), (2, True)]
    assert all(v["bytes"] == os.path.getsize(published / "movies" / str(v["version"])) for v in doc)


def test_get_by_key_composite_key_and_version(published: Path) -> None:
    rc, out, _ = run(published, "get", "movies", "Movie", "20", json_out=True)
    assert rc == 0
    assert json.loads(out)["record"]["title"] == "Movie 20"
    rc, out, _ = run(published, "get", "movies", "Role", "[3, 7]", json_out=True)
    assert (rc, json.loads(out)["record"]["character"]) == (0, "Ripley")
    rc, out, _ = run(published, "get", "movies", "Movie", "5")
    assert rc == 0
    assert "title: Movie 5" in out
    rc, _, err = run(published, "get", "--version", "1", "movies", "Movie", "20")
    assert rc == cli.EXIT_NOT_FOUND
    assert "not found in version 1" in err


@pytest.mark.parametrize(
    ("args", "status", "says"),
    [
        (("get", "nothere", "Movie", "1"), cli.EXIT_NOT_FOUND, "does not exist"),
        (("get", "movies", "Nope", "1"), cli.EXIT_NOT_FOUND, "no record type 'Nope'"),
        (("get", "movies", "Movie", "abc"), cli.EXIT_USAGE, "invalid literal"),
        (("get", "movies", "Role", "3"), cli.EXIT_USAGE, "composite key"),
        (("inspect", "movies", "9"), cli.EXIT_NOT_FOUND, "version 9 does not exist"),
        (("status", "no/such"), cli.EXIT_USAGE, "invalid namespace name"),
    ],
)
def test_errors_have_exit_codes(published: Path, args: tuple[str, ...], status: int, says: str) -> None:
    rc, _, err = run(published, *args)
    assert rc == status
    assert says in err


def test_corrupt_file_exit_code(published: Path) -> None:
    (published / "movies" / "7").write_bytes(b"not a state file" * 20)
    rc, _, err = run(published, "inspect", "movies", "7")
    assert rc == cli.EXIT_CORRUPT
    assert "magic" in err


def test_inspect(published: Path) -> None:
    rc, out, _ = run(published, "inspect", "movies", json_out=True)
    doc = json.loads(out)
    assert rc == 0
    counts = {t["name"]: t["records"] for t in doc["types"]}
    assert counts == {"Actor": 0, "Movie": 21, "Role": 1}
    assert "struct Movie" in doc["schema"]
    base = (published / "movies" / "1").stat().st_size
    assert doc["base"] == {"version": 1, "bytes": base}  # version 2 is an overlay on version 1's file
    assert {t["name"]: t["changed_since_base"] for t in doc["types"]} == {"Actor": 0, "Movie": 1, "Role": 1}
    rc, out, _ = run(published, "inspect", "movies", "1")
    assert rc == 0
    assert "Movie" in out
    assert "20" in out
    assert "on the base of" not in out
    rc, out, _ = run(published, "inspect", "movies", "2")
    assert f"on the base of version 1 ({base:,} bytes, shared)" in out


def test_diff_field_by_field(published: Path) -> None:
    rc, out, _ = run(published, "diff", "movies", "1", "2", json_out=True)
    doc = json.loads(out)
    assert rc == 0
    assert doc["types"]["Movie"]["added"] == [20]
    assert doc["types"]["Movie"]["removed"] == []
    assert doc["types"]["Role"]["added"] == [[3, 7]]
    rc, out, _ = run(published, "diff", "movies", "2", "1")
    assert "Movie: 0 added, 1 removed, 0 changed" in out
    assert "- 20" in out


def test_diff_shows_changed_fields(root: Path) -> None:
    with movies_producer(root) as p:
        p.run_cycle(populate(movie(i) for i in range(3)))
        p.run_cycle(populate([movie(0), movie(1, title="Changed", year=2001), movie(2)]))
    rc, out, _ = run(root, "diff", "movies", "1", "2", json_out=True)
    assert rc == 0
    changed = json.loads(out)["types"]["Movie"]["changed"]
    assert changed == {"1": {"title": ["Movie 1", "Changed"], "year": [1951, 2001]}}
    rc, out, _ = run(root, "diff", "movies", "1", "2")
    assert "~ 1: title: 'Movie 1' -> 'Changed'; year: 1951 -> 2001" in out


def test_history(published: Path) -> None:
    rc, out, _ = run(published, "history", "movies", json_out=True)
    doc = json.loads(out)
    assert rc == 0
    assert [(d["version"], d["parent"], d["records"]["Movie"]) for d in doc] == [(1, None, 20), (2, 1, 21)]
    rc, out, _ = run(published, "history", "movies")
    assert "Movie 21" in out


def test_schema_check(published: Path, tmp_path: Path) -> None:
    schema = (Path(__file__).resolve().parent.parent / "schemas" / "movies.capnp").read_text()
    ok = tmp_path / "newer.capnp"
    ok.write_text(schema.replace("  releasedAt @6 :Timestamp;", "  releasedAt @6 :Timestamp;\n  subtitle @7 :Text;"))
    rc, out, _ = run(published, "schema", "check", str(ok), "--namespace", "movies")
    assert rc == 0
    assert "can read movies's data" in out
    bad = tmp_path / "bad.capnp"
    bad.write_text(schema.replace("year @2 :UInt16;", "year @2 :Text;"))
    rc, out, _ = run(published, "schema", "check", str(bad), "--namespace", "movies", json_out=True)
    assert rc == cli.EXIT_INCOMPATIBLE
    assert json.loads(out)["problems"] == ["Movie.year (@2) changes type uint16 -> text"]
    broken = tmp_path / "broken.capnp"
    broken.write_text(schema.replace("UInt16", "NoSuchType"))
    rc, _, err = run(published, "schema", "check", str(broken))
    assert rc == cli.EXIT_USAGE
    assert "does not compile" in err

"""Sources that would wipe or corrupt a dataset (issue 9, item 16): empty reads are refused unless the
namespace allows them, keys of the wrong type are refused, and the daemon keeps its last good version."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import hollow
import hollowd
from hollowd.sources import FileSource
from tests.daemons import Daemon, announced, movies_config, wait_until, write_jsonl
from tests.helpers import movie, movies_producer

EMPTY = {
    "0-byte JSON Lines": ("movies.jsonl", b""),
    "blank lines only": ("movies.jsonl", b"\n  \n\n"),
    "[] as JSON": ("movies.json", b"[]"),
    "{} as JSON": ("movies.json", b"{}"),
    "a CSV header alone": ("movies.csv", b"id,title\n"),
}


@pytest.mark.parametrize("case", list(EMPTY))
def test_an_empty_source_is_refused_and_the_last_version_stays(root: Path, tmp_path: Path, case: str) -> None:
    name, data = EMPTY[case]
    path = tmp_path / name
    with movies_producer(root) as p:
        good = tmp_path / "good.jsonl"
        write_jsonl(good, [movie(i) for i in range(3)])
        assert p.run_cycle(FileSource(good, p.schema, type_name="Movie")) == 1
        path.write_bytes(data)
        with pytest.raises(hollowd.Error, match=r"gave no records.*allow_empty"):
            p.run_cycle(FileSource(path, p.schema, type_name="Movie"))
        assert p.run_cycle(FileSource(path, p.schema, type_name="Movie", allow_empty=True)) == 2
    with hollow.open("movies", root=root) as ds, ds.snapshot() as snap:
        assert len(snap["Movie"]) == 0  # allowed: then it is what the source says


def test_a_source_replaced_by_an_empty_directory_is_refused(root: Path, tmp_path: Path) -> None:
    src = tmp_path / "feed"
    src.mkdir()
    with movies_producer(root) as p:
        with pytest.raises(hollowd.Error, match="gave no records"):
            p.run_cycle(FileSource(src, p.schema, type_name="Movie"))
        assert p.versions() == []


@pytest.mark.parametrize("allow", [False, True], ids=["refused", "allowed"])
def test_the_daemon_keeps_serving_when_its_source_is_emptied(root: Path, tmp_path: Path, allow: bool) -> None:
    source, state = tmp_path / "movies.jsonl", tmp_path / "state"
    write_jsonl(source, [movie(i) for i in range(5)])
    config = movies_config(tmp_path, root, source, state=state, namespace="allow_empty = true" if allow else "")
    d = Daemon(config, tmp_path)
    try:
        d.notifications("READY=1")
        tmp = source.with_name(".movies.jsonl.tmp")
        tmp.write_bytes(b"")
        os.rename(tmp, source)
        if allow:
            wait_until(lambda: announced(root) == 2)
        else:
            wait_until(lambda: "gave no records" in d.log.read_text())
            assert announced(root) == 1
            with hollow.open("movies", root=root) as ds, ds.snapshot() as snap:
                assert len(snap["Movie"]) == 5
    finally:
        assert d.stop(signal.SIGTERM) == 0

"""Crashes and full disks at the edges (issue 9, items 10-13 and 18), on real tmpfs mounts.

A cycle either publishes and announces its version, or fails with a named error
before anything is published; what a failure or a kill leaves is swept; and the
versions present stay within what the README promises.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hollow
import hollowd
from hollow import layout
from tests.helpers import movie, movies_producer, populate


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A real tmpfs mounted at *where* (skips where mounting is not permitted)."""
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


def announced(root: Path) -> int:
    doc: dict[str, Any] = json.loads(layout.announcement_path(root / "movies").read_bytes())
    return int(doc["version"])


def reader_version(root: Path) -> int:
    with hollow.open("movies", root=root, follow=False) as ds:
        return ds.version


def titles(n: int, tag: str = "") -> Any:
    return populate(movie(i, title=f"Movie {i}{tag}") for i in range(n))


def fill_inodes(root: Path, free: int) -> list[Path]:
    """Files that leave exactly *free* inodes of the mount free."""
    made = []
    while os.statvfs(root).f_ffree > free:
        path = root / f"filler{len(made)}"
        path.touch()
        made.append(path)
    assert os.statvfs(root).f_ffree == free
    return made


# -- item 11: a full /dev/shm at the edges ------------------------------------------------------


@pytest.mark.parametrize("free", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("kind", ["base", "overlay"])
def test_few_free_inodes_fail_the_cycle_before_publishing_or_it_is_announced(
    tmp_path: Path, free: int, kind: str
) -> None:
    """A base needs a state file, a lockfile and the announcement; an overlay its base link too."""
    with tmpfs(tmp_path / "shm", "size=8m,nr_inodes=64") as shm, movies_producer(shm, retain=1) as p:
        before = 0
        if kind == "overlay":
            before = p.run_cycle(titles(10))
        fillers = fill_inodes(shm, free)
        try:
            v = p.run_cycle(titles(10, "new"))
        except hollowd.StorageFullError as e:
            error = str(e)
        else:
            error = ""
        if error:
            assert "inodes free" in error
            # nothing was published: the namespace is as it was, with no debris
            assert layout.list_versions(shm / "movies") == ([before] if before else [])
            if before:
                assert announced(shm) == before
            ann = shm / "movies" / layout.ANNOUNCE_DIR
            names = set(os.listdir(shm / "movies")) | (set(os.listdir(ann)) if ann.exists() else set())
            assert {n for n in names if n.startswith(".")} == {".producer.lock"}
        else:
            assert announced(shm) == v == before + 1  # published and announced, never one without the other
        for f in fillers:
            f.unlink()
        assert p.run_cycle(titles(10, "later")) == announced(shm)
        assert reader_version(shm) == announced(shm)


def test_a_full_mount_is_made_room_on_by_reclaiming_retained_versions(tmp_path: Path) -> None:
    """retain keeps old versions for rollbacks; when they are what stops the next version, they go first."""

    def version(n: int) -> Any:  # a base of about 1.6 MB; each later version an overlay of about 1 MB
        return populate(movie(i, title=(f"{n}-{i}" if i < 500 else str(i)) + "x" * 900) for i in range(1500))

    with tmpfs(tmp_path / "shm", "size=10m") as shm, movies_producer(shm, retain=5) as p:
        made = [p.run_cycle(version(n)) for n in range(7)]
        assert made == list(range(1, 8))
        assert announced(shm) == 7
        assert reader_version(shm) == 7
        assert len(layout.list_versions(shm / "movies")) < 5  # it could not have kept them all


# -- item 13: debris ----------------------------------------------------------------------------

KILLED_ANNOUNCING = r"""
import os, sys
from hollowd import publish
ns_dir = __import__("pathlib").Path(sys.argv[1])
publish.reserve_announcement(ns_dir, 0o640)  # what a producer killed between publish and announce leaves
os._exit(0)
"""


def test_debris_of_a_killed_writer_is_swept_without_waiting_for_a_publish(root: Path) -> None:
    with movies_producer(root) as p:
        assert p.run_cycle(titles(5)) == 1
        ns_dir = root / "movies"
        subprocess.run([sys.executable, "-c", KILLED_ANNOUNCING, str(ns_dir)], check=True)
        (ns_dir / "7.lock").touch()  # a lockfile whose version is gone (a kill mid-removal)
        debris = {n for n in os.listdir(ns_dir / layout.ANNOUNCE_DIR) if n.endswith(".tmp")}
        assert len(debris) == 1
        assert p.run_cycle(titles(5)) == 1  # nothing changed: nothing is published
        assert [n for n in os.listdir(ns_dir / layout.ANNOUNCE_DIR) if n.endswith(".tmp")] == []
        assert not (ns_dir / "7.lock").exists()


# -- item 10: published, never announced ----------------------------------------------------------

# A producer killed after its version was renamed into place, before the announcement was written
# (the kill is the test's: announce is replaced by an _exit in this child only).
KILLED_BEFORE_ANNOUNCING = r"""
import os, sys
sys.path.insert(0, os.getcwd())
from hollowd import publish
from tests.helpers import SCHEMAS, movie, movies_producer, populate
publish.announce = lambda *a, **k: os._exit(9)
p = movies_producer(__import__("pathlib").Path(sys.argv[1]))
p.run_cycle(populate(movie(i, title=f"Movie {i}new") for i in range(10)))
"""


def test_a_version_published_but_never_announced_is_announced_by_the_next_cycle(root: Path) -> None:
    from tests.helpers import ROOT  # noqa: PLC0415

    with movies_producer(root) as p:
        assert p.run_cycle(titles(10)) == 1
    done = subprocess.run([sys.executable, "-c", KILLED_BEFORE_ANNOUNCING, str(root)], cwd=ROOT, check=False)
    assert done.returncode == 9
    assert layout.list_versions(root / "movies") == [1, 2]
    assert announced(root) == 1
    with movies_producer(root) as p:
        assert p.run_cycle(titles(10, "new")) == 2  # the same data: nothing to publish, but 2 is announced
        assert announced(root) == 2
        assert [n for n in os.listdir(root / "movies" / layout.ANNOUNCE_DIR) if n.endswith(".tmp")] == []
    assert reader_version(root) == 2


# -- item 12: rm -rf of a namespace directory under a running daemon ----------------------------


def test_a_removed_namespace_directory_is_recreated_and_numbering_goes_on(root: Path, tmp_path: Path) -> None:
    from tests.daemons import Daemon, movies_config, wait_until, write_jsonl  # noqa: PLC0415
    from tests.test_damage import FOLLOWER  # noqa: PLC0415
    from tests.test_follow import Child  # noqa: PLC0415

    source = tmp_path / "movies.jsonl"
    write_jsonl(source, [movie(i, title="v1" if i == 0 else f"Movie {i}") for i in range(5)])
    config = movies_config(tmp_path, root, source)
    d = Daemon(config, tmp_path)
    try:
        d.notifications("READY=1")
        with Child(FOLLOWER, root) as child:
            child.expect("ready", version=1)
            write_jsonl(source, [movie(i, title="v2" if i == 0 else f"Movie {i}") for i in range(5)])
            child.expect("on", version=2)
            shutil.rmtree(root / "movies")  # an operator, or systemd's RemoveIPC
            write_jsonl(source, [movie(i, title="v3" if i == 0 else f"Movie {i}") for i in range(5)])
            child.expect("on", version=3)  # numbering goes on; the follower recovers
            child.send("ask")
            assert child.expect("state")["title"] == "v3"
            with pytest.raises(hollowd.ProducerLockedError):  # the daemon holds the new directory's lock
                movies_producer(root)
            child.finish()
        wait_until(lambda: announced(root) == 3)
    finally:
        assert d.stop() == 0

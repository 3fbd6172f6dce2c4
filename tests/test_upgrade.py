"""A producer upgraded across a format change carries on from a namespace written by the old one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import hollow
from hollow import layout
from tests.golden import dataset
from tests.helpers import movie, movies_producer, populate

GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.mark.parametrize("old", ["v1", "v2"])
def test_producer_continues_after_an_older_format(root: Path, old: str) -> None:
    ns = root / "movies"
    ns.mkdir()
    shutil.copyfile(GOLDEN / old / "movies.state", ns / "2")  # golden files hold version 2
    layout.announcement_path(ns).parent.mkdir()
    layout.announcement_path(ns).write_bytes(layout.Announcement(2).dumps())
    with pytest.raises(hollow.CorruptStateError, match="older"):
        hollow.open("movies", root=root)
    with movies_producer(root, primary_keys=dataset.KEYS, indexes=dataset.INDEXES) as p:
        v = p.run_cycle(populate(movie(i) for i in range(10)))
    assert v == 3  # numbering goes on from the old files
    with hollow.open("movies", root=root) as ds, ds.snapshot() as snap:
        assert snap.version == 3
        assert snap["Movie"][9].title == "Movie 9"

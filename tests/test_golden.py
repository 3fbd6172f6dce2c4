"""Golden files pin the state-file format (tests/golden/v<FORMAT_VERSION>/).

If a change moves bytes, these fail: then either the change was a mistake, or
it is a format change: bump ``hollow.layout.FORMAT_VERSION`` and run
``python -m tests.golden.dataset`` to add the new version's golden files.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest

import hollow
from hollow import layout
from tests.golden import dataset

GOLDEN = Path(__file__).resolve().parent / "golden"
VERSIONS = sorted(p for p in GOLDEN.iterdir() if p.is_dir() and p.name.startswith("v"))


def test_current_format_has_golden_files() -> None:
    assert (GOLDEN / f"v{layout.FORMAT_VERSION}" / "movies.state").is_file(), (
        "no golden files for the current FORMAT_VERSION: run python -m tests.golden.dataset"
    )


def test_producer_writes_the_golden_bytes(root: Path) -> None:
    path = dataset.produce(root)
    produced, produced_base, produced_mid = path.read_bytes(), _base_of(path), _mid_of(path)
    golden_path = GOLDEN / f"v{layout.FORMAT_VERSION}" / "movies.state"
    golden, golden_base, golden_mid = golden_path.read_bytes(), _base_of(golden_path), _mid_of(golden_path)
    assert (produced_base is None) == (golden_base is None)
    assert (produced_mid is None) == (golden_mid is None)
    for mine, theirs in ((produced, golden), (produced_base, golden_base), (produced_mid, golden_mid)):
        if mine is None or theirs is None:
            continue
        mine_n = dataset.normalized(mine, produced_base, produced_mid)
        assert mine_n == dataset.normalized(theirs, golden_base, golden_mid), (
            "the state-file bytes changed without a FORMAT_VERSION bump; if that is meant, bump it and "
            "run python -m tests.golden.dataset"
        )


def _base_of(path: Path) -> bytes | None:
    base = path.with_name(path.name + ".base")
    return base.read_bytes() if base.exists() else None


def _mid_of(path: Path) -> bytes | None:
    mid = path.with_name(path.name + ".mid")
    return mid.read_bytes() if mid.exists() else None


def _install(root: Path, golden: Path) -> None:
    ns = root / "movies"
    ns.mkdir()
    data = golden.read_bytes()
    version = int.from_bytes(data[16:24], "little")  # where every format so far keeps it
    (ns / str(version)).write_bytes(data)
    base = _base_of(golden)
    if base is not None:  # format 4: a version built on a base
        (ns / f"{version}.base").write_bytes(base)
    mid = _mid_of(golden)
    if mid is not None:  # format 5: a version over a mid
        (ns / f"{version}.mid").write_bytes(mid)
    layout.announcement_path(ns).parent.mkdir()
    layout.announcement_path(ns).write_bytes(layout.Announcement(version).dumps())


def _same(value: Any, expected: Any) -> bool:
    if isinstance(expected, float):
        return math.isclose(value, struct.unpack("<f", struct.pack("<f", expected))[0])
    if isinstance(expected, dict):
        return all(_same(getattr(value, k), v) for k, v in expected.items())
    if isinstance(expected, list):
        return len(value) == len(expected) and all(_same(a, b) for a, b in zip(value, expected, strict=True))
    return bool(value == expected)


@pytest.mark.parametrize("golden", VERSIONS, ids=[p.name for p in VERSIONS])
def test_reader_reads_golden_file(root: Path, golden: Path) -> None:
    _install(root, golden / "movies.state")
    expected = json.loads((golden / "movies.json").read_text())
    if golden.name != f"v{layout.FORMAT_VERSION}":
        with pytest.raises(hollow.CorruptStateError, match="format"):
            hollow.open("movies", root=root)
        return
    with hollow.open("movies", root=root) as ds, ds.snapshot() as snap:
        for type_name, records in expected.items():
            view = snap[type_name]
            assert len(view) == len(records)
            for record in records:
                key = record["id"] if "id" in record else (record["movieId"], record["actorId"])
                assert _same(view[key], record), (type_name, key)
        movies = snap["Movie"]
        # 7 filled the hole 2 left, 8 the hole 5 left (format 5: over a mid, version 2)
        assert [m.id for m in movies] == [1, 7, 3, 4, 8, 6]
        assert sorted(m.id for m in movies.find(genre="Crime")) == [1, 8]
        assert [m.id for m in movies.find(genre="Thriller")] == [6]
        assert [m.id for m in movies.find(year=1954, genre="Drama")] == [7]
        assert sorted(r.movieId for r in snap["Role"].find(actorId=11)) == [1]

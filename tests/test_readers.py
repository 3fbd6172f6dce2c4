"""Many reader processes on one published version: same data, same pages, no crash."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import hollow
import hollowd.overlay
from tests.helpers import ROOT, f32, movie, movies_producer, populate, run_python


def expected(i: int) -> list[Any]:
    m = movie(i)
    return [m["title"], m["year"], f32(m["rating"]), m["genre"], m["tags"], m["releasedAt"]["unixMillis"]]  # type: ignore[index]


# Looks up keys start, start+step, ... (count of them) and some absent keys; prints what it read.
LOOKUP = r"""
import json, sys
import hollow
root, start, step, count = sys.argv[1], *map(int, sys.argv[2:5])
out = {"values": {}, "absent": []}
with hollow.open("movies", root=root) as ds, ds.snapshot() as snap:
    out["version"] = snap.version
    movies = snap["Movie"]
    out["count"] = len(movies)
    for i in range(start, start + step * count, step):
        m = movies[i]
        out["values"][i] = [m.title, m.year, m.rating, m.genre, list(m.tags), m.releasedAt.unixMillis]
    for i in range(10**6, 10**6 + 100):
        if movies.get(i) is not None or i in movies:
            out["absent"].append(i)
print(json.dumps(out))
"""


def test_four_reader_processes_agree_with_the_producer(root: Path) -> None:
    with movies_producer(root) as p:
        v = p.run_cycle(populate(movie(i) for i in range(10_000)))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LOOKUP, str(root), str(k), "10", "1000"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(4)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    for k, r in enumerate(results):
        assert r["version"] == v
        assert r["count"] == 10_000
        assert r["absent"] == []
        assert len(r["values"]) == 1000
        for key, got in r["values"].items():
            assert got == expected(int(key)), key
        assert sorted(map(int, r["values"])) == list(range(k, 10_000, 10))


def test_reader_started_after_announcement_attaches_to_it_at_once(root: Path) -> None:
    with movies_producer(root) as p:
        for n in (1, 2, 3):
            p.run_cycle(populate(movie(i, title=f"v{n}") for i in range(10)))
        out = run_python(LOOKUP, str(root), "0", "1", "3")
        assert out["version"] == 3
        assert out["values"]["0"][0] == "v3"
        p.pin(2)
        out = run_python(LOOKUP, str(root), "0", "1", "3")
        assert out["version"] == 2
        assert out["values"]["0"][0] == "v2"


# Keeps records, a TypeView and a find() result past the end of the snapshot
# block, past ds.close(), and past the deletion of the version's file by the
# producer's reclaim; then reads them.
ESCAPE = r"""
import gc, json, os, sys
import hollow
from tests.helpers import movie, movies_producer, populate
root = sys.argv[1]
with hollow.open("movies", root=root) as ds:
    with ds.snapshot() as snap:
        version = snap.version
        m = snap["Movie"][7]
        view = snap["Movie"]
        drama = view.find(genre="Drama")
        first = next(iter(view))
with movies_producer(root, retain=1) as p:
    for n in range(3):
        p.run_cycle(populate(movie(i, title=f"new {n}") for i in range(20)))
    gone = not os.path.exists(os.path.join(root, "movies", str(version)))
    versions = p.versions()
del snap, ds
gc.collect()
print(json.dumps({
    "gone": gone,
    "versions": versions,
    "m": [m.id, m.title, list(m.tags), m.releasedAt.unixMillis],
    "via_view": view[8].title,
    "drama": sorted(r.id for r in drama),
    "first": first.title,
    "len": len(view),
}))
"""


def test_escaped_records_stay_readable_after_close_and_reclaim(root: Path) -> None:
    with movies_producer(root) as p:
        v = p.run_cycle(populate(movie(i) for i in range(20)))
    out = run_python("import sys; sys.path.insert(0, sys.argv[2])\n" + ESCAPE, str(root), str(ROOT))
    assert out["gone"] is True, "the version was not reclaimed; the test did not test anything"
    assert v not in out["versions"]
    assert out["m"] == [7, "Movie 7", ["classic", "restored"], 1_600_000_000_007]
    assert out["via_view"] == "Movie 8"
    assert out["drama"] == [i for i in range(20) if i % 5 == 0]
    assert out["first"] == "Movie 0"
    assert out["len"] == 20


def test_long_lived_reader_is_not_stopped_by_the_traversal_limit(root: Path) -> None:
    # pycapnp's default limit is 8 Mi words (64 MiB) of cumulative traversal per message.
    n, title_len = 2000, 4000
    with movies_producer(root) as p:
        p.run_cycle(populate(movie(i, title=f"{i:08d}" + "x" * title_len) for i in range(n)))
    words = 0
    with hollow.open("movies", root=root) as ds:
        for _ in range(20):
            with ds.snapshot() as snap:
                for m in snap["Movie"]:
                    words += (len(m.title) + 8) // 8  # the Text's words, NUL included
                assert snap["Movie"][n - 1].title.startswith(f"{n - 1:08d}")
    assert words * 8 > 2 * 64 * 2**20  # the reads went well past the default limit


def test_open_snapshot_keeps_its_version_while_new_one_is_published(root: Path) -> None:
    def fill(title: str, drop: int | None = None) -> Any:
        def f(state: Any) -> None:
            for i in range(10):
                if i != drop:
                    state.add("Movie", movie(i, title=f"{title} {i}"))
                    state.add("Actor", {"id": i, "name": f"{title} actor {i}"})

        return f

    with movies_producer(root) as p:
        v1 = p.run_cycle(fill("old"))
        ds = hollow.open("movies", root=root)
        with ds.snapshot() as old:
            v2 = p.run_cycle(fill("new", drop=8))
            assert v2 == v1 + 1
            assert ds.wait_for(v2, timeout=60)  # the dataset follows in the background
            with ds.snapshot() as new:
                assert (old.version, new.version) == (v1, v2)
                assert (old["Movie"][7].title, old["Actor"][7].name) == ("old 7", "old actor 7")
                assert (new["Movie"][7].title, new["Actor"][7].name) == ("new 7", "new actor 7")
                assert 8 in old["Movie"]
                assert 8 in old["Actor"]
                assert 8 not in new["Movie"]
                assert 8 not in new["Actor"]
                assert len(old["Movie"]) == 10
                assert len(new["Movie"]) == 9
            # the old snapshot is unchanged after the new one closed
            assert [m.title for m in old["Movie"]][:3] == ["old 0", "old 1", "old 2"]
        assert ds.version == v2
        ds.close()


def test_closed_snapshot_and_dataset_raise_closed_error(root: Path) -> None:
    with movies_producer(root) as p:
        p.run_cycle(populate([movie(1)]))
    ds = hollow.open("movies", root=root)
    snap = ds.snapshot()
    snap.close()
    with pytest.raises(hollow.ClosedError):
        snap["Movie"]
    ds.close()
    with pytest.raises(hollow.ClosedError):
        ds.snapshot()
    with pytest.raises(hollow.ClosedError):
        ds.attach(1)


def test_unknown_type_is_unknown_type_error_and_key_error(root: Path) -> None:
    with movies_producer(root) as p:
        p.run_cycle(populate([movie(1)]))
    with hollow.open("movies", root=root) as ds, ds.snapshot() as snap:
        with pytest.raises(hollow.UnknownTypeError) as info:
            snap["Film"]
        assert isinstance(info.value, KeyError)
        assert "Film" in str(info.value)
        assert "Movie" in str(info.value)
        with pytest.raises(KeyError):
            snap["Movie"][2]


def test_open_missing_namespace_and_bad_name(root: Path) -> None:
    with pytest.raises(hollow.NamespaceNotFoundError):
        hollow.open("nothing", root=root)
    with pytest.raises(hollow.InvalidNameError):
        hollow.open("../etc", root=root)


# -- the mapping is shared, not copied ------------------------------------------------

SMAPS = r"""
import json, os, sys
import hollow

def mappings(path):
    # perms and sizes (kB) of each mapping of *path* in this process.
    out, cur = [], None
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and ":" not in parts[0]:
                cur = None
                if len(parts) >= 6 and parts[5] == path:
                    cur = {"perms": parts[1], "Rss": 0, "Shared_Clean": 0, "Shared_Dirty": 0, "Private_Dirty": 0}
                    out.append(cur)
            elif cur is not None and parts[0].rstrip(":") in cur:
                cur[parts[0].rstrip(":")] = int(parts[1])
    return out

def rollup():
    vals = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if parts[0] in ("Private_Dirty:", "Anonymous:"):
                vals[parts[0].rstrip(":")] = int(parts[1])
    return vals

root = sys.argv[1]
with hollow.open("movies", root=root) as ds, ds.snapshot() as snap:
    path = os.path.join(root, "movies", str(snap.version))
    out = {"before": mappings(path), "rollup_before": rollup()}
    total = 0
    for m in snap["Movie"]:
        total += len(m.title)
    out["after"] = mappings(path)
    out["rollup_after"] = rollup()
    out["size_kb"] = os.path.getsize(path) // 1024
    out["chars"] = total
    print(json.dumps(out), flush=True)
    sys.stdin.readline()  # stay mapped until told
"""


def test_state_file_is_mapped_shared_and_not_copied(root: Path) -> None:
    n = 10_000
    with movies_producer(root) as p:
        p.run_cycle(populate(movie(i, title=f"{i:06d}" + "t" * 3000) for i in range(n)))
    procs = []
    results = []
    try:
        for _ in range(2):  # the second reader scans while the first still has the file mapped
            proc = subprocess.Popen(
                [sys.executable, "-c", SMAPS, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            procs.append(proc)
            assert proc.stdout is not None
            results.append(json.loads(proc.stdout.readline()))
    finally:
        for proc in procs:
            assert proc.stdin is not None
            assert proc.stdout is not None
            proc.stdin.close()
            proc.stdout.close()
            proc.wait(timeout=60)
    assert [proc.returncode for proc in procs] == [0, 0]
    for r in results:
        size = r["size_kb"]
        assert size > 25_000  # the file is big enough for the checks below to mean something
        assert r["chars"] == n * 3006
        assert r["before"], "the state file is not mapped"
        assert all("s" in m["perms"] and "w" not in m["perms"] for m in r["after"]), r["after"]
        rss_before = sum(m["Rss"] for m in r["before"])
        rss_after = sum(m["Rss"] for m in r["after"])
        assert rss_before < size // 4  # attaching reads a header and an envelope, not the file
        assert rss_after - rss_before > size // 2  # the scan read the file's pages through the mapping
        # tmpfs pages count as dirty even in a shared file mapping, so compare what is
        # private outside the mapping: anonymous memory and private dirty pages elsewhere.
        anon = r["rollup_after"]["Anonymous"] - r["rollup_before"]["Anonymous"]
        dirty_before = r["rollup_before"]["Private_Dirty"] - sum(m["Private_Dirty"] for m in r["before"])
        dirty_after = r["rollup_after"]["Private_Dirty"] - sum(m["Private_Dirty"] for m in r["after"])
        assert anon < size // 4
        assert dirty_after - dirty_before < size // 4
    # while the first reader holds its pages, the second one's are the same physical pages
    shared = sum(m["Shared_Clean"] + m["Shared_Dirty"] for m in results[1]["after"])
    assert shared > results[1]["size_kb"] // 2


def test_a_lookup_by_key_attaches_no_secondary_index_table(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh process's first lookup pays only for the tables it reads (docs/decisions.md §61):
    the primary key's (and, on an overlay, its keys table); each secondary table on its first find."""
    attached: list[str] = []
    real = hollow.view.IndexTable.attach.__func__  # type: ignore[attr-defined]

    def counting(cls: Any, ix: Any, view: Any, size: int, *, what: str) -> Any:
        attached.append(what.rsplit(": ", 1)[-1])
        return real(cls, ix, view, size, what=what)

    monkeypatch.setattr(hollow.view.IndexTable, "attach", classmethod(counting))
    with movies_producer(root) as p:
        p.run_cycle(populate(movie(i) for i in range(20)))
        p.run_incremental(lambda d: d.upsert("Movie", movie(3, title="changed")))  # an overlay on the base
    attached.clear()  # (the producer read its versions back)
    with hollow.open("movies", root=root, follow=False) as ds, ds.snapshot() as snap:
        assert snap["Movie"].get(3).title == "changed"
        assert sorted(attached) == ["Movie overlay keys", "Movie primary key"]
        assert [m.id for m in snap["Movie"].find(genre="Comedy")] == [i for i in range(20) if i % 5 == 1]
        assert sorted(attached[2:]) == ["Movie index", "Movie overlay index", "Movie overlay index"]


@pytest.mark.parametrize("level", ["over a base", "over a mid"])
def test_a_lookup_the_bloom_array_rules_out_reads_no_overlay_entries(
    root: Path, monkeypatch: pytest.MonkeyPatch, level: str
) -> None:
    """A fresh process's first lookup is most likely of a key no overlay holds: its bloom byte rules the
    overlay out, so neither the overlay's key table nor its entry ordinals are read, nor any level's
    holes (docs/decisions.md §80). A key the overlay does hold reads them then, and finds its record."""
    attached: list[str] = []
    entries: list[str] = []
    real_attach = hollow.view.IndexTable.attach.__func__  # type: ignore[attr-defined]
    real_entries = getattr(hollow.state.StateFile, "_entries", None)  # (None before §80: the test fails below)
    real_holes = hollow.state.StateFile._holes
    holes: list[int] = []

    def counting(cls: Any, ix: Any, view: Any, size: int, *, what: str) -> Any:
        attached.append(what.rsplit(": ", 1)[-1])
        return real_attach(cls, ix, view, size, what=what)

    def reading(self: Any, ov: Any, n: int, name: str) -> Any:
        entries.append(f"{self.version}: {name}")
        return real_entries(self, ov, n, name)  # type: ignore[misc]

    monkeypatch.setattr(hollow.view.IndexTable, "attach", classmethod(counting))
    monkeypatch.setattr(hollow.state.StateFile, "_entries", reading, raising=False)

    def reading_holes(self: Any, ts: Any) -> Any:
        holes.append(self.version)
        return real_holes(self, ts)

    monkeypatch.setattr(hollow.state.StateFile, "_holes", reading_holes)
    with movies_producer(root) as p:
        p.run_cycle(populate(movie(i) for i in range(200)))
        p.run_incremental(lambda d: d.upsert("Movie", movie(3, title="changed")))  # an overlay on the base
        if level == "over a mid":
            monkeypatch.setattr(hollowd.overlay, "TOP_FROM", 1)
            p.run_incremental(lambda d: d.upsert("Movie", movie(4, title="changed too")))
    attached.clear()  # (the producer read its versions back)
    entries.clear()
    holes.clear()
    with hollow.open("movies", root=root, follow=False) as ds, ds.snapshot() as snap:
        view = snap["Movie"]
        assert (snap.version, view.overlay is not None) == (3 if level == "over a mid" else 2, True)
        blooms = [view._bloom, *([view.mid._bloom] if level == "over a mid" else [])]  # type: ignore[attr-defined]
        ruled_out = next(k for k in range(5, 200) if not any(b[k % len(b)] for b in blooms))
        assert view.get(ruled_out).id == ruled_out
        assert (attached, entries, holes) == (["Movie primary key"], [], [])
        assert view.get(3).title == "changed"
        if level == "over a mid":
            assert view.get(4).title == "changed too"
            assert sorted(attached) == ["Movie overlay keys", "Movie overlay keys", "Movie primary key"]
            assert sorted(entries) == ["2: Movie", "3: Movie"]
        else:
            assert sorted(attached) == ["Movie overlay keys", "Movie primary key"]
            assert entries == ["2: Movie"]
        assert holes == []  # until something needs them: iterating
        assert len(list(view)) == 200
        assert holes


def test_a_large_bloom_array_is_read_in_place_not_copied_at_attach(root: Path) -> None:
    """Attaching a version is O(1) in its overlays: a bloom array past BLOOM_COPY_MAX bytes (a mid's grows
    with every change since the base) is read in place, a small one copied (docs/decisions.md §80)."""
    changed = 300  # 16 bytes of bloom a key: past 4096 bytes

    def change(d: Any) -> None:
        for i in range(changed):
            d.upsert("Movie", movie(i, title=f"changed {i}"))

    with movies_producer(root) as p:
        p.run_cycle(populate(movie(i) for i in range(400)))
        p.run_incremental(lambda d: d.upsert("Movie", movie(399, title="small")))  # version 2
        p.run_incremental(change)  # version 3: both changes
    with hollow.open("movies", root=root, follow=False) as ds:
        for version, big in ((2, False), (3, True)):
            with ds.attach(version) as snap:
                view = snap["Movie"]
                assert view.overlay is not None
                assert (len(view.overlay.bloom) > hollow.view.BLOOM_COPY_MAX) is big
                assert isinstance(view._bloom, memoryview if big else bytes)  # type: ignore[attr-defined]
                titles = [view.get(i).title for i in (0, changed - 1, changed, 399)]
                if big:
                    assert titles == ["changed 0", f"changed {changed - 1}", f"Movie {changed}", "small"]
                else:
                    assert titles == ["Movie 0", f"Movie {changed - 1}", f"Movie {changed}", "small"]

"""Versions in O(changes): a base plus an overlay (docs/decisions.md §18).

The property tests drive a producer through random sequences of full cycles,
incremental cycles, removals, producer restarts and compactions, and check
after every step that a fresh reader sees exactly what a model says: every
record by key, every field, the iteration order and every secondary-index
lookup. The model keeps ordinals by the documented rules (records keep their
ordinal; new ones fill the lowest free ordinal in the order given; holes at
the end shorten the list; a compaction with holes past half the list squeezes
them out, keeping order), so iteration order is checked against those rules,
not against the implementation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hollow
from hollow import layout
from hollowd import Producer, overlay
from hollowd.errors import DuplicateKeyError
from hollowd.state import Lines
from tests.helpers import movie, movies_producer, populate

ITEM_SCHEMA = Path(__file__).resolve().parent / "schemas" / "items.capnp"
EVERYTHING = Path(__file__).resolve().parent / "schemas" / "everything.capnp"
GROUPS = ["red", "green", "blue"]


def item_producer(root: Path, **kw: Any) -> Producer:
    kw.setdefault("compact_min", 10**9)  # compactions only where the test says
    return Producer(
        "items",
        schema=ITEM_SCHEMA,
        primary_keys={"Item": "id"},
        indexes={"Item": ["group", ["group", "n"]]},
        root=root,
        **{"retain": 2, **kw},
    )


class Model:
    """What readers must see, with ordinals kept by the documented rules.

    A cycle that publishes and leaves holes past half the list is compacted at once,
    and a compaction squeezes the holes out keeping the order.
    """

    def __init__(self) -> None:
        self.records: dict[int, dict[str, Any]] = {}
        self.ordinal: dict[int, int] = {}
        self.holes: list[int] = []
        self.size = 0

    def apply(self, upserts: list[dict[str, Any]], removals: list[int]) -> None:
        before = dict(self.records)
        self._apply(upserts, removals)
        if self.records != before:  # a version was published: holes past half the list are squeezed out
            self.compact()

    def _apply(self, upserts: list[dict[str, Any]], removals: list[int]) -> None:
        freed = [self.ordinal.pop(k) for k in removals if k in self.ordinal]
        for k in removals:
            self.records.pop(k, None)
        free = sorted(set(self.holes) | set(freed))
        for r in upserts:
            if r["id"] not in self.ordinal:
                if free:
                    self.ordinal[r["id"]] = free.pop(0)
                else:
                    self.ordinal[r["id"]] = self.size
                    self.size += 1
            self.records[r["id"]] = r
        while free and free[-1] == self.size - 1:
            free.pop()
            self.size -= 1
        self.holes = free

    def full(self, records: list[dict[str, Any]]) -> None:
        keys = {r["id"] for r in records}
        self.apply(records, [k for k in self.records if k not in keys])

    def compact(self) -> None:
        if len(self.holes) > overlay.MAX_HOLE_SHARE * self.size:
            order = sorted(self.ordinal, key=self.ordinal.__getitem__)
            self.ordinal = {k: i for i, k in enumerate(order)}
            self.holes, self.size = [], len(order)

    def order(self) -> list[int]:
        return sorted(self.ordinal, key=self.ordinal.__getitem__)


def check(root: Path, model: Model) -> None:
    with hollow.open("items", root=root, follow=False) as ds, ds.snapshot() as snap:
        items = snap["Item"]
        assert len(items) == len(model.records)
        assert [r.id for r in items] == model.order()
        for key, expected in model.records.items():
            got = items.get(key)
            assert got is not None, key
            assert got.to_dict() == expected, key
        for key in range(40):
            if key not in model.records:
                assert items.get(key) is None
                assert key not in items
        for g in GROUPS:
            want = [k for k in model.order() if model.records[k]["group"] == g]
            assert [r.id for r in items.find(group=g)] == want
            found = items.find(group=g)
            assert len(found) == len(want)
            assert [found[i].id for i in range(len(found))] == want
            for n in (0, 1):
                want_n = [k for k in want if model.records[k]["n"] == n]
                assert [r.id for r in items.find(group=g, n=n)] == want_n


records = st.builds(
    lambda i, name, g, n, tags, code: {"id": i, "name": name, "group": g, "n": n, "tags": tags, "code": code},
    st.integers(0, 39),
    st.sampled_from(["a", "b", "longer name", "ü"]),
    st.sampled_from(GROUPS),
    st.integers(0, 1),
    st.lists(st.sampled_from(["x", "y", "zz"]), max_size=3),
    st.sampled_from(["", "c1", "c2"]),
)
step = st.one_of(
    st.tuples(st.just("full"), st.lists(records, max_size=25)),
    st.tuples(st.just("inc"), st.lists(records, max_size=6), st.lists(st.integers(0, 39), max_size=6)),
    st.tuples(st.just("restart")),
    st.tuples(st.just("compact")),
)
#: Mostly small incremental cycles: what builds versions over a mid.
_inc = st.tuples(st.just("inc"), st.lists(records, max_size=4), st.lists(st.integers(0, 39), max_size=3))
small_steps = st.one_of(_inc, _inc, _inc, _inc, step)


def _unique(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for r in recs:
        out[r["id"]] = r
    return list(out.values())


def run_steps(
    first: list[dict[str, Any]], steps: list[Any], *, background: bool, top_from: int | None = None, top_min: int = 0
) -> None:
    """Drive a producer through *steps* and check a fresh reader against the model after each.

    *background*: a compaction starts in the background after every cycle, and the
    "compact" step waits for it (the next cycle then rebases on it); otherwise
    "compact" compacts in the call and nothing else compacts but holes past half.
    *top_from*: versions are written over a mid from overlays this small (overlay.TOP_FROM),
    until they hold *top_min* entries and tombstones (overlay.TOP_MIN) and a quarter of the mid's.
    """
    if top_from is not None:
        saved = overlay.TOP_FROM, overlay.TOP_MIN
        overlay.TOP_FROM, overlay.TOP_MIN = top_from, top_min
        try:
            run_steps(first, steps, background=background)
        finally:
            overlay.TOP_FROM, overlay.TOP_MIN = saved
        return
    root = Path(tempfile.mkdtemp(prefix="hollow-test-prop-", dir="/dev/shm"))
    kw: dict[str, Any] = {"compact_min": 0, "compact_share": 0.0} if background else {}
    model = Model()
    p = item_producer(root, **kw)
    try:
        first = _unique(first)
        p.run_cycle(populate(first, "Item"))
        model.full(first)
        check(root, model)
        for s in steps:
            if s[0] == "full":
                recs = _unique(s[1])
                p.run_cycle(populate(recs, "Item"))
                model.full(recs)
            elif s[0] == "inc":
                ups = _unique(s[1])
                rems = sorted(set(s[2]) - {r["id"] for r in ups})
                p.run_incremental(
                    lambda d, u=ups, r=rems: ([d.remove("Item", k) for k in r], [d.upsert("Item", x) for x in u])
                )
                model.apply(ups, rems)
            elif s[0] == "restart":
                p.close()
                p = item_producer(root, **kw)
            elif not background:
                p.compact()
                model.compact()
            elif p._compactor is not None:
                p._compactor.join()
            check(root, model)
    finally:
        try:
            p.close()
        finally:
            shutil.rmtree(root)  # also when closing fails after a failed step


@settings(
    max_examples=int(os.environ.get("HOLLOW_PROPERTY_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(records, min_size=1, max_size=25), st.lists(step, max_size=20))
def test_any_sequence_of_cycles_reads_like_the_model(first: list[dict[str, Any]], steps: list[Any]) -> None:
    run_steps(first, steps, background=False)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(records, min_size=1, max_size=25), st.lists(step, max_size=16))
def test_background_compactions_read_like_the_model(first: list[dict[str, Any]], steps: list[Any]) -> None:
    """The same with a compaction in the background after every cycle: readers cannot tell."""
    run_steps(first, steps, background=True)


@settings(
    max_examples=int(os.environ.get("HOLLOW_PROPERTY_EXAMPLES", "200")) // 2,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.lists(records, min_size=1, max_size=25),
    st.lists(small_steps, max_size=24),
    st.integers(1, 6),
    st.integers(0, 30),
)
def test_versions_over_a_mid_read_like_the_model(
    first: list[dict[str, Any]], steps: list[Any], top_from: int, top_min: int
) -> None:
    """The same with versions written over a mid from small overlays on (docs/decisions.md §18):
    tops over a mid, tops grown past their limit written over the base again, restarts on a top."""
    run_steps(first, steps, background=False, top_from=top_from, top_min=top_min)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(records, min_size=1, max_size=25), st.lists(small_steps, max_size=16))
def test_background_compactions_over_a_mid_read_like_the_model(first: list[dict[str, Any]], steps: list[Any]) -> None:
    """Background compactions of versions over a mid, and rebases of them: readers cannot tell."""
    run_steps(first, steps, background=True, top_from=1, top_min=12)


def test_automatic_compaction_keeps_every_record(root: Path) -> None:
    model = Model()
    with item_producer(root, compact_min=3, compact_share=0.0) as p:
        base = [{"id": i, "name": "a", "group": GROUPS[i % 3], "n": i % 2, "tags": [], "code": ""} for i in range(30)]
        p.run_cycle(populate(base, "Item"))
        model.full(base)
        bases = set()
        for i in range(12):
            rec = {"id": i * 3 % 31, "name": f"v{i}", "group": GROUPS[i % 3], "n": 1, "tags": ["x"], "code": "c1"}
            p.run_incremental(lambda d, rec=rec, i=i: (d.upsert("Item", rec), d.remove("Item", 29 - i)))
            model.apply([rec], [29 - i])
            check(root, model)
            state = hollow.state.StateFile(p.dir / str(p.versions()[-1]), namespace="items")
            bases.add(state.base.version if state.base is not None else state.version)
            if p._compactor is not None:
                p._compactor.join()  # done before the next cycle, which builds on it
        assert p.last_compaction is not None
        assert len(bases) > 3  # the versions moved to newer bases as they went


def test_a_background_compaction_holds_its_version_while_cycles_reclaim(root: Path) -> None:
    """Cycles go on while the child compacts; with retain = 1 they would reclaim the version it reads."""
    base = [{"id": i, "name": "a", "group": GROUPS[i % 3], "n": i % 2, "tags": [], "code": ""} for i in range(30)]
    with item_producer(root, compact_min=3, compact_share=0.0, retain=1) as p:
        p.run_cycle(populate(base, "Item"))
        for i in range(4):
            rec = {"id": i, "name": f"v{i}", "group": "red", "n": 1, "tags": [], "code": ""}
            p.run_incremental(lambda d, rec=rec: d.upsert("Item", rec))
        job = p._compactor
        assert job is not None
        for i in range(4):  # faster than the child starts: without its lease, it finds the version gone
            rec = {"id": 10 + i, "name": f"w{i}", "group": "red", "n": 1, "tags": [], "code": ""}
            p.run_incremental(lambda d, rec=rec: d.upsert("Item", rec))
        assert job.version in p.versions()  # leased: kept past retain
        job.join()
        assert job.error is None
        p.run_incremental(lambda d: d.upsert("Item", {**base[20], "name": "after"}))
        latest = hollow.state.StateFile(p.dir / str(p.versions()[-1]), namespace="items")
        assert latest.base is not None
        assert latest.base.version == job.version  # rebased on what it wrote
        assert job.version not in p.versions()  # its lease released, it was reclaimed like any other


def test_a_stream_of_small_changes_is_compacted_once_carrying_it_costs_more(root: Path) -> None:
    """Share and chunk count would let the overlay grow to 64 cycles' worth (320 entries); what the versions
    since the base spent rewriting it (overlay.COMPACT_REWRITE a base record) compacts it near 170."""
    base = [{"id": i, "name": "a", "group": GROUPS[i % 3], "n": 0, "tags": [], "code": ""} for i in range(1000)]
    most, bases = 0, set()
    with item_producer(root, compact_min=10, compact_share=1.0) as p:
        p.run_cycle(populate(base, "Item"))
        for cycle in range(120):
            recs = [{**base[(cycle * 5 + j) % 1000], "n": cycle + 1} for j in range(5)]
            p.run_incremental(lambda d, recs=recs: [d.upsert("Item", r) for r in recs])
            state = hollow.state.StateFile(p.dir / str(p.versions()[-1]), namespace="items")
            overlay_of = state.type("Item").overlay
            most = max(most, 0 if overlay_of is None else len(overlay_of.ordinals))
            bases.add(state.base.version if state.base is not None else state.version)
            del state, overlay_of
            if p._compactor is not None:
                p._compactor.join()
    assert len(bases) >= 3  # compacted again and again
    assert most <= 5 * 40  # 5 * 34 cycles carried 3,000 times: compacted then, not at 64 chunks


def test_chunks_past_the_limit_are_merged_into_one_without_a_new_base(root: Path) -> None:
    """One chunk a cycle: past overlay.MAX_CHUNKS the live records are merged into one chunk by bytes,
    instead of compacting the whole base every 64 cycles of a stream of small changes."""
    model = Model()
    base = [{"id": i, "name": "a", "group": GROUPS[i % 3], "n": i % 2, "tags": ["t"], "code": ""} for i in range(100)]
    with item_producer(root) as p:
        p.run_cycle(populate(base, "Item"))
        model.full(base)
        first = p.versions()[-1]
        for i in range(overlay.MAX_CHUNKS * 2 + 10):
            rec = {"id": (i * 7) % 130, "name": f"v{i}", "group": GROUPS[i % 3], "n": i, "tags": [f"x{i}"], "code": "c"}
            gone = (i * 11) % 130 if i % 5 == 0 else None
            removals = [] if gone is None or gone == rec["id"] else [gone]
            p.run_incremental(
                lambda d, rec=rec, removals=removals: (d.upsert("Item", rec), [d.remove("Item", k) for k in removals])
            )
            model.apply([rec], removals)
            if i % 40 == 0 or i > overlay.MAX_CHUNKS * 2:
                check(root, model)
        state = hollow.state.StateFile(p.dir / str(p.versions()[-1]), namespace="items")
        assert state.base is not None
        assert state.base.version == first  # never compacted
        assert len(state.type_state("Item").overlay.chunks) <= overlay.MAX_CHUNKS


def test_a_base_is_hashed_once_per_process_however_many_versions_link_it(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The content check (docs/decisions.md §40) remembers a file by inode and mtime: each new version's
    hard link to the base changes the base's ctime, and must not make every reader hash it again."""
    hashed: list[str] = []
    real = hollow.state.StateFile._content_hash

    def counting(self: Any) -> int:
        hashed.append(self.path.name)
        return real(self)

    monkeypatch.setattr(hollow.state.StateFile, "_content_hash", counting)
    base = [{"id": i, "name": "a", "group": GROUPS[i % 3], "n": 0, "tags": [], "code": ""} for i in range(50)]
    with item_producer(root) as p:
        p.run_cycle(populate(base, "Item"))
        for i in range(4):
            p.run_incremental(lambda d, i=i: d.upsert("Item", {**base[i], "name": f"v{i}"}))
            with hollow.open("items", root=root, follow=False) as ds, ds.snapshot() as snap:
                assert snap["Item"][i].name == f"v{i}"
    bases = [n for n in hashed if n.endswith(".base")]
    assert len(bases) <= 1, hashed  # the base once (the producer may have checked it already), overlays each


# --- O(changes) -------------------------------------------------------------------------


def _disk_bytes(ns_dir: Path) -> int:
    """Bytes /dev/shm holds for the namespace: each inode once (hard links share their pages)."""
    seen: dict[int, int] = {}
    for entry in os.scandir(ns_dir):
        st = entry.stat(follow_symlinks=False)
        seen[st.st_ino] = st.st_blocks * 512
    return sum(seen.values())


def test_versions_share_their_base(root: Path) -> None:
    n = 20_000
    with movies_producer(root, retain=10) as p:
        p.run_cycle(populate(movie(i) for i in range(n)))
        full = _disk_bytes(p.dir)
        for v in range(5):
            p.run_incremental(lambda d, v=v: [d.upsert("Movie", movie(i, title=f"v{v}")) for i in range(v, 200, 5)])
        assert len(p.versions()) == 6
        added = _disk_bytes(p.dir) - full
        assert added < 0.1 * full, (added, full)  # five more versions cost a tenth of one copy
        bases = {os.stat(p.dir / f"{v}.base").st_ino for v in p.versions()[1:]}
        assert bases == {os.stat(p.dir / str(p.versions()[0])).st_ino}
    st = hollow.status("movies", root=root)
    assert st.bytes < 1.1 * full


def test_a_small_change_writes_a_small_file(root: Path) -> None:
    """An incremental cycle's file grows with the change, not the dataset."""
    sizes = {}
    for n in (2_000, 40_000):
        with movies_producer(root / str(n)) as p:
            p.run_cycle(populate(movie(i) for i in range(n)))
            v = p.run_incremental(lambda d: d.upsert("Movie", movie(7, title="changed")))
            sizes[n] = os.stat(p.dir / str(v)).st_size
            state = hollow.state.StateFile(p.dir / str(v), namespace="movies")
            ov = state.type("Movie").overlay
            assert ov is not None
            assert len(ov.chunks) == 1
            assert len(ov.chunks[0]) == 1
    assert sizes[40_000] < 1.2 * sizes[2_000]


def test_restarted_producer_continues_from_the_files(root: Path) -> None:
    with movies_producer(root) as p:
        p.run_cycle(populate(movie(i) for i in range(100)))
        p.run_incremental(lambda d: (d.upsert("Movie", movie(3, title="three")), d.remove("Movie", 4)))
    with movies_producer(root) as p:
        v = p.run_incremental(lambda d: d.upsert("Movie", movie(5, title="five")))
        assert p.run_incremental(lambda d: d.upsert("Movie", movie(3, title="three"))) == v  # already so
    with hollow.open("movies", root=root, follow=False) as ds, ds.snapshot() as snap:
        movies = snap["Movie"]
        assert (movies[3].title, movies[5].title, movies.get(4)) == ("three", "five", None)
        assert len(movies) == 99


def test_run_cycle_with_the_same_mutated_list_publishes_the_change(root: Path) -> None:
    """A new user's report: handing run_cycle the same list again after changing some records."""
    recs = [movie(i) for i in range(50)]
    with movies_producer(root) as p:
        v1 = p.run_cycle(populate(recs))
        recs[10]["title"] = "changed in place"
        del recs[20]
        v2 = p.run_cycle(populate(recs))
        assert v2 == v1 + 1
        assert p.run_cycle(populate(recs)) == v2
    with hollow.open("movies", root=root, follow=False) as ds, ds.snapshot() as snap:
        assert snap["Movie"][10].title == "changed in place"
        assert 20 not in snap["Movie"]


def test_full_cycle_of_equal_records_publishes_nothing(root: Path) -> None:
    with movies_producer(root) as p:
        v = p.run_cycle(populate(movie(i) for i in range(100)))
        v = p.run_incremental(lambda d: d.upsert("Movie", movie(1, title="x")))
        before = sorted(os.listdir(p.dir))
        assert p.run_cycle(populate([*(movie(i) for i in range(100) if i != 1), movie(1, title="x")])) == v
        assert sorted(os.listdir(p.dir)) == before


def test_comparing_with_base_and_entries_apart_finds_what_a_merged_search_finds(root: Path) -> None:
    """A full cycle compares its hashes with the base's and the entries' apart (issue 10: merging
    them cost a sort of every hash a cycle); masked base records, entries over them, a record
    changed back to its base value and new keys in holes all come out as the merged search says."""
    with movies_producer(root) as p:
        p.run_cycle(populate(movie(i) for i in range(200)))
        p.run_incremental(lambda d: [d.upsert("Movie", movie(i, title="a")) for i in range(40)])
        p.run_incremental(lambda d: [d.remove("Movie", i) for i in range(30, 60)])
        p.run_incremental(lambda d: [d.upsert("Movie", movie(i)) for i in (*range(10), *range(300, 310))])
        _, latest, _ = p._read_latest(required=True)
        lat = latest["Movie"]
        assert len(lat.m_ord)
        assert len(lat.e_hash)
        assert len(lat.t_key)
        wanted = [movie(i, title="a") for i in range(5, 35)] + [movie(i) for i in range(0, 400, 3)]
        wanted += [movie(7), movie(7)]  # the same record twice
        hashes = overlay.record_hashes(wanted)
        got, merged = overlay._compare(lat, hashes), overlay._compare_merged(lat, hashes)
        for a, b in zip(got, merged, strict=True):
            assert a.tolist() == b.tolist()


def test_a_version_whose_base_is_gone_is_a_named_error(root: Path) -> None:
    with movies_producer(root) as p:
        p.run_cycle(populate(movie(i) for i in range(10)))
        v = p.run_incremental(lambda d: d.upsert("Movie", movie(1, title="x")))
    (root / "movies" / f"{v}.base").unlink()
    with pytest.raises(hollow.CorruptStateError, match=r"its base .* is missing"):
        hollow.state.StateFile(root / "movies" / str(v), namespace="movies")


def test_a_base_swapped_for_another_file_is_refused(root: Path) -> None:
    with movies_producer(root, retain=10) as p:
        first = p.run_cycle(populate(movie(i) for i in range(10)))
        p.run_incremental(lambda d: d.upsert("Movie", movie(1, title="x")))
        p.compact()  # the second version is now a base of its own
        w = p.run_incremental(lambda d: d.upsert("Movie", movie(2, title="y")))
    link = root / "movies" / f"{w}.base"
    link.unlink()
    os.link(root / "movies" / str(first), link)  # a base, but not w's
    with pytest.raises(hollow.CorruptStateError, match="is not its base"):
        hollow.state.StateFile(root / "movies" / str(w), namespace="movies")


# --- compaction by bytes equals decoding ----------------------------------------------------


def _f32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


thing = st.fixed_dictionaries(
    {"id": st.integers(0, 30)},
    optional={
        "name": st.text(max_size=6),
        "nums": st.lists(st.integers(-5, 5), max_size=3),
        "bits": st.lists(st.booleans(), max_size=4),
        "nested": st.lists(st.lists(st.sampled_from(["p", "q"]), max_size=2), max_size=2),
        "d": st.binary(max_size=6),
        "owner": st.fixed_dictionaries({}, optional={"name": st.text(max_size=4), "age": st.integers(0, 255)}),
        "people": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["a", "b"])}), max_size=2),
        "ratio": st.floats(-100, 100, allow_nan=False).map(_f32),
        "tags": st.lists(st.sampled_from(["a", "b"]), max_size=2),
        "color": st.sampled_from(["red", "green", "blue"]),
    },
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(thing, min_size=1, max_size=12), st.lists(st.lists(thing, max_size=4), max_size=4))
def test_compaction_moves_every_kind_of_field(first: list[dict[str, Any]], later: list[list[dict[str, Any]]]) -> None:
    root = Path(tempfile.mkdtemp(prefix="hollow-test-prop-", dir="/dev/shm"))
    try:
        with Producer("things", schema=EVERYTHING, primary_keys={"Thing": "id"}, root=root, compact_min=10**9) as p:
            p.run_cycle(populate(_unique_by_id(first), "Thing"))
            for batch in later:
                p.run_incremental(lambda d, b=batch: [d.upsert("Thing", r) for r in _unique_by_id(b)])
            before = _things(root)
            p.compact()
            assert _things(root) == before
            state = hollow.state.StateFile(p.dir / str(p.versions()[-1]), namespace="things")
            assert state.base is None
    finally:
        shutil.rmtree(root)


def _unique_by_id(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list({r["id"]: r for r in recs}.values())


def _things(root: Path) -> list[dict[str, Any]]:
    with hollow.open("things", root=root, follow=False) as ds, ds.snapshot() as snap:
        return [r.to_dict() for r in snap["Thing"]]


def test_change_hash_tells_apart_what_json_cannot() -> None:
    base = {"id": 1, "x": None}
    hashes = {overlay.record_hash({**base, "x": v}) for v in (None, float("nan"), float("inf"), -float("inf"), 0.0)}
    assert len(hashes) == 5
    assert overlay.record_hash({"id": 1, "d": b"ab"}) != overlay.record_hash({"id": 1, "d": "ab"})
    assert overlay.record_hash({"id": 1, "n": 1}) != overlay.record_hash({"id": 1, "n": 1.0})
    assert overlay.record_hash({"id": 1, "n": 1}) == overlay.record_hash({"id": 1, "n": 1})


json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 70), 1 << 70)
    | st.floats()
    | st.binary(max_size=4)
    # text that looks like the frame a batch is cut by, or a record boundary
    | st.sampled_from(["", "\n", ",\n,", "},{", '"', "null", "[", "]"])
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=4), json_value, max_size=4), max_size=20), st.integers(1, 7))
def test_change_hashes_of_a_batch_are_each_records_own(records: list[dict[str, Any]], batch: int) -> None:
    """A record's change hash is the same alone, in a batch, first, last or anywhere between, whatever it
    holds (what a later cycle computes for one dict must match what the first build stored for it)."""
    alone = [overlay.record_hash(r) for r in records]
    saved = overlay._BATCH
    overlay._BATCH = batch  # batch edges fall on every position
    try:
        assert overlay.record_hashes(records).tolist() == alone
        odd = [*records, {"f": orjson.Fragment(b"1,\n,2")}]  # a record that writes the cut itself
        assert overlay.record_hashes(odd).tolist() == [*alone, overlay.record_hash(odd[-1])]
    finally:
        overlay._BATCH = saved


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3).map(lambda b: b.replace(b"n", b"x")), st.integers(0, 9), st.integers(0, 9))
def test_the_null_scan_finds_null_at_every_alignment(noise: bytes, before: int, after: int) -> None:
    """``_has_null`` (32-bit words at four offsets) says what ``b"null" in blob`` says, wherever it is."""
    for blob in (b"a" * before + noise + b"a" * after, b"a" * before + b"null" + noise + b"a" * after):
        assert overlay._has_null(blob) == (b"null" in blob)
    assert overlay._has_null(b"a" * before + b"nul" + b"l" * (after % 2)) == (after % 2 == 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 300), max_size=400), st.lists(st.integers(0, 300), max_size=60), st.integers(0, 3))
def test_positions_of_few_hashes_among_many_are_exact(values: list[int], few: list[int], spread: int) -> None:
    """The direct-mapped filter of ``_positions_of`` finds every position of the few hashes in the many,
    and no other (false positives of the filter are checked away), as small or large sets of either."""
    scale = [1, 1 << 16, 1 << 40, (1 << 63) - 1][spread]  # values that share their low bits, or do not
    vals = np.array([v * scale % (1 << 64) for v in values], dtype=np.uint64)
    pool = np.unique(np.array([f * scale % (1 << 64) for f in few], dtype=np.uint64))
    want = [i for i, v in enumerate(vals.tolist()) if v in set(pool.tolist())]
    assert overlay._positions_of(vals, pool).tolist() == want


def test_change_hashes_dump_a_batch_with_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hashing n records costs one orjson call per batch, not one per record (issue 10), and each
    hash is xxh3 of the record's own JSON, as it always was (the files' stored hashes stay valid)."""
    calls = []
    real = overlay._dumps

    def counted(obj: Any) -> bytes:
        calls.append(1)
        return real(obj)

    monkeypatch.setattr(overlay, "_dumps", counted)
    records = [movie(i) for i in range(3 * overlay._BATCH)]
    hashes = overlay.record_hashes(records)
    assert len(calls) == 3
    assert hashes.tolist() == [xxhash.xxh3_64_intdigest(json.dumps(r, separators=(",", ":")).encode()) for r in records]


def test_status_counts_a_shared_base_once(root: Path) -> None:
    with movies_producer(root, retain=10) as p:
        p.run_cycle(populate(movie(i) for i in range(1000)))
        for i in range(3):
            p.run_incremental(lambda d, i=i: d.upsert("Movie", movie(i, title="t")))
    st = hollow.status("movies", root=root)
    base = next(v for v in st.versions if v.base_bytes == 0)
    assert all(v.base_bytes == base.bytes for v in st.versions if v is not base)
    assert st.bytes == base.bytes + sum(v.bytes for v in st.versions if v is not base)


def test_debris_of_a_dead_writer_is_swept(root: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    with movies_producer(root) as p:
        p.run_cycle(populate(movie(i) for i in range(10)))
        ns = p.dir
        planted = [f".2.{gone.pid}.compacted", f".2.{gone.pid}.tmp.base", f".2.base.{gone.pid}.tmp"]
        for name in planted:
            (ns / name).write_bytes(b"x")
        mine = ns / f".2.{os.getpid()}.compacted"
        mine.write_bytes(b"x")  # a live writer's (this process): kept
        p.run_incremental(lambda d: d.upsert("Movie", movie(1, title="x")))
        left = set(os.listdir(ns))
        assert not left & set(planted)
        assert mine.name in left
        mine.unlink()


def test_a_follower_moves_across_new_bases(root: Path) -> None:
    """A following reader keeps switching while versions move to bases compacted in the background,
    and an old version it still holds keeps reading its own base."""
    with movies_producer(root, compact_min=0, compact_share=0.0, retain=2) as p:
        p.run_cycle(populate(movie(i) for i in range(200)))
        with hollow.open("movies", root=root) as ds:
            held = ds.snapshot()
            for n in range(1, 7):
                v = p.run_incremental(lambda d, n=n: d.upsert("Movie", movie(n, title=f"t{n}")))
                assert ds.wait_for(v, timeout=30)
                with ds.snapshot() as snap:
                    assert [snap["Movie"][i].title for i in range(1, n + 1)] == [f"t{i}" for i in range(1, n + 1)]
                if p._compactor is not None:
                    p._compactor.join()
            assert held["Movie"][1].title == "Movie 1"  # the first version, reclaimed on disk meanwhile or not
            held.close()


@pytest.mark.parametrize("table", ["overlay", "base"])
def test_a_table_without_an_empty_slot_ends_the_probe(root: Path, table: str) -> None:
    """A key table with no empty slot cannot make a lookup loop for ever. Damage is refused before any
    lookup (the content hash, tests/test_damage.py), so the file is sealed again here: a forgery."""
    with movies_producer(root) as p:
        p.run_cycle(populate(movie(i) for i in range(20)))
        v = p.run_incremental(lambda d: d.upsert("Movie", movie(3, title="x")))
    if table == "base":
        v = 1  # the base, read as the version it is
    path = root / "movies" / str(v)
    state = hollow.state.StateFile(path, namespace="movies")
    ts = state._type_states["Movie"]
    sec = ts.overlay.keys.slots if table == "overlay" else ts.primaryKey.slots
    offset, length = sec.offset, sec.length
    del state
    data = bytearray(path.read_bytes())
    data[offset : offset + length] = b"\xff" * length  # every slot taken, by no key of ours
    h = layout.Header.unpack(bytes(data), what="forged", size=len(data))
    data[: layout.HEADER_SIZE] = dataclasses.replace(
        h, content_hash=xxhash.xxh3_64_intdigest(bytes(data[layout.HEADER_SIZE :]))
    ).pack()
    tmp = path.with_name(".forged")
    tmp.write_bytes(bytes(data))
    os.rename(tmp, path)
    with hollow.open("movies", root=root, follow=False) as ds, ds.attach(v) as snap:
        movies = snap["Movie"]
        assert movies.get(10**9) is None
        if table == "overlay":
            assert movies[5].title == "Movie 5"


# --- records given as JSON lines ---------------------------------------------------------------


def _lines_populate(lines: list[bytes], parsed: list[int]) -> Any:
    """A populate that hands *lines* over unparsed, noting which lines the cycle asks to parse."""

    def parse(indexes: list[int]) -> list[dict[str, Any]]:
        parsed.extend(indexes)
        return [json.loads(lines[i]) for i in indexes]

    return lambda state: state.add_lines("Movie", lines, parse)


def _jsonl(records: list[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(r).encode() for r in records]


def test_lines_a_cycle_has_seen_are_not_parsed(root: Path) -> None:
    recs = [movie(i, releasedAt=None) for i in range(100)]
    with movies_producer(root) as p:
        parsed: list[int] = []
        v1 = p.run_cycle(_lines_populate(_jsonl(recs), parsed))
        assert sorted(parsed) == list(range(100))  # a first build parses every line
        parsed.clear()
        assert p.run_cycle(_lines_populate(_jsonl(recs), parsed)) == v1
        assert parsed == []  # the same lines: nothing parsed, nothing published
        recs[7]["title"] = "seven"
        del recs[50]
        v2 = p.run_cycle(_lines_populate(_jsonl(recs), parsed))
        assert (v2, parsed) == (v1 + 1, [7])  # one changed line parsed; the missing one removed
    with hollow.open("movies", root=root, follow=False) as ds, ds.snapshot() as snap:
        assert snap["Movie"][7].title == "seven"
        assert 50 not in snap["Movie"]
        assert len(snap["Movie"]) == 99


def test_a_line_s_change_hash_is_its_xxh3_with_the_line_seed(root: Path) -> None:
    """The definition stored hashes rely on: a version written before any change to how lines are
    hashed compares equal to the same lines now."""
    lines = _jsonl([movie(i, releasedAt=None) for i in range(50)])
    batches = [Lines(lines[:20], lambda _: []), Lines(lines[20:], lambda _: [])]
    want = [xxhash.xxh3_64_intdigest(line, seed=overlay.LINE_SEED) for line in lines]
    assert overlay.line_hashes(batches).tolist() == want
    assert overlay.LINE_SEED == 1


def test_lines_with_a_key_twice_are_refused(root: Path) -> None:
    recs = [movie(i, releasedAt=None) for i in range(10)]
    with movies_producer(root) as p:
        v = p.run_cycle(_lines_populate(_jsonl(recs), []))
        twice = _jsonl(recs)
        with pytest.raises(DuplicateKeyError, match="duplicate primary key 3"):
            p.run_cycle(_lines_populate([*twice, twice[3]], []))  # the same line again
        with pytest.raises(DuplicateKeyError, match="duplicate primary key 4"):
            p.run_cycle(_lines_populate([*twice, *_jsonl([movie(4, title="other")])], []))  # old and new line
        assert p.versions() == [v]

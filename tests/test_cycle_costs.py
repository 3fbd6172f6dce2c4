"""What a cycle costs in files opened and directories listed, counted, not timed (docs/decisions.md §90).

A small change must cost the same however many versions came before it: the producer carries the
latest version it verified into the next cycle instead of opening it (its base, its mid) again,
reads the announcement once a cycle and lists the namespace once a cycle. The counts come from
CPython's audit events (``open``, ``os.listdir``, ``os.scandir``), raised by the real calls.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import hollow
from hollow import layout
from hollowd import overlay
from tests.helpers import movie, movies_producer, populate

_PUBLISHED = re.compile(r"^\d+(\.base|\.mid)?$")  # a version's file and its links, as published


class Calls:
    """Opens and listings this process makes while :meth:`counting` (CPython audit events)."""

    def __init__(self) -> None:
        self.active = False
        self.opened: list[tuple[str, int]] = []
        self.listed: list[str] = []
        sys.addaudithook(self._hook)  # hooks cannot be removed: this one is idle outside `counting`

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active:
            return
        if event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            self.opened.append((os.fsdecode(args[0]), args[2] if isinstance(args[2], int) else 0))
        elif event in ("os.listdir", "os.scandir"):
            self.listed.append(os.fsdecode(args[0]) if args[0] is not None else ".")

    @contextmanager
    def counting(self) -> Iterator[Calls]:
        self.opened, self.listed = [], []
        self.active = True
        try:
            yield self
        finally:
            self.active = False

    def published_opened(self) -> list[str]:
        """Published state files (``<v>``, ``<v>.base``, ``<v>.mid``) opened."""
        return [p for p, _ in self.opened if _PUBLISHED.match(os.path.basename(p))]

    def announcement_reads(self) -> int:
        return sum(
            1
            for p, flags in self.opened
            if os.path.basename(p) == layout.ANNOUNCED and flags & os.O_ACCMODE == os.O_RDONLY
        )


_CALLS: Calls | None = None


@pytest.fixture
def calls() -> Calls:
    global _CALLS  # one hook for the whole process
    if _CALLS is None:
        _CALLS = Calls()
    return _CALLS


def _costs(calls: Calls, cycle: Callable[[], object]) -> tuple[list[str], int, list[str]]:
    with calls.counting():
        cycle()
    return calls.published_opened(), calls.announcement_reads(), calls.listed


@pytest.mark.parametrize("over_mid", [False, True], ids=["over-the-base", "over-a-mid"])
def test_a_small_cycle_costs_the_same_whatever_came_before(
    root: Path, calls: Calls, monkeypatch: pytest.MonkeyPatch, over_mid: bool
) -> None:
    if over_mid:  # versions over a mid from the first overlay on: tops, the mid moving now and then
        monkeypatch.setattr(overlay, "TOP_FROM", 1)
        monkeypatch.setattr(overlay, "TOP_MIN", 8)
    with movies_producer(root, retain=3) as p:
        p.run_cycle(populate(movie(i) for i in range(50)))
        seen = []
        for i in range(40):
            seen.append(_costs(calls, lambda i=i: p.run_incremental(lambda d: d.upsert("Movie", movie(i, title="x")))))
        latest = hollow.state.StateFile(p.dir / str(p.versions()[-1]), namespace="movies")
        assert (latest.mid is not None) == over_mid  # the layout the test is about
    for opened, announcement_reads, listed in seen:
        listings = [d for d in listed if d.startswith(str(root))]  # (not a module imported on first use)
        assert opened == [], "a cycle opened a published file again: it should carry the latest it verified"
        assert announcement_reads == 1
        assert len(listings) <= 2, listings  # the namespace directory and the announcement's, once each


def test_a_restarted_producer_reads_the_latest_back_once(root: Path, calls: Calls) -> None:
    with movies_producer(root) as p:
        p.run_cycle(populate(movie(i) for i in range(20)))
        p.run_incremental(lambda d: d.upsert("Movie", movie(1, title="one")))
    with movies_producer(root) as p:
        first = _costs(calls, lambda: p.run_incremental(lambda d: d.upsert("Movie", movie(2, title="two"))))
        second = _costs(calls, lambda: p.run_incremental(lambda d: d.upsert("Movie", movie(3, title="three"))))
    assert sorted(os.path.basename(f) for f in first[0]) == ["2", "2.base"]  # read back from the files
    assert second[0] == []
    with hollow.open("movies", root=root, follow=False) as ds, ds.snapshot() as snap:
        assert [snap["Movie"][i].title for i in (1, 2, 3)] == ["one", "two", "three"]


def test_a_latest_file_replaced_under_the_producer_is_read_again(root: Path, calls: Calls) -> None:
    """What the producer carries is the file it wrote: one put under the latest's name by someone else
    (an operator's copy, a restore) is read back, and the next version is built on what is there."""
    with movies_producer(root) as p:
        p.run_cycle(populate(movie(i) for i in range(20)))
        v = p.run_incremental(lambda d: d.upsert("Movie", movie(1, title="one")))
        path = p.dir / layout.state_name(v)
        shutil.copy2(path, path.with_name(".copy"))
        os.replace(path.with_name(".copy"), path)  # the same bytes, another inode
        opened, _, _ = _costs(calls, lambda: p.run_incremental(lambda d: d.upsert("Movie", movie(2, title="two"))))
    assert str(path) in opened
    with hollow.open("movies", root=root, follow=False) as ds, ds.snapshot() as snap:
        assert [snap["Movie"][i].title for i in (1, 2)] == ["one", "two"]


def test_index_values_are_read_record_by_record_only_until_deriving_them_is_cheaper(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changing base records needs their secondary-index values: read from the records while few have
    been read on this base, derived for every ordinal (once a base) past that budget. Cycle after
    cycle of the same size must not read records one by one for ever (k = 1,000 at 1M did, 25 ms a cycle)."""
    monkeypatch.setattr(overlay, "_FEW", 50)
    genres = ["Drama", "Comedy", "Action", "Horror", "Documentary"]
    with movies_producer(root) as p:
        p.run_cycle(populate(movie(i) for i in range(2000)))
        for c in range(12):  # 30 base records change genre a cycle: their old values are read (masked)
            changed = [movie(i, genre=genres[(i + c + 1) % 5]) for i in range(c * 30, c * 30 + 30)]
            p.run_incremental(lambda d, changed=changed: [d.upsert("Movie", r) for r in changed])
        _, latest, _ = p._read_latest(required=True)
        arrays = latest["Movie"].base_arrays
        read = dict(arrays.records_read)
        del latest, arrays
    assert read, "the test changed no base record's index value"
    assert all(n <= 50 for n in read.values()), read  # the budget (overlay._FEW here), then vectors
    with hollow.open("movies", root=root, follow=False) as ds, ds.snapshot() as snap:
        got = {r.id: r.genre for r in snap["Movie"].find(genre="Drama")}
    assert got == {i: "Drama" for i in range(2000) if _genre_now(i, genres) == "Drama"}


def _genre_now(i: int, genres: list[str]) -> str:
    c = i // 30
    return genres[(i + c + 1) % 5] if c < 12 else str(movie(i)["genre"])


def _table(keys: Any) -> Any:
    import numpy as np  # noqa: PLC0415

    from hollowd import index  # noqa: PLC0415

    fps = np.asarray(keys, dtype=np.uint64)
    cap = index.capacity_for(len(fps))
    slots = np.zeros((cap, 2), dtype=np.uint64)
    pos = index.place(index.home_slots(fps, cap), cap)
    slots[pos, 0], slots[pos, 1] = fps, np.arange(1, len(fps) + 1, dtype=np.uint64)
    return slots


def _lines_run(fn: Callable[[], Any]) -> tuple[Any, int]:
    """*fn*'s result and the Python lines it ran (sys.settrace's line events: work done in Python)."""
    count = 0

    def trace(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return trace

    sys.settrace(trace)
    try:
        out = fn()
    finally:
        sys.settrace(None)
    return out, count


def test_probing_a_table_with_a_long_run_of_keys_costs_log_of_the_run_not_the_run() -> None:
    """Consecutive integer keys (inserted ids; integer keys are their own hash) fill a run of slots;
    a key whose home is inside it probes to its end. Vector steps in growing windows keep that
    the steps few (O(log run), until the windows reach their size limit); probing the stragglers
    one slot at a time cost O(run) Python steps each."""
    import numpy as np  # noqa: PLC0415

    from hollowd import index  # noqa: PLC0415

    lines = {}
    for run in (1_000, 30_000):
        keys = np.arange(10**6, 10**6 + run, dtype=np.uint64)
        slots = _table(keys)
        cap = len(slots)
        inside = keys[:: run // 100][:100]  # absent keys whose home slots are inside the run
        probes = np.concatenate([keys[::97], inside + np.uint64(cap) * np.arange(1, 101, dtype=np.uint64)])
        got, lines[run] = _lines_run(lambda slots=slots, probes=probes: index.lookup(slots, probes))
        want = {int(k): i + 1 for i, k in enumerate(keys)}
        assert got.tolist() == [want.get(int(p), 0) for p in probes]
    # a run 30 times as long: a few more steps (one slot at a time, the Python work was 30 times as much)
    assert lines[30_000] <= 4 * lines[1_000], lines

"""The index tables a build writes, and the sorts they are built by (hollowd.index, hollowd.sorting).

The tables' bytes are what the merge sort built before the fast sorts replaced it (issue 10): each
build is compared with that reference, written here as it was."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hollowd import index, sorting


def _place_by_merge_sort(home: Any, capacity: int) -> Any:
    """index.place as it was: a stable argsort of the home slots, then the running maximum."""
    n = len(home)
    order = np.argsort(home, kind="stable")
    h = home[order].astype(np.int64)
    idx = np.arange(n, dtype=np.int64)
    pos = np.maximum.accumulate(h - idx) + idx if n else h
    over = pos >= capacity
    if over.any():
        taken = np.zeros(capacity, dtype=bool)
        taken[pos[~over]] = True
        pos[over] = np.flatnonzero(~taken)[: int(over.sum())]
    out = np.empty(n, dtype=np.int64)
    out[order] = pos
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), max_size=80), st.sampled_from([0, 1, 2**62, 2**64 - 1]))
def test_stable_order_is_the_stable_argsort(values: list[int], bound_past: int) -> None:
    """The packed sort gives exactly the merge sort's order and values, ties in input order; a bound
    with no room for the index beside the value takes the merge sort itself."""
    arr = np.array(values, dtype=np.uint64)
    bound = min(2**64, (max(values) + 1 if values else 1) + bound_past)
    order, ordered = sorting.stable_order(arr, bound)
    want = np.argsort(arr, kind="stable")
    assert order.tolist() == want.tolist()
    assert ordered.tolist() == arr[want].tolist()


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 60), st.sampled_from(["random", "crowded", "distinct", "dense"]), st.randoms())
def test_a_table_places_its_keys_where_the_merge_sort_placed_them(n: int, kind: str, rnd: Any) -> None:
    """Distinct home slots (dense keys in any order) sit in them without a sort; crowded ones,
    wrapping past the last slot, probe on as before: the same positions either way."""
    capacity = index.capacity_for(max(n, 1))
    if kind == "random":
        home = [rnd.randrange(capacity) for _ in range(n)]
    elif kind == "crowded":
        home = [capacity - 1 - rnd.randrange(3) for _ in range(n)]
    elif kind == "distinct":
        home = rnd.sample(range(capacity), n)
    else:
        home = list(range(n))
        rnd.shuffle(home)
    arr = np.array(home, dtype=np.uint64)
    got = index.place(arr, capacity)
    assert got.dtype == np.int64
    assert got.tolist() == _place_by_merge_sort(arr, capacity).tolist()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 5), max_size=60), st.lists(st.integers(0, 2**64 - 1), min_size=6, max_size=6))
def test_a_secondary_table_is_the_one_the_merge_sort_built(picks: list[int], values: list[int]) -> None:
    """Postings by ordinal within each value, slots and counts: as the stable argsort and np.unique
    built them."""
    fps = np.array([values[p] for p in picks], dtype=np.uint64)
    ordinals = np.arange(len(picks), dtype=np.int64) * 3
    built = index.build_multi(None, fps, ordinals)  # type: ignore[arg-type]
    order = np.argsort(fps, kind="stable")
    distinct, starts, counts = np.unique(fps[order], return_index=True, return_counts=True)
    assert built.postings.tolist() == ordinals[order].tolist()
    assert built.distinct == len(distinct)
    cap = index.capacity_for(len(distinct))
    slots = np.zeros((cap, 2), dtype=np.uint64)
    pos = _place_by_merge_sort(index.home_slots(distinct, cap), cap)
    slots[pos, 0] = distinct
    slots[pos, 1] = (starts.astype(np.uint64) + np.uint64(1)) | (counts.astype(np.uint64) << np.uint64(32))
    assert (built.slots == slots).all()

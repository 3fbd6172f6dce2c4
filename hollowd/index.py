"""Building the hash indexes a state file carries (read side: ``hollow.view``).

Tables are open-addressed with linear probing, built as whole vectors with
numpy: items are sorted by home slot and placed at
``max(home, previous position + 1)`` (a running maximum), so building costs
no Python work per record beyond computing fingerprints. Items pushed past the
last slot wrap into the first free slots from 0, which keeps every probe run
unbroken. Load factor at most :data:`LOAD`.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hollow import layout
from hollowd import sorting
from hollowd.schema import IndexSpec

#: Highest fill of a table; lower probes fewer slots, higher saves bytes.
LOAD = 0.6


@dataclass
class BuiltIndex:
    """Arrays ready to be written as the sections of one ``Index``."""

    spec: IndexSpec
    capacity: int
    slots: Any  # uint64[capacity, 2]: key or hash, value (0: empty)
    postings: Any  # uint32[n], non-unique only
    distinct: int


def fingerprints(spec: IndexSpec, keys: Sequence[Any]) -> Any:
    """The uint64 fingerprint of each key. TypeError when one cannot be a key of *spec*."""
    if spec.kind == layout.KIND_EXACT_INT and keys:
        for code in ("q", "Q"):  # signed first; unsigned keys past 2**63 need Q
            try:
                return np.frombuffer(array(code, keys), dtype=np.uint64)
            except OverflowError:
                continue
            except TypeError:
                break
    return np.fromiter(map(spec.fingerprint, keys), dtype=np.uint64, count=len(keys))


def capacity_for(n: int, load: float = LOAD) -> int:
    """The smallest prime that keeps the load at most *load* (see ``layout.slot_of``)."""
    c = max(11, int(n / load) + 1)
    while not _is_prime(c):
        c += 1
    return c


def _is_prime(c: int) -> bool:
    if c % 2 == 0:
        return c == 2
    return all(c % d for d in range(3, int(c**0.5) + 1, 2))


def home_slots(fps: Any, capacity: int) -> Any:
    """Each fingerprint's first slot, as ``layout.slot_of`` computes it for readers."""
    return fps % np.uint64(capacity)


def place(home: Any, capacity: int) -> Any:
    """Linear-probing positions for items with home slots *home* (any order); returns positions.

    Items whose home slots all differ (dense integer keys, in any order) sit in them: one
    scatter shows it. Otherwise the items are ordered by home slot, ties by their order in
    *home* (:func:`hollowd.sorting.stable_order`: a quarter of a stable argsort's time)."""
    n = len(home)
    taken = np.zeros(capacity, dtype=bool)
    taken[home] = True
    if np.count_nonzero(taken) == n:
        return home.astype(np.int64)
    order, h = sorting.stable_order(home, capacity)
    h = h.astype(np.int64)
    idx = np.arange(n, dtype=np.int64)
    pos = np.maximum.accumulate(h - idx) + idx if n else h
    over = pos >= capacity
    if over.any():
        taken = np.zeros(capacity, dtype=bool)
        taken[pos[~over]] = True
        free = np.flatnonzero(~taken)
        # The wrapped items take the first free slots from 0, in probe order.
        pos[over] = free[: int(over.sum())]
    out = np.empty(n, dtype=np.int64)
    out[order] = pos
    return out


def build_unique(spec: IndexSpec, fps: Any, ordinals: Any) -> BuiltIndex:
    """A primary-key table: slot -> (key, ordinal + 1). *fps* must be distinct."""
    n = len(fps)
    cap = capacity_for(n)
    pos = place(home_slots(fps, cap), cap)
    slots = np.zeros((cap, 2), dtype=np.uint64)
    slots[pos, 0] = fps
    slots[pos, 1] = ordinals.astype(np.uint64) + np.uint64(1)
    return BuiltIndex(spec, cap, slots, np.zeros(0, dtype=np.uint32), n)


def build_multi(spec: IndexSpec, fps: Any, ordinals: Any) -> BuiltIndex:
    """A secondary table: slot -> (hash, start in postings + 1 | count << 32); postings by ordinal per key."""
    n = len(fps)
    if n < 2 or (ordinals[1:] > ordinals[:-1]).all():  # in ordinal order already: one key to sort by
        # The values sorted (the fast sort), each item's value numbered among the distinct ones,
        # and the items ordered by that number (a quarter of a stable argsort of the values).
        sorted_fps = np.sort(fps)
        new = sorting.run_starts(sorted_fps)
        distinct = sorted_fps[new]
        order = sorting.stable_order(np.searchsorted(distinct, fps), len(distinct))[0]
        starts = np.flatnonzero(new)
        counts = np.diff(np.append(starts, n))
    else:
        order = np.lexsort((ordinals, fps))
        distinct, starts, counts = np.unique(fps[order], return_index=True, return_counts=True)
    postings = ordinals[order].astype(np.uint32)
    cap = capacity_for(len(distinct))
    pos = place(home_slots(distinct, cap), cap)
    slots = np.zeros((cap, 2), dtype=np.uint64)
    slots[pos, 0] = distinct
    slots[pos, 1] = (starts.astype(np.uint64) + np.uint64(1)) | (counts.astype(np.uint64) << np.uint64(32))
    return BuiltIndex(spec, cap, slots, postings, len(distinct))


def lookup(slots: Any, fps: Any) -> Any:
    """The value each fingerprint has in a table (``uint64[capacity, 2]``), 0 when absent: the probes
    a reader makes one key at a time, made for every key at once.

    Each step looks at a window of slots per key still probing, the window growing eightfold a step
    (as many slots in all as :data:`_WINDOW_SLOTS` allows), so that a key in a long run of occupied
    slots costs O(log run) vector steps: integer keys are their own hash, and consecutive ids (inserts)
    make such runs in an overlay's small table. Scalar probing of the stragglers cost 5-20 ms a
    cycle at k = 1,000 over 1M records (docs/decisions.md §90)."""
    cap = len(slots)
    fps = np.asarray(fps, dtype=np.uint64)
    out = np.zeros(len(fps), dtype=np.uint64)
    pos = (fps % np.uint64(cap)).astype(np.int64)
    pending = np.arange(len(fps))
    width = 1
    while len(pending):
        w = min(cap, width, max(8, _WINDOW_SLOTS // len(pending)))
        at = pos[pending, None] + np.arange(w)
        at[at >= cap] -= cap
        keys, values = slots[at, 0], slots[at, 1]
        empty = values == 0
        hit = ~empty & (keys == fps[pending, None])
        ends = empty | hit  # a probe ends at the key, or at an empty slot (absent)
        done = ends.any(axis=1)
        first = ends.argmax(axis=1)
        rows = np.flatnonzero(done)
        found = rows[hit[rows, first[rows]]]
        out[pending[found]] = values[found, first[found]]
        if w == cap:
            break  # every slot seen: the rest are absent from a full table
        pending = pending[~done]
        pos[pending] = (pos[pending] + w) % cap
        width *= 8
    return out


#: At most about this many slots are looked at in one vector step of :func:`lookup`.
_WINDOW_SLOTS = 1 << 18


def per_ordinal(slots: Any, postings: Any, size: int) -> tuple[Any, Any]:
    """For a secondary table: each ordinal's value fingerprint and its position in that value's postings."""
    fps = np.zeros(size, dtype=np.uint64)
    positions = np.zeros(size, dtype=np.int64)
    used = slots[slots[:, 1] != 0]
    if len(used):
        starts = (used[:, 1] & np.uint64(0xFFFFFFFF)).astype(np.int64) - 1
        counts = (used[:, 1] >> np.uint64(32)).astype(np.int64)
        first = np.cumsum(counts) - counts  # where each value's run begins in the repeated order
        g = np.arange(int(counts.sum()))
        within = g - np.repeat(first, counts)
        ords = postings[np.repeat(starts, counts) + within].astype(np.int64)
        fps[ords] = np.repeat(used[:, 0], counts)
        positions[ords] = within
    return fps, positions

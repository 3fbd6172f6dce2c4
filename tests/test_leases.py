"""Leases held by real processes: kill -9, fork with and without attaching first, removal races."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from hollow import layout
from hollow.lease import holders, lock_path
from tests.helpers import movies_producer
from tests.test_follow import TIMEOUT, Child, doorbells, follower, version_data

# Holds a snapshot of the announced version until its stdin closes or it is killed.
HOLDER = r"""
import json, os, sys
import hollow
root = sys.argv[1]
ds = hollow.open("movies", root=root, poll_interval=3600)
snap = ds.snapshot()
print(json.dumps({"event": "ready", "pid": os.getpid(), "version": snap.version,
                  "title": snap["Movie"][0].title}), flush=True)
sys.stdin.read()
snap.close()
ds.close()
print(json.dumps({"event": "end"}), flush=True)
"""


def state_files(ns_dir: Path) -> list[int]:
    return layout.list_versions(ns_dir)


def lock_files(ns_dir: Path) -> list[str]:
    """Lockfiles of versions (not the producer's own .producer.lock)."""
    return sorted(p.name for p in ns_dir.glob("*.lock") if layout.parse_state_name(p.name.removesuffix(".lock")))


def test_kill_9_of_a_lease_holder_lets_its_version_be_reclaimed(root: Path) -> None:
    ns_dir = root / "movies"
    with movies_producer(root, retain=1) as p:
        v1 = p.run_cycle(version_data(1))
        with Child(HOLDER, root) as kid:
            assert kid.expect("ready") == {"event": "ready", "pid": kid.pid, "version": v1, "title": "v1"}
            assert holders(lock_path(ns_dir, v1)) == [kid.pid]
            p.run_cycle(version_data(2))
            p.run_cycle(version_data(3))
            assert v1 not in p.reclaim()
            assert v1 in p.versions(), "a leased version was reclaimed"
            assert lock_path(ns_dir, v1).exists()
            os.kill(kid.pid, signal.SIGKILL)
            assert kid.proc.wait(TIMEOUT) == -signal.SIGKILL
        assert holders(lock_path(ns_dir, v1)) == []
        removed = p.reclaim()
        assert v1 in removed
        assert not (ns_dir / str(v1)).exists()
        assert not lock_path(ns_dir, v1).exists()
        # Its doorbell is the one thing left; the next announcement removes it.
        v4 = p.run_cycle(version_data(4))
        assert p._ringer.settle(TIMEOUT)  # rings (and removals) are carried out by the producer's helper
        assert doorbells(root, kid.pid) == []
        assert state_files(ns_dir) == [v4]
        assert lock_files(ns_dir) == [f"{v4}.lock"]


def test_process_that_forks_before_opening_reads_and_follows_in_the_child(root: Path) -> None:
    code = r"""
import json, os, sys
import hollow
from hollow.lease import holders, lock_path
root, nxt = sys.argv[1], int(sys.argv[2])
def say(**kw):
    os.write(1, (json.dumps(kw) + "\n").encode())
pid = os.fork()
if pid == 0:
    code = 1
    try:
        with hollow.open("movies", root=root, poll_interval=3600) as ds:
            with ds.snapshot() as snap:
                say(event="child", pid=os.getpid(), version=snap.version, title=snap["Movie"][0].title,
                    holders=holders(lock_path(ds.dir, snap.version)))
            ok = ds.wait_for(nxt, timeout=60)
            with ds.snapshot() as snap:
                say(event="followed", ok=ok, version=snap.version, title=snap["Movie"][0].title)
        code = 0
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
say(event="end", status=os.waitstatus_to_exitcode(status))
"""
    with movies_producer(root) as p:
        v1 = p.run_cycle(version_data(1))
        with Child(code, root, v1 + 1) as kid:
            got = kid.expect("child")
            assert got["pid"] != kid.pid
            assert (got["version"], got["title"]) == (v1, "v1")
            assert got["holders"] == [got["pid"]]
            v2 = p.run_cycle(version_data(2))
            assert kid.expect("followed") == {"event": "followed", "ok": True, "version": v2, "title": "v2"}
            assert kid.expect("end")["status"] == 0


# Opens a following dataset, takes a snapshot, then forks two children (gunicorn --preload).
# Each child takes and keeps a snapshot, reports, follows the next version, and exits when
# the file stop-<pid> appears. The parent closes its dataset on "close" and waits for them.
PRELOAD = r"""
import json, os, sys, time
import hollow
from hollow.lease import holders, lock_path
root, nxt, tmp = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def say(**kw):
    os.write(1, (json.dumps(kw) + "\n").encode())
ds = hollow.open("movies", root=root, poll_interval=3600)
snap = ds.snapshot()
say(event="ready", pid=os.getpid(), version=snap.version)
kids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            held = ds.snapshot()
            say(event="child", pid=os.getpid(), version=held.version, title=held["Movie"][0].title)
            ok = ds.wait_for(nxt, timeout=60)
            with ds.snapshot() as now:
                say(event="followed", pid=os.getpid(), ok=ok, version=now.version, title=now["Movie"][0].title)
            stop = os.path.join(tmp, f"stop-{os.getpid()}")
            deadline = time.monotonic() + 120
            while not os.path.exists(stop) and time.monotonic() < deadline:
                time.sleep(0.01)
            held.close()
            snap.close()
            ds.close()
            code = 0
        finally:
            os._exit(code)
    kids.append(pid)
sys.stdin.readline()
snap.close()
ds.close()
say(event="closed")
say(event="end", status=[os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in kids])
"""


def test_children_forked_after_attaching_hold_leases_of_their_own(root: Path, tmp_path: Path) -> None:
    ns_dir = root / "movies"
    with movies_producer(root, retain=1) as p:
        v1 = p.run_cycle(version_data(1))
        lock1 = lock_path(ns_dir, v1)
        with Child(PRELOAD, root, v1 + 1, tmp_path) as kid:
            kid.expect("ready", version=v1)
            children = [kid.expect("child", version=v1, title="v1")["pid"] for _ in range(2)]
            assert kid.pid not in children
            # Each child holds a lock of its own (an inherited one would show the parent's PID only).
            assert holders(lock1) == sorted([kid.pid, *children])
            v2 = p.run_cycle(version_data(2))
            for _ in children:
                got = kid.expect("followed")
                assert (got["ok"], got["version"], got["title"]) == (True, v2, "v2")
            kid.send("close")
            kid.expect("closed")
            assert holders(lock1) == sorted(children), "closing the parent's dataset dropped its children's leases"
            assert p.reclaim() == []
            assert v1 in p.versions()
            (tmp_path / f"stop-{children[0]}").touch()
            _wait_until_not_holding(lock1, children[0])
            assert holders(lock1) == [children[1]]
            assert p.reclaim() == []
            (tmp_path / f"stop-{children[1]}").touch()
            assert kid.expect("end")["status"] == [0, 0]
            assert holders(lock1) == []
            assert p.reclaim() == [v1]
            assert not lock1.exists()


# Opens a following dataset and holds a snapshot, forks one child whose first call on the
# dataset is argv[3]; the child then takes a snapshot of the next version once it follows it.
FIRST_CALL = r"""
import json, os, sys
import hollow
from hollow.lease import holders, lock_path
root, nxt, first = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def say(**kw):
    os.write(1, (json.dumps(kw) + "\n").encode())
ds = hollow.open("movies", root=root, poll_interval=3600)
snap = ds.snapshot()
pid = os.fork()
if pid == 0:
    code = 1
    try:
        say(event="forked", pid=os.getpid())
        out = {"event": "child", "pid": os.getpid()}
        if first == "wait_for":
            out["ok"] = ds.wait_for(nxt, timeout=30)
        else:
            held = ds.attach(snap.version) if first == "attach" else ds.snapshot()
            say(event="held", version=held.version, holders=holders(lock_path(ds.dir, held.version)))
            out["ok"] = ds.wait_for(nxt, timeout=30)
            held.close()
        with ds.snapshot() as now:
            out["now"] = [now.version, now["Movie"][0].title, holders(lock_path(ds.dir, now.version))]
        say(**out)
        ds.close()
        code = 0
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
snap.close()
ds.close()
say(event="end", status=os.waitstatus_to_exitcode(status))
"""


@pytest.mark.parametrize("first", ["snapshot", "attach", "wait_for"])
def test_child_forked_after_attaching_leases_and_follows_whatever_it_calls_first(root: Path, first: str) -> None:
    with movies_producer(root) as p:
        v1 = p.run_cycle(version_data(1))
        with Child(FIRST_CALL, root, v1 + 1, first) as kid:
            child = kid.expect("forked")["pid"]
            if first != "wait_for":
                held = kid.expect("held")
                assert held["version"] == v1
                assert child in held["holders"], f"the child uses its parent's lease on {v1}: {held}"
            v2 = p.run_cycle(version_data(2))
            got = kid.expect("child")
            assert kid.expect("end")["status"] == 0
    assert got["ok"] is True, f"after fork, a first call of {first} does not follow version {v2}"
    version, title, lessees = got["now"]
    assert (version, title) == (v2, "v2")
    assert child in lessees


def _wait_until_not_holding(path: Path, pid: int) -> None:
    """Wait (generously) until *pid* (a grandchild: it cannot be waited for) holds no lock on *path*."""
    deadline = time.monotonic() + TIMEOUT
    while pid in holders(path):
        assert time.monotonic() < deadline, f"{pid} still holds {path}"
        time.sleep(0.01)


# Opens the announced version over and over (open, snapshot, read, close) until stdin closes.
CHURN = r"""
import json, os, sys, threading
import hollow
root = sys.argv[1]
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
seen, errors, bad = [], [], []
while not stop.is_set():
    try:
        with hollow.open("movies", root=root, follow=False) as ds, ds.snapshot() as snap:
            v = snap.version
            title = snap["Movie"][0].title
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
        continue
    if title != f"v{v}":
        bad.append([v, title])
    if not seen or seen[-1] != v:
        seen.append(v)
print(json.dumps({"event": "end", "seen": seen, "errors": errors[:20], "bad": bad[:20]}), flush=True)
"""


def test_readers_racing_with_removal_see_only_announced_versions_and_shm_stays_bounded(root: Path) -> None:
    ns_dir = root / "movies"
    retain = 1
    announced = []
    most_states = most_locks = 0
    with movies_producer(root, retain=retain) as p:
        announced.append(p.run_cycle(version_data(1, count=5)))
        with Child(CHURN, root) as churn, follower(root, poll=5.0) as fol:
            fol.expect("ready")
            for n in range(2, 202):
                announced.append(p.run_cycle(version_data(n, count=5)))
                most_states = max(most_states, len(state_files(ns_dir)))
                most_locks = max(most_locks, len(lock_files(ns_dir)))
            fol.expect("update", version=announced[-1])
            churned = churn.finish()
            followed = fol.finish()
        assert announced == list(range(1, 202))
        # The follower leases at most two versions at a time (current and the one it moves to),
        # the churning reader one: bounded by retention plus what is leased.
        bound = retain + 3
        assert most_states <= bound, most_states
        assert most_locks <= bound, most_locks
        p.reclaim()  # whatever the readers held is free now
        assert state_files(ns_dir) == [announced[-1]]
        assert lock_files(ns_dir) == [f"{announced[-1]}.lock"]
    assert churned["errors"] == []
    assert churned["bad"] == []
    assert churned["seen"], "the churning reader read nothing"
    assert set(churned["seen"]) <= set(announced)
    assert churned["seen"] == sorted(churned["seen"])
    assert followed["bad"] == []
    snapshots = [v for v, _ in followed["snapshots"]]
    assert snapshots == sorted(set(snapshots))
    assert snapshots[-1] == announced[-1]


ESCAPED = r"""
import gc, json, os, sys
import hollow
root = sys.argv[1]
def mapped(path):
    with open("/proc/self/maps") as f:
        return [line.split(None, 5)[-1].strip() for line in f if path in line]
ds = hollow.open("movies", root=root, follow=False)
snap = ds.snapshot()
path = os.path.join(root, "movies", str(snap.version))
record = snap["Movie"][0]
view = snap["Movie"]
snap.close()
ds.close()
print(json.dumps({"event": "ready", "version": snap.version, "maps": mapped(path)}), flush=True)
sys.stdin.readline()
out = {"event": "end", "exists": os.path.exists(path), "maps_while_held": mapped(path),
       "title": record.title, "other": view[1].title, "count": len(view)}
del record, view, snap, ds
gc.collect()
out["maps_after"] = mapped(path)
print(json.dumps(out), flush=True)
"""


def test_record_outliving_its_reclaimed_file_reads_and_its_mapping_goes_when_dropped(root: Path) -> None:
    with movies_producer(root, retain=1) as p:
        v1 = p.run_cycle(version_data(1))
        path = str(root / "movies" / str(v1))
        with Child(ESCAPED, root) as kid:
            ready = kid.expect("ready", version=v1)
            assert ready["maps"], "the child did not map the version at all"
            p.run_cycle(version_data(2))
            p.run_cycle(version_data(3))
            assert v1 not in p.versions(), "the version was not reclaimed: the test would test nothing"
            kid.send("go")
            end = kid.expect("end")
    assert end["exists"] is False
    assert end["maps_while_held"], "the mapping went while a record still pointed into it"
    assert all(m == f"{path} (deleted)" for m in end["maps_while_held"])
    assert (end["title"], end["other"], end["count"]) == ("v1", "Movie 1 of v1", 50)
    assert end["maps_after"] == [], "an unlinked version stays mapped after its objects were dropped"

"""Following announcements: how fast readers switch, and whether /dev/shm stays bounded.

Two measurements, each with real processes:

1. **announce → switch.** N follower processes (default 32) each record, in
   ``on_update``, the moment their dataset switched to a new version. For each
   of 200 announcements the latency is from the producer's announcement
   (``announced_at_ns``, taken just before the announcement file is renamed
   into place) to the last of the N readers switching. Reported as p50/p99, next
   to readers that poll the announcement file once a second (Hollow's
   filesystem watcher) in the same run.
2. **continuous publishing.** 10 versions a second for 60 s while 16 readers
   take snapshots in a loop and check that every record they read belongs to
   their snapshot's version. Reports reader errors and the most versions (and
   bytes) present in the namespace at once, against retention.

Run: ``.venv/bin/python bench/follow.py`` (``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import hollow
from hollow import layout
from hollowd import Producer

ROOT_DIR = Path(__file__).resolve().parent.parent

SCHEMA = ROOT_DIR / "schemas" / "movies.capnp"


def _records(version: int, n: int = 100) -> list[dict[str, Any]]:
    """Records that name their version (each cycle differs, so versions go 1, 2, 3, ...)."""
    return [{"id": i, "title": f"v{version} movie {i}", "year": 2000, "genre": "Drama"} for i in range(n)]


# --- child processes -------------------------------------------------------------------


def follower(root: str, stop_file: str) -> None:
    """Record when each version arrives; print them as JSON when *stop_file* appears."""
    seen: list[tuple[int, int]] = []
    ds = hollow.open("movies", root=root)
    ds.on_update(lambda v: seen.append((v, time.time_ns())))
    print("ready", flush=True)
    while not os.path.exists(stop_file):
        time.sleep(0.05)
    ds.close()
    print(json.dumps(seen), flush=True)


def poller(root: str, stop_file: str) -> None:
    """Hollow's way: look at the announcement once a second."""
    ns = Path(root) / "movies"
    seen: list[tuple[int, int]] = []
    last = 0
    print("ready", flush=True)
    while not os.path.exists(stop_file):
        a = layout.read_announcement(ns)
        if a is not None and a.version != last:
            last = a.version
            seen.append((a.version, time.time_ns()))
        time.sleep(1.0)
    print(json.dumps(seen), flush=True)


def snapshot_loop(root: str, stop_file: str) -> None:
    """Take snapshots in a loop; every record must belong to the snapshot's version."""
    ds = hollow.open("movies", root=root)
    snaps = errors = 0
    versions: set[int] = set()
    last = 0
    print("ready", flush=True)
    while not os.path.exists(stop_file):
        try:
            with ds.snapshot() as snap:
                movies = snap["Movie"]
                for i in (0, 50, 99):
                    if movies[i].title != f"v{snap.version} movie {i}":
                        errors += 1
                if snap.version < last:
                    errors += 1
                last = snap.version
                versions.add(snap.version)
            snaps += 1
        except Exception:
            errors += 1
    ds.close()
    print(json.dumps({"snapshots": snaps, "errors": errors, "versions": len(versions)}), flush=True)


# --- the parent ------------------------------------------------------------------------


def _start(kind: str, root: Path, stop: Path, count: int) -> list[subprocess.Popen[str]]:
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", kind, str(root), str(stop)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(count)
    ]
    for p in procs:
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{kind} process failed to start")
    return procs


def _finish(procs: list[subprocess.Popen[str]], stop: Path) -> list[Any]:
    stop.touch()
    out = []
    for p in procs:
        text, _ = p.communicate(timeout=120)
        out.append(json.loads(text.strip().splitlines()[-1]))
    stop.unlink()
    return out


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def measure_switch(root: Path, followers: int, announcements: int, pollers: int) -> dict[str, Any]:
    stop = root / "stop"
    producer = Producer("movies", schema=SCHEMA, primary_keys={"Movie": "id"}, root=root, retain=3)
    producer.run_cycle(lambda s: s.add_all("Movie", _records(1)))
    fs = _start("follower", root, stop, followers)
    ps = _start("poller", root, stop, pollers)
    announced: dict[int, int] = {}
    print(f"announcing {announcements} versions to {followers} followers and {pollers} pollers", file=sys.stderr)
    for k in range(2, announcements + 2):
        v = producer.run_cycle(lambda s, k=k: s.add_all("Movie", _records(k)))
        a = layout.read_announcement(producer.dir)
        assert a is not None
        assert a.version == v
        announced[v] = a.announced_at_ns
        time.sleep(0.05)
    time.sleep(1.5)  # let the pollers see the last one
    follow_out = _finish(fs, stop)
    poll_out = _finish(ps, stop)
    producer.close()
    last_switch: dict[int, int] = {}
    per_reader: list[float] = []
    missing = 0
    for seen in follow_out:
        got = dict(seen)
        for v, t0 in announced.items():
            if v not in got:
                missing += 1  # skipped ahead: allowed, but counted
                continue
            per_reader.append((got[v] - t0) / 1e6)
            last_switch[v] = max(last_switch.get(v, 0), got[v])
    every = [(last_switch[v] - announced[v]) / 1e6 for v in announced if v in last_switch]
    # A poller skips versions: each announcement waits until the poller sees it or a later one.
    polled = []
    for seen in poll_out:
        for v, t0 in announced.items():
            first = next((t for got, t in seen if got >= v), None)
            if first is not None:
                polled.append((first - t0) / 1e6)
    return {
        "followers": followers,
        "announcements": announcements,
        "all_switched_p50_ms": statistics.median(every),
        "all_switched_p99_ms": _pct(every, 0.99),
        "per_reader_p50_ms": statistics.median(per_reader),
        "per_reader_p99_ms": _pct(per_reader, 0.99),
        "skipped": missing,
        "polling_p50_ms": statistics.median(polled) if polled else None,
        "polling_p99_ms": _pct(polled, 0.99) if polled else None,
    }


def measure_continuous(root: Path, readers: int, seconds: float, rate: float, retain: int) -> dict[str, Any]:
    stop = root / "stop"
    producer = Producer("movies", schema=SCHEMA, primary_keys={"Movie": "id"}, root=root, retain=retain)
    producer.run_cycle(lambda s: s.add_all("Movie", _records(1)))
    procs = _start("snapshots", root, stop, readers)
    print(f"publishing {rate:g}/s for {seconds:g} s with {readers} readers", file=sys.stderr)
    most_versions = most_bytes = published = 0
    start = time.monotonic()
    k = 1
    while time.monotonic() - start < seconds:
        k += 1
        producer.run_cycle(lambda s, k=k: s.add_all("Movie", _records(k)))
        published += 1
        states = [p for p in producer.dir.iterdir() if p.name.isdigit()]
        most_versions = max(most_versions, len(states))
        most_bytes = max(most_bytes, sum(p.stat().st_size for p in states if p.exists()))
        time.sleep(max(0.0, start + (k - 1) / rate - time.monotonic()))
    out = _finish(procs, stop)
    size = max(p.stat().st_size for p in producer.dir.iterdir() if p.name.isdigit())
    producer.close()
    return {
        "published": published,
        "readers": readers,
        "snapshots": sum(o["snapshots"] for o in out),
        "reader_errors": sum(o["errors"] for o in out),
        "retain": retain,
        "most_versions_present": most_versions,
        "most_bytes_present": most_bytes,
        "version_bytes": size,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer processes and a shorter run")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "ROOT", "STOP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, root, stop = args.child
        {"follower": follower, "poller": poller, "snapshots": snapshot_loop}[kind](root, stop)
        return
    root = Path(f"/dev/shm/hollow-bench-{os.getpid()}")
    try:
        root.mkdir()
        switch = measure_switch(root / "a", 8 if args.quick else 32, 40 if args.quick else 200, 2)
        cont = measure_continuous(root / "b", 4 if args.quick else 16, 10 if args.quick else 60, 10.0, 3)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nannounce -> switch, {switch['followers']} followers, {switch['announcements']} announcements")
    print(f"{'':32}{'p50 ms':>10}{'p99 ms':>10}")
    p50, p99 = switch["all_switched_p50_ms"], switch["all_switched_p99_ms"]
    print(f"{'hollowd: all readers switched':32}{p50:>10.2f}{p99:>10.2f}")
    print(f"{'hollowd: per reader':32}{switch['per_reader_p50_ms']:>10.2f}{switch['per_reader_p99_ms']:>10.2f}")
    if switch["polling_p50_ms"] is not None:
        print(f"{'polling once a second':32}{switch['polling_p50_ms']:>10.2f}{switch['polling_p99_ms']:>10.2f}")
        ratio = switch["polling_p99_ms"] / max(switch["all_switched_p99_ms"], 1e-9)
        print(f"p99: polling / hollowd = {ratio:.0f}x   (target: hollowd p99 <= 10 ms)")
    print(f"versions skipped by some reader (allowed: never back): {switch['skipped']}")
    print(f"\ncontinuous publishing: {cont['published']} versions at 10/s, {cont['readers']} readers")
    print(f"snapshots taken {cont['snapshots']:,}, reader errors {cont['reader_errors']}")
    print(
        f"most versions in /dev/shm at once: {cont['most_versions_present']} (retain {cont['retain']}), "
        f"{cont['most_bytes_present']:,} bytes ({cont['version_bytes']:,} per version)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"switch": switch, "continuous": cont}, indent=1))


if __name__ == "__main__":
    main()

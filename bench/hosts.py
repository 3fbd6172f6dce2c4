"""Many hosts (issue 11): a producer and 4 followers joined only by a real S3 server (SeaweedFS).

One run, 1,000,000 ``Movie`` records (bench/movie.capnp), 1,000 changed per version
(800 updates, 100 inserts, 100 removals):

* the snapshot blob's and the deltas' sizes, compressed and not, and the bytes a
  follower fetches per version against the snapshot blob;
* from the announcement's write in the store until all 4 followers serve the new
  version, p50 and p99 over 30 versions, with a 1 s watch and with a 0.1 s watch
  (each version is published at a random moment of the watch's period);
* a fresh follower with nothing local until it serves the announced version.

The producer runs in this process; each follower is a process of its own (this
script with ``--follower``), with its own shared-memory root, printing each version
it serves. Run ``.venv/bin/python bench/hosts.py [--n N] [--versions V] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from core import NAMESPACE, SCHEMA, TYPE, log, make_record, make_records, percentile, render  # noqa: E402

from hollowd import Producer, blobs  # noqa: E402
from hollowd.follower import Follower  # noqa: E402
from hollowd.replication import Publisher  # noqa: E402
from tests.seaweed import Seaweed  # noqa: E402

FOLLOWERS = 4


def follower_main(url: str, root: str, work: str, interval: float) -> None:
    """A follower process: prints ``version time bytes_fetched seconds`` each time it serves a new version
    (seconds: what that look at the store took, from the GET of the announcement to the local announcement)."""
    store = blobs.open_store(url)
    f = Follower(store, NAMESPACE, root=root, work_dir=work, interval=interval)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print(f"started {time.time()}", flush=True)
    while not stop.is_set():
        began, began_at = time.monotonic(), time.time()
        if f.poll():
            stages = json.dumps(f.last_timings, separators=(",", ":"))
            print(
                f"{f.here} {time.time()} {f.bytes_fetched} {time.monotonic() - began} {began_at} {stages}", flush=True
            )
        elif f.last_error:
            print(f"error {f.last_error}", file=sys.stderr, flush=True)
        stop.wait(max(0.0, interval - (time.monotonic() - began)))
    f.close()
    store.close()


class Followers:
    """FOLLOWERS follower processes, each reporting the versions it serves."""

    def __init__(self, url: str, base: Path, interval: float, env: dict[str, str]) -> None:
        self.procs = []
        self.started: list[float] = []
        for i in range(FOLLOWERS):
            root, work = base / f"f{i}-{interval}", base / f"work{i}-{interval}"
            cmd = [sys.executable, __file__, "--follower", url, str(root), str(work), str(interval)]
            self.procs.append(
                subprocess.Popen(
                    cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **env}
                )
            )
        self.seen: list[dict[int, tuple[float, int]]] = [{} for _ in self.procs]
        self.apply: list[float] = []
        #: per version and follower: (when its applying look began, its stages' seconds)
        self.looks: list[dict[int, tuple[float, dict[str, float]]]] = [{} for _ in self.procs]
        for p in self.procs:
            line = p.stdout.readline().split()  # type: ignore[union-attr]
            self.started.append(float(line[1]))
        # One reader thread a follower: select() on a pipe read through a buffered file misses a second
        # line that arrived with the first (it waits in the buffer, the fd is no longer readable).
        self.lines: queue.Queue[tuple[int, list[str]]] = queue.Queue()
        for i, p in enumerate(self.procs):
            threading.Thread(target=self._read, args=(i, p.stdout), daemon=True).start()

    def _read(self, i: int, out: Any) -> None:
        for line in out:
            self.lines.put((i, line.split()))

    def wait_for(self, version: int, timeout: float = 600) -> list[tuple[float, int]]:
        """Each follower's (time it served *version*, bytes fetched by then)."""
        deadline = time.monotonic() + timeout
        while any(version not in s for s in self.seen):
            if time.monotonic() > deadline:
                raise RuntimeError(f"followers did not reach {version}: {[max(s, default=0) for s in self.seen]}")
            try:
                i, line = self.lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if len(line) == 6:
                self.seen[i][int(line[0])] = (float(line[1]), int(line[2]))
                self.apply.append(float(line[3]))
                self.looks[i][int(line[0])] = (float(line[4]), json.loads(line[5]))
        return [s[version] for s in self.seen]

    def close(self) -> None:
        for p in self.procs:
            p.stdin.close()  # type: ignore[union-attr]
        for p in self.procs:
            p.wait(timeout=60)


def changes(rng: random.Random, live: list[int], next_id: list[int], k: int) -> Any:
    def edit(d: Any) -> None:
        picks = rng.sample(range(len(live)), k * 9 // 10)
        for j in picks[: k * 8 // 10]:
            d.upsert(TYPE, make_record(live[j], rng))
        gone = sorted(picks[k * 8 // 10 :], reverse=True)
        for j in gone:
            d.remove(TYPE, live[j])
            live[j] = live[-1]
            live.pop()
        for _ in range(k // 10):
            d.upsert(TYPE, make_record(next_id[0], rng))
            live.append(next_id[0])
            next_id[0] += 1

    return edit


def run(n: int, versions: int, k: int) -> dict[str, Any]:
    base = Path("/dev/shm") / f"hollow-bench-hosts-{uuid.uuid4().hex[:6]}"
    data = Path("/tmp") / f"hollow-bench-weed-{os.getpid()}"
    server = Seaweed(data)
    env = server.env()
    os.environ.update(env)
    res: dict[str, Any] = {"n": n, "k": k, "versions": versions}
    try:
        url = f"s3://hollow-bench-{uuid.uuid4().hex[:6]}/movies"
        store = blobs.open_store(url)
        assert isinstance(store, blobs.S3Store)
        store.create_bucket()
        producer = Producer(
            NAMESPACE, schema=SCHEMA, primary_keys={TYPE: "id"}, indexes={TYPE: ["genre"]}, root=base / "producer"
        )
        pub = Publisher(store, producer, snapshot_every=10_000)  # the deltas only, after the first snapshot
        pub.claim()
        records = make_records(n, 7)
        log(f"first build of {n:,} records")
        producer.run_cycle(lambda s, records=records: s.add_all(TYPE, records))
        first = pub.publish()
        snap = first.blobs["snapshot"]
        res["snapshot"] = {"stored": snap["size"], "raw": snap["raw"]}
        log(f"snapshot blob {snap['size']:,} bytes ({snap['raw']:,} uncompressed)")
        rng = random.Random(11)
        live = [r["id"] for r in records]
        del records
        next_id = [n]
        for interval in (1.0, 0.1):
            log(f"{FOLLOWERS} followers, watch {interval} s")
            fl = Followers(url, base, interval, env)
            try:
                at = fl.wait_for(first.version if interval == 1.0 else producer.versions()[-1])
                fl.apply.clear()  # from here on, the versions' applies only
                if interval == 1.0:
                    res["fresh_seconds"] = [t - s for (t, _), s in zip(at, fl.started, strict=True)]
                    res["fresh_bytes"] = [b for _, b in at]
                lat, fetched, deltas, woke = [], [], [], []
                stages: dict[str, list[float]] = {}
                for _ in range(versions):
                    time.sleep(rng.uniform(0, interval))
                    producer.run_incremental(changes(rng, live, next_id, k))
                    before = [max(s.values(), key=lambda x: x[1])[1] if s else 0 for s in fl.seen]
                    h = pub.publish()
                    announced = pub.last_announced_at
                    at = fl.wait_for(h.version)
                    lat.append(max(t for t, _ in at) - announced)
                    slowest = max(range(FOLLOWERS), key=lambda j, at=at: at[j][0])
                    began, timings = fl.looks[slowest][h.version]
                    woke.append(began - announced)  # the watch's phase: announced → the slowest one's look
                    for stage, seconds in timings.items():
                        stages.setdefault(stage, []).append(seconds)
                    fetched += [b - b0 for (_, b), b0 in zip(at, before, strict=True)]
                    deltas.append(h.blobs["delta"])
                res[f"watch {interval}"] = {
                    "p50": statistics.median(lat),
                    "p99": percentile(lat, 99),
                    "max": max(lat),
                    "fetched": statistics.median(fetched),
                    "delta_stored": statistics.median(d["size"] for d in deltas),
                    "delta_raw": statistics.median(d["raw"] for d in deltas),
                    "apply_p50": statistics.median(fl.apply),
                    "apply_p99": percentile(fl.apply, 99),
                    # the slowest follower of each version: from the announcement to its look, then its stages
                    "slowest": {
                        "wait": [statistics.median(woke), percentile(woke, 99)],
                        **{st: [statistics.median(v), percentile(v, 99)] for st, v in sorted(stages.items())},
                    },
                }
                log(f"watch {interval}: {res[f'watch {interval}']}")
            finally:
                fl.close()
        producer.close()
        store.close()
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
    return res


def report(res: dict[str, Any]) -> str:
    snap = res["snapshot"]
    w1, w01 = res["watch 1.0"], res["watch 0.1"]
    mib = 1 << 20
    rows = [
        ["snapshot blob, compressed / uncompressed", f"{snap['stored'] / mib:.1f} / {snap['raw'] / mib:.1f} MiB", ""],
        [
            f"delta blob ({res['k']:,} changed), compressed / uncompressed (median)",
            f"{w1['delta_stored'] / 1024:.1f} / {w1['delta_raw'] / 1024:.1f} KiB",
            "",
        ],
        [
            "bytes a follower fetches per version (median)",
            f"{w1['fetched'] / 1024:.1f} KiB = {100 * w1['fetched'] / snap['stored']:.2f}% of the snapshot blob",
            "<= 3%",
        ],
        [
            f"announce -> all {FOLLOWERS} followers serving, 1 s watch: p50 / p99 / max",
            f"{w1['p50']:.3f} / {w1['p99']:.3f} / {w1['max']:.3f} s",
            "p99 <= 1.5 s",
        ],
        [
            f"announce -> all {FOLLOWERS} followers serving, 0.1 s watch: p50 / p99 / max",
            f"{w01['p50']:.3f} / {w01['p99']:.3f} / {w01['max']:.3f} s",
            "",
        ],
        [
            "one follower's look at the store that applied a version, 1 s / 0.1 s watch: p50 / p99",
            f"{w1['apply_p50']:.3f} / {w1['apply_p99']:.3f} s, {w01['apply_p50']:.3f} / {w01['apply_p99']:.3f} s",
            "",
        ],
        *[
            [
                f"where the slowest follower's time went, {w} s watch: p50 / p99 (s)",
                ", ".join(f"{st} {a:.3f}/{b:.3f}" for st, (a, b) in res[f"watch {w}"]["slowest"].items() if b >= 0.002),
                "",
            ]
            for w in ("1.0", "0.1")
        ],
        [
            "fresh follower, nothing local -> serving (median of 4 started together)",
            f"{statistics.median(res['fresh_seconds']):.2f} s for "
            f"{statistics.median(res['fresh_bytes']) / mib:.1f} MiB",
            "",
        ],
    ]
    title = f"MANY HOSTS: {res['n']:,} records, {res['k']:,} changed per version, {res['versions']} versions, SeaweedFS"
    return render(title, ["", "hollowd", "target"], rows)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--follower":
        follower_main(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--versions", type=int, default=30)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    res = run(args.n, args.versions, args.k)
    print(report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

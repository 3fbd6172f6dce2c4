"""Changes benchmark (issue 10): what publishing a version that differs in k records costs.

One run measures, side by side at N records (``Movie`` from movie.capnp), hollowd against
LMDB + msgpack and SQLite:

* the first full build (hollowd ``run_cycle``) / bulk load, from record dicts;
* publishing k = 1, 1,000 and 10,000 changed records (80 % updates, 10 % inserts, 10 %
  deletes), from the call until a new reader sees the change, median of several runs
  (hollowd ``run_incremental``; LMDB one write transaction; SQLite one transaction);
* hollowd only: the same k handed to ``run_cycle`` with all N records, per record;
* hollowd only: the /dev/shm bytes each new version adds (every inode counted once);
* the writer's RSS after the cycles, against its data file;
* hollowd lookups (core.py's) on the first and on the last version.

Each system's writer is a child process of its own (this script with ``--child``), driven
over a pipe, so that every one gets the same changes and its RSS is its own. Run
``.venv/bin/python bench/changes.py [--quick] [--n N] [--json PATH]``; progress goes to
stderr, the tables to stdout. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import psutil
from core import (
    NAMESPACE,
    SCHEMA,
    TYPE,
    by_id,
    environment,
    hollow_lookups,
    log,
    make_record,
    make_records,
    percentile,
    render,
    time_batches,
    timed,
)

import hollow
from hollow import layout
from hollowd import Producer

SYSTEMS = ("hollowd", "lmdb", "sqlite")
LABELS = {"hollowd": "hollowd", "lmdb": "LMDB + msgpack", "sqlite": "SQLite"}
KS = (1, 1000, 10_000)
MIB = 1 << 20

SQL_CREATE = "CREATE TABLE movie (id INTEGER PRIMARY KEY, title TEXT, year INTEGER, rating REAL, genre TEXT, tags TEXT)"
SQL_UPSERT = (
    "INSERT INTO movie VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
    "title = excluded.title, year = excluded.year, rating = excluded.rating, genre = excluded.genre, "
    "tags = excluded.tags"
)
SQL_DELETE = "DELETE FROM movie WHERE id = ?"
SQL_TITLE = "SELECT title, year FROM movie WHERE id = ?"

# The targets.
K1_MS = 5.0
VS_LMDB = 3.0
SHM_SHARE = 0.10
RSS_MULTIPLE = 2.0
BUILD_S_AT_1M = 1.3


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}x" if reference else "-"


def k_label(k: int) -> str:
    return f"k={k:,}"


# --- configuration ----------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    n: int
    ks: tuple[int, ...]
    reps: int
    full_reps: int
    lookup_keys: int
    warmup_keys: int
    seed: int
    quick: bool


def parse_config(argv: Sequence[str] | None) -> tuple[Config, Path | None]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="records (default 1,000,000; 100,000 with --quick)")
    ap.add_argument("--quick", action="store_true", help="N=100,000, fewer repetitions: a few minutes")
    ap.add_argument("--reps", type=int, default=None, help="runs of each k (default 5; 3 with --quick)")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write every result as JSON here")
    args = ap.parse_args(argv)
    n = args.n or (100_000 if args.quick else 1_000_000)
    if n < 1000:
        ap.error("--n must be at least 1000")
    reps = args.reps or (3 if args.quick else 5)
    lookups = min(20 * n, 100_000 if args.quick else 300_000)
    cfg = Config(
        n=n,
        ks=tuple(k for k in KS if k <= n // 2),  # room for every run's deletes and updates
        reps=reps,
        full_reps=min(reps, 3),
        lookup_keys=lookups,
        warmup_keys=lookups,
        seed=args.seed,
        quick=args.quick,
    )
    return cfg, args.json


# --- the changes every system gets ----------------------------------------------------


@dataclass
class Changes:
    """One version's worth of changes: records to upsert, keys to delete, one record a new reader must see."""

    upserts: list[dict[str, Any]]
    deletes: list[int]
    check_id: int
    check_title: str

    def message(self) -> dict[str, Any]:
        return {"upserts": self.upserts, "deletes": self.deletes, "check": [self.check_id, self.check_title]}


@dataclass
class ChangeMaker:
    """Draws change sets over ids 0..n-1 (inserts get new ids from n up) and remembers what they did."""

    n: int
    rng: random.Random
    deleted: set[int] = field(default_factory=set)
    next_id: int = 0
    revision: int = 0
    log: dict[int, dict[str, Any] | None] = field(default_factory=dict)  # id -> its record now, None if deleted

    def __post_init__(self) -> None:
        self.next_id = self.n

    def live_base_id(self) -> int:
        while True:
            i = self.rng.randrange(self.n)
            if i not in self.deleted:
                return i

    def make(self, k: int) -> Changes:
        """k changes: 10 % deletes, 10 % inserts, the rest updates that change the title."""
        self.revision += 1
        n_del = n_ins = k // 10
        n_upd = k - n_del - n_ins
        if n_upd + n_del > 0.9 * (self.n - len(self.deleted)):
            raise ValueError(f"k={k:,}: too few records left to change; use a larger --n or fewer --reps")
        picked: dict[int, None] = {}
        while len(picked) < n_upd + n_del:
            picked[self.live_base_id()] = None
        ids = list(picked)
        upserts = []
        for i in ids[:n_upd]:
            rec = make_record(i, self.rng)
            rec["title"] += f" (rev {self.revision})"
            upserts.append(rec)
        for i in range(self.next_id, self.next_id + n_ins):
            upserts.append(make_record(i, self.rng))
        self.next_id += n_ins
        deletes = ids[n_upd:]
        self.deleted.update(deletes)
        for rec in upserts:
            self.log[rec["id"]] = rec
        for i in deletes:
            self.log[i] = None
        return Changes(upserts, deletes, upserts[0]["id"], upserts[0]["title"])


# --- the writers, each in a child process -------------------------------------------


def shm_inodes(ns_dir: Path) -> dict[tuple[int, int], int]:
    """(st_dev, st_ino) -> allocated bytes of every file under *ns_dir*: hard links counted once."""
    out: dict[tuple[int, int], int] = {}
    for dirpath, _dirs, files in os.walk(ns_dir):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(os.path.join(dirpath, name), follow_symlinks=False)
                out[st.st_dev, st.st_ino] = st.st_blocks * 512
    return out


def shm_added(before: dict[tuple[int, int], int], after: dict[tuple[int, int], int]) -> int:
    """Bytes the new state occupies that the old one did not: new inodes, and the growth of old ones."""
    return sum(max(0, size - before.get(inode, 0)) for inode, size in after.items())


class Writer:
    """One system's writer: a first bulk load, then change sets; every call says how long it took."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def build(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    def change(self, ch: Changes) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class HollowWriter(Writer):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.hroot = root / "hollow"
        self.producer = Producer(
            NAMESPACE, schema=SCHEMA, primary_keys={TYPE: "id"}, indexes={TYPE: ["genre"]}, root=self.hroot
        )
        self.ns_dir = self.hroot / NAMESPACE
        self.current: dict[int, dict[str, Any]] | None = None  # only for the full-cycle phase

    def sees(self, ch: Changes) -> bool:
        """Whether a new reader (a fresh hollow.open, follow=False) sees *ch*'s check record."""
        with hollow.open(NAMESPACE, root=self.hroot, follow=False) as ds, ds.snapshot() as snap:
            r = snap[TYPE].get(ch.check_id)
            return r is not None and r.title == ch.check_title

    def build(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        versions: list[int] = []
        took = timed(lambda: versions.append(self.producer.run_cycle(lambda state: state.add_all(TYPE, records))))
        path = self.ns_dir / layout.state_name(versions[0])
        st = path.stat()
        with hollow.open(NAMESPACE, root=self.hroot, follow=False) as ds, ds.snapshot() as snap:
            snap[TYPE].get(records[0]["id"])  # loads the embedded schema: later opens find it cached
        return {"s": took, "version": versions[0], "file_bytes": st.st_size, "file_alloc_bytes": st.st_blocks * 512}

    def _publish(self, ch: Changes, publish: Callable[[], int]) -> dict[str, Any]:
        before = shm_inodes(self.ns_dir)
        gc.collect()
        t0 = time.perf_counter()
        version = publish()
        ok = self.sees(ch)
        took = time.perf_counter() - t0
        after = shm_inodes(self.ns_dir)
        if not ok:
            raise RuntimeError(f"hollowd: a new reader of version {version} does not see record {ch.check_id}")
        return {
            "s": took,
            "version": version,
            "shm_added_bytes": shm_added(before, after),
            "shm_total_bytes": sum(after.values()),
            "live_versions": len(layout.list_versions(self.ns_dir)),
        }

    def change(self, ch: Changes) -> dict[str, Any]:
        def fill(delta: Any) -> None:
            for rec in ch.upserts:
                delta.upsert(TYPE, rec)
            for key in ch.deletes:
                delta.remove(TYPE, key)

        return self._publish(ch, lambda: self.producer.run_incremental(fill))

    def full_begin(self, n: int, seed: int, log_pairs: list[list[Any]]) -> dict[str, Any]:
        """The current records, all of them (for run_cycle): the first build's, with every change since."""
        current = {r["id"]: r for r in make_records(n, seed)}
        for key, rec in log_pairs:
            if rec is None:
                current.pop(key, None)
            else:
                current[key] = rec
        self.current = current
        gc.collect()
        gc.freeze()
        return {"records": len(current)}

    def full_change(self, ch: Changes) -> dict[str, Any]:
        """*ch* applied to the current records, then all of them handed to run_cycle."""
        assert self.current is not None
        for rec in ch.upserts:
            self.current[rec["id"]] = rec  # an update keeps its place; an insert goes last
        for key in ch.deletes:
            del self.current[key]
        records = list(self.current.values())
        out = self._publish(ch, lambda: self.producer.run_cycle(lambda state: state.add_all(TYPE, records)))
        out["records"] = len(records)
        return out

    def close(self) -> None:
        self.producer.close()


def lmdb_key(i: int) -> bytes:
    return i.to_bytes(8, "big")


class LmdbWriter(Writer):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.path = root / "lmdb"
        self.env: Any = None

    def build(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        ordered = by_id(records)
        packb = msgpack.packb
        self.env = lmdb.open(str(self.path), map_size=max(256 << 20, len(records) * 2048), subdir=True)

        def load() -> None:
            with self.env.begin(write=True) as txn:
                txn.cursor().putmulti(((lmdb_key(r["id"]), packb(r)) for r in ordered), append=True)

        took = timed(load)
        size = (self.path / "data.mdb").stat()
        return {"s": took, "file_bytes": size.st_size, "file_alloc_bytes": size.st_blocks * 512}

    def change(self, ch: Changes) -> dict[str, Any]:
        packb, unpackb = msgpack.packb, msgpack.unpackb
        gc.collect()
        t0 = time.perf_counter()
        with self.env.begin(write=True) as txn:
            for rec in ch.upserts:
                txn.put(lmdb_key(rec["id"]), packb(rec))
            for key in ch.deletes:
                txn.delete(lmdb_key(key))
        with self.env.begin() as txn:
            raw = txn.get(lmdb_key(ch.check_id))
            ok = raw is not None and unpackb(raw)["title"] == ch.check_title
        took = time.perf_counter() - t0
        if not ok:
            raise RuntimeError(f"LMDB: a new read transaction does not see record {ch.check_id}")
        return {"s": took}

    def close(self) -> None:
        if self.env is not None:
            self.env.close()


def sqlite_row(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["id"], r["title"], r["year"], r["rating"], r["genre"], json.dumps(r["tags"]))


class SqliteWriter(Writer):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.path = root / "movies.sqlite"
        self.conn = sqlite3.connect(self.path)
        self.conn.execute("PRAGMA journal_mode=WAL")

    def build(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        ordered = by_id(records)
        conn = self.conn

        def load() -> None:
            with conn:
                conn.execute(SQL_CREATE)
                conn.executemany("INSERT INTO movie VALUES (?, ?, ?, ?, ?, ?)", map(sqlite_row, ordered))
                conn.execute("CREATE INDEX movie_genre ON movie (genre)")

        took = timed(load)
        # untimed: move the load from the WAL into the database file, so that its size is the data's and
        # the first change transactions do not pay for this checkpoint
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = self.path.stat()
        return {"s": took, "file_bytes": size.st_size, "file_alloc_bytes": size.st_blocks * 512}

    def change(self, ch: Changes) -> dict[str, Any]:
        conn = self.conn
        gc.collect()
        t0 = time.perf_counter()
        with conn:  # one transaction, committed on leaving the block
            conn.executemany(SQL_UPSERT, map(sqlite_row, ch.upserts))
            conn.executemany(SQL_DELETE, ((k,) for k in ch.deletes))
        reader = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            row = reader.execute(SQL_TITLE, (ch.check_id,)).fetchone()
        finally:
            reader.close()
        took = time.perf_counter() - t0
        if row is None or row[0] != ch.check_title:
            raise RuntimeError(f"SQLite: a new connection does not see record {ch.check_id}")
        return {"s": took}

    def close(self) -> None:
        self.conn.close()


WRITERS: dict[str, type[Writer]] = {"hollowd": HollowWriter, "lmdb": LmdbWriter, "sqlite": SqliteWriter}


def memory_now() -> dict[str, int]:
    """This process's RSS and USS, after a full collection and handing free heap back to the system.

    malloc_trim(0) returns the pages glibc keeps after the benchmark's own records were
    freed, so that what is left is what the writer holds.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    info = psutil.Process().memory_full_info()
    return {"rss_bytes": info.rss, "uss_bytes": info.uss}


def changes_of(msg: dict[str, Any]) -> Changes:
    check_id, check_title = msg["check"]
    return Changes(msg["upserts"], msg["deletes"], check_id, check_title)


def child_main(system: str, root: Path, n: int, seed: int) -> None:
    """Serve one writer over stdin/stdout: one JSON request a line, one JSON reply a line."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else printed goes to stderr, not into the replies
    sys.stdout = sys.stderr
    writer = WRITERS[system](root)

    def reply(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    reply({"ready": True, **{f"baseline_{k}": v for k, v in memory_now().items()}})
    generated: list[dict[str, Any]] | None = None
    try:
        for line in sys.stdin:
            msg = json.loads(line)
            op = msg["op"]
            try:
                if op == "generate":  # untimed, and in every child at once
                    generated = make_records(n, seed)
                    gc.collect()
                    gc.freeze()  # long-lived: keep later collections from rescanning them (as core.py does)
                    res = {"records": len(generated)}
                elif op == "build" and generated is not None:
                    records, generated = generated, None
                    res = writer.build(records)
                    del records  # the writer keeps what it needs; the benchmark keeps nothing
                elif op == "change":
                    res = writer.change(changes_of(msg))
                elif op == "memory":
                    res = memory_now()
                elif op == "full_begin" and isinstance(writer, HollowWriter):
                    res = writer.full_begin(n, seed, msg["log"])
                elif op == "full_change" and isinstance(writer, HollowWriter):
                    res = writer.full_change(changes_of(msg))
                else:
                    raise ValueError(f"{system}: unexpected request {op!r}")
            except Exception:
                reply({"error": traceback.format_exc()})
                continue
            reply(res)
    finally:
        writer.close()


class Child:
    """The parent's end of one writer process."""

    def __init__(self, system: str, root: Path, cfg: Config) -> None:
        self.system = system
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", system, str(root), str(cfg.n), str(cfg.seed)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.hello = self.receive()

    def receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.system} writer (PID {self.proc.pid}) exited with {self.proc.wait()}")
        res: dict[str, Any] = json.loads(line)
        if "error" in res:
            raise RuntimeError(f"{self.system} writer failed:\n{res['error']}")
        return res

    def send(self, op: str, **kw: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()

    def call(self, op: str, **kw: Any) -> dict[str, Any]:
        self.send(op, **kw)
        return self.receive()

    def stop(self) -> None:
        p = self.proc
        with contextlib.suppress(BrokenPipeError, OSError):
            if p.stdin is not None:
                p.stdin.close()
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p.stdout is not None:
            p.stdout.close()


# --- what the parent checks and measures itself -------------------------------------


def check_consistent(root: Path, maker: ChangeMaker, reader: Any) -> int:
    """Every system holds the same data: changed keys and random ones, against the change log. Returns keys checked."""
    rng = random.Random(maker.n)
    touched = list(maker.log)
    keys = rng.sample(touched, min(500, len(touched))) + [rng.randrange(maker.n) for _ in range(500)]
    env = lmdb.open(str(root / "lmdb"), readonly=True, subdir=True, lock=True)
    conn = sqlite3.connect(f"file:{root / 'movies.sqlite'}?mode=ro", uri=True)
    try:
        with env.begin() as txn, reader.snapshot() as snap:
            view = snap[TYPE]
            for key in keys:
                r = view.get(key)
                h = None if r is None else (r.title, r.year)
                raw = txn.get(lmdb_key(key))
                d = None if raw is None else msgpack.unpackb(raw)
                m = None if d is None else (d["title"], d["year"])
                row = conn.execute(SQL_TITLE, (key,)).fetchone()
                s = None if row is None else tuple(row)
                if not h == m == s:
                    raise RuntimeError(f"record {key}: hollowd {h}, LMDB {m}, SQLite {s}")
                if key in maker.log:
                    want = maker.log[key]
                    if h != (None if want is None else (want["title"], want["year"])):
                        raise RuntimeError(f"record {key}: every system has {h}, the changes say {want}")
    finally:
        conn.close()
        env.close()
    return len(keys)


def measure_lookups(first: Any, last: Any, maker: ChangeMaker, cfg: Config) -> dict[str, dict[str, float]]:
    """core.py's lookup (get + two fields, batches of 100) on the first and on the last version, taking turns."""
    warm = [maker.live_base_id() for _ in range(cfg.warmup_keys)]
    keys = [maker.live_base_id() for _ in range(cfg.lookup_keys)]
    fns = {"first": hollow_lookups(first[TYPE]), "last": hollow_lookups(last[TYPE])}
    for fn in fns.values():
        fn(warm)
    gc.collect()
    per: dict[str, list[float]] = {name: [] for name in fns}
    rounds = 10
    step = -(-len(keys) // rounds)
    for r in range(rounds):
        part = keys[r * step : (r + 1) * step]
        for name, fn in fns.items():
            per[name] += time_batches(fn, part, 100)
    return {
        name: {"median_us": statistics.median(v) / 1e3, "p99_us": percentile(v, 99) / 1e3, "version": snap.version}
        for (name, v), snap in zip(per.items(), (first, last), strict=True)
    }


# --- the run -------------------------------------------------------------------------


def rotated(seq: Sequence[str], i: int) -> list[str]:
    i %= len(seq)
    return [*seq[i:], *seq[:i]]


def run(cfg: Config, root: Path) -> dict[str, Any]:
    res: dict[str, Any] = {"config": cfg.__dict__}
    children: dict[str, Child] = {}
    maker = ChangeMaker(cfg.n, random.Random(cfg.seed + 7))
    try:
        for system in SYSTEMS:
            log(f"starting the {system} writer")
            children[system] = Child(system, root, cfg)
        res["baseline"] = {s: c.hello for s, c in children.items()}
        log(f"generating {cfg.n:,} records in every writer")
        for child in children.values():
            child.send("generate")
        for child in children.values():
            child.receive()
        res["build"] = {}
        for system, child in children.items():
            log(f"first build of {cfg.n:,} records: {system}")
            res["build"][system] = child.call("build")
        with hollow.open(NAMESPACE, root=root / "hollow", follow=False) as reader, reader.snapshot() as first:
            # *first* holds a lease on the first version to the end, for the lookup comparison
            log("one untimed round of k=1 (warm-up)")
            warm = maker.make(1)
            for child in children.values():
                child.call("change", **warm.message())
            samples: dict[str, dict[int, list[dict[str, Any]]]] = {s: {k: [] for k in cfg.ks} for s in SYSTEMS}
            turn = 0
            for rep in range(cfg.reps):
                for k in cfg.ks:
                    log(f"changes: run {rep + 1} of {cfg.reps}, k={k:,}")
                    ch = maker.make(k).message()
                    for system in rotated(SYSTEMS, turn):
                        samples[system][k].append(children[system].call("change", **ch))
                    turn += 1
            res["changes"] = samples
            log("checking that every system holds the same data")
            res["consistency_keys"] = check_consistent(root, maker, reader)
            res["memory"] = {s: c.call("memory") for s, c in children.items()}
            log("hollowd: run_cycle handed all records, k of them changed")
            hollowd = children["hollowd"]
            hollowd.call("full_begin", log=[[key, rec] for key, rec in maker.log.items()])
            full: dict[int, list[dict[str, Any]]] = {k: [] for k in cfg.ks}
            for rep in range(cfg.full_reps):
                for k in cfg.ks:
                    log(f"full cycles: run {rep + 1} of {cfg.full_reps}, k={k:,}")
                    full[k].append(hollowd.call("full_change", **maker.make(k).message()))
            res["full_cycle"] = full
            log(f"hollowd lookups: {cfg.lookup_keys:,} on the first version and on the last")
            with reader.snapshot() as last:
                res["lookup"] = measure_lookups(first, last, maker, cfg)
    finally:
        for child in children.values():
            child.stop()
    return res


# --- reporting --------------------------------------------------------------------------


def median_of(runs: Sequence[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summarize(res: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """The figures the tables and the targets use."""
    publish_ms = {s: {k: median_of(res["changes"][s][k], "s") * 1e3 for k in cfg.ks} for s in SYSTEMS}
    state_file = res["build"]["hollowd"]["file_alloc_bytes"]
    shm = {k: median_of(res["changes"]["hollowd"][k], "shm_added_bytes") for k in cfg.ks}
    shm_full = {k: median_of(res["full_cycle"][k], "shm_added_bytes") for k in cfg.ks}
    full_ms = {k: median_of(res["full_cycle"][k], "s") * 1e3 for k in cfg.ks}
    return {
        "publish_ms": publish_ms,
        "state_file_bytes": state_file,
        "shm_added_bytes": shm,
        "shm_added_full_cycle_bytes": shm_full,
        "full_cycle_ms": full_ms,
        "build_budget_s": BUILD_S_AT_1M * cfg.n / 1_000_000,
    }


def build_table(res: dict[str, Any], sm: dict[str, Any], cfg: Config) -> str:
    ref = res["build"]["lmdb"]["s"]
    budget = sm["build_budget_s"]
    rows = []
    for system in SYSTEMS:
        b = res["build"][system]
        target = ""
        if system == "hollowd":
            scaled = "" if cfg.n == 1_000_000 else f" (1.3 s at 1M, scaled to {budget:.3f} s)"
            target = f"<= 1.3 s at 1M: {verdict(b['s'] <= budget)}{scaled}"
        rows.append([LABELS[system], f"{b['s']:.2f}", ratio(b["s"], ref), f"{b['file_bytes'] / MIB:,.1f}", target])
    return render(
        f"FIRST BUILD of N={cfg.n:,} records from dicts (hollowd: run_cycle with state.add_all; "
        "LMDB: putmulti in one write transaction; SQLite: executemany in one transaction; x LMDB)",
        ["system", "seconds", "x LMDB", "file MiB", "target"],
        rows,
    )


def publish_table(res: dict[str, Any], sm: dict[str, Any], cfg: Config) -> str:
    ms = sm["publish_ms"]
    rows = []
    for system in SYSTEMS:
        cells = [LABELS[system], *(f"{ms[system][k]:,.2f}" for k in cfg.ks)]
        cells += [ratio(ms[system][k], ms["lmdb"][k]) for k in cfg.ks]
        target = ""
        if system == "hollowd":
            parts = []
            if 1 in cfg.ks:
                parts.append(f"k=1 <= {K1_MS:g} ms: {verdict(ms['hollowd'][1] <= K1_MS)}")
            parts += [
                f"{k_label(k)} <= {VS_LMDB:g}x LMDB: {verdict(ms['hollowd'][k] <= VS_LMDB * ms['lmdb'][k])}"
                for k in cfg.ks
                if k > 1
            ]
            target = "; ".join(parts)
        rows.append([*cells, target])
    header = ["system", *(f"{k_label(k)} ms" for k in cfg.ks), *(f"x LMDB @{k:,}" for k in cfg.ks), "target"]
    return render(
        f"PUBLISH k changed records (80% updates, 10% inserts, 10% deletes) at N={cfg.n:,}: median ms of "
        f"{cfg.reps} runs from the call until a new reader sees the change (hollowd: run_incremental + a fresh "
        "hollow.open; LMDB: commit + a new read txn; SQLite: commit + a new connection; x LMDB)",
        header,
        rows,
    )


def full_cycle_table(sm: dict[str, Any], cfg: Config) -> str:
    rows = []
    for k in cfg.ks:
        ms = sm["full_cycle_ms"][k]
        rows.append(
            [
                k_label(k),
                f"{ms:,.1f}",
                f"{ms * 1e3 / cfg.n:.2f}",
                ratio(ms, sm["publish_ms"]["hollowd"][k]),
                ratio(ms, sm["publish_ms"]["lmdb"][k]),
                "",
            ]
        )
    return render(
        f"HOLLOWD run_cycle handed all N={cfg.n:,} records, k of them changed (median of {cfg.full_reps} runs, "
        "until a new reader sees the change; us/record = time / N)",
        ["changed", "ms", "us/record", "x run_incremental", "x LMDB", ""],
        rows,
    )


def shm_table(res: dict[str, Any], sm: dict[str, Any], cfg: Config) -> str:
    full = sm["state_file_bytes"]
    rows = []
    for k in cfg.ks:
        added = sm["shm_added_bytes"][k]
        via_full = sm["shm_added_full_cycle_bytes"][k]
        target = f"<= {SHM_SHARE:.0%} of the full file: {verdict(added <= SHM_SHARE * full)}" if k == 1000 else ""
        rows.append(
            [
                k_label(k),
                f"{added / MIB:,.2f}",
                f"{added / full:.1%}",
                f"{via_full / MIB:,.2f}",
                f"{via_full / full:.1%}",
                target,
            ]
        )
    last = res["full_cycle"][cfg.ks[-1]][-1]
    return render(
        "/dev/shm ADDED per version by hollowd (st_blocks of every file of the namespace directory, each inode "
        f"once, before and after; full state file: {full / MIB:,.1f} MiB)",
        ["changed", "incr MiB", "% of full", "run_cycle MiB", "% of full", "target"],
        rows,
    ) + (
        f"namespace at the end: {last['shm_total_bytes'] / MIB:,.1f} MiB for {last['live_versions']} live versions "
        "(retain=5, plus the first version, which the lookup comparison holds a lease on)\n"
    )


def memory_table(res: dict[str, Any]) -> str:
    ref = res["memory"]["lmdb"]["rss_bytes"]
    rows = []
    for system in SYSTEMS:
        m, base = res["memory"][system], res["baseline"][system]["baseline_rss_bytes"]
        data = res["build"][system]["file_alloc_bytes"]
        target = ""
        if system == "hollowd":
            target = f"RSS <= {RSS_MULTIPLE:g}x state file: {verdict(m['rss_bytes'] <= RSS_MULTIPLE * data)}"
        rows.append(
            [
                LABELS[system],
                f"{base / MIB:,.1f}",
                f"{m['rss_bytes'] / MIB:,.1f}",
                f"{(m['rss_bytes'] - base) / MIB:,.1f}",
                f"{m['uss_bytes'] / MIB:,.1f}",
                f"{data / MIB:,.1f}",
                f"{m['rss_bytes'] / data:.2f}x",
                ratio(m["rss_bytes"], ref),
                target,
            ]
        )
    return render(
        "WRITER MEMORY after the change cycles (psutil, of each writer's own process, after gc and malloc_trim; "
        "baseline = the same process before any record; x file = RSS / its data file after the first build)",
        ["system", "baseline", "RSS MiB", "RSS-baseline", "USS MiB", "file MiB", "x file", "x LMDB", "target"],
        rows,
    )


def lookup_table(res: dict[str, Any], cfg: Config) -> str:
    lk = res["lookup"]
    first, last = lk["first"], lk["last"]
    rows = [
        [f"first version ({first['version']})", f"{first['median_us']:.2f}", f"{first['p99_us']:.2f}", "1.00x", ""],
        [
            f"last version ({last['version']})",
            f"{last['median_us']:.2f}",
            f"{last['p99_us']:.2f}",
            ratio(last["median_us"], first["median_us"]),
            f"median <= 2 us (core.py's): {verdict(last['median_us'] <= 2)}",
        ],
    ]
    return render(
        f"HOLLOWD LOOKUP after the changes (core.py's: get() + two fields, {cfg.lookup_keys:,} random keys per "
        "version in batches of 100, versions taking turns; us per lookup)",
        ["version", "median", "p99", "x first", "target"],
        rows,
    )


def targets_table(res: dict[str, Any], sm: dict[str, Any], cfg: Config) -> str:
    """Every target of the issue in one place: what it asks, what this run measured, met or not."""
    ms = sm["publish_ms"]
    rows = []
    if 1 in cfg.ks:
        rows.append(
            ["publish k=1", f"{ms['hollowd'][1]:,.2f} ms", f"<= {K1_MS:g} ms: {verdict(ms['hollowd'][1] <= K1_MS)}"]
        )
    for k in (1000, 10_000):
        if k in cfg.ks:
            r = ms["hollowd"][k] / ms["lmdb"][k]
            rows.append([f"publish {k_label(k)}", f"{r:.2f}x LMDB", f"<= {VS_LMDB:g}x LMDB: {verdict(r <= VS_LMDB)}"])
        else:
            rows.append([f"publish {k_label(k)}", "not measured", f"<= {VS_LMDB:g}x LMDB: - (k > N/2)"])
    if 1000 in cfg.ks:
        share = sm["shm_added_bytes"][1000] / sm["state_file_bytes"]
        rows.append(
            [
                "/dev/shm per version, k=1,000",
                f"{share:.1%} of the full file",
                f"<= {SHM_SHARE:.0%}: {verdict(share <= SHM_SHARE)}",
            ]
        )
    rss = res["memory"]["hollowd"]["rss_bytes"] / sm["state_file_bytes"]
    rows.append(["producer RSS", f"{rss:.2f}x the state file", f"<= {RSS_MULTIPLE:g}x: {verdict(rss <= RSS_MULTIPLE)}"])
    b = res["build"]["hollowd"]["s"]
    budget = sm["build_budget_s"]
    scaled = "" if cfg.n == 1_000_000 else f" (scaled to N: {budget:.3f} s)"
    rows.append(["first build", f"{b:.2f} s", f"<= 1.3 s at 1M{scaled}: {verdict(b <= budget)}"])
    return render("TARGETS (issue 10)", ["what", "this run", "target"], rows)


def report(res: dict[str, Any], cfg: Config) -> str:
    sm = summarize(res, cfg)
    res["summary"] = sm
    return "\n".join(
        [
            build_table(res, sm, cfg),
            publish_table(res, sm, cfg),
            full_cycle_table(sm, cfg),
            shm_table(res, sm, cfg),
            memory_table(res),
            lookup_table(res, cfg),
            targets_table(res, sm, cfg),
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["--child"]:
        _, system, root, n, seed = args
        child_main(system, Path(root), int(n), int(seed))
        return
    cfg, json_path = parse_config(args)
    root = Path("/dev/shm") / f"hollow-bench-changes-{os.getpid()}"
    root.mkdir()
    before = environment()
    t0 = time.perf_counter()
    try:
        res = run(cfg, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    after = environment()
    res["environment"] = {"before": before, "after": after, "seconds": round(time.perf_counter() - t0, 1)}
    text = report(res, cfg)
    print(
        f"hollowd changes benchmark: N={cfg.n:,}{' (quick)' if cfg.quick else ''}, k in "
        f"{', '.join(f'{k:,}' for k in cfg.ks)}, {cfg.reps} runs each; Python {before['python']}, "
        f"{before['cpus']} CPUs, Linux {before['kernel']}; {res['environment']['seconds']} s\n"
        f"machine: load average {before['loadavg_1_5_15']} before, {after['loadavg_1_5_15']} after; "
        f"1M-iteration Python loop {before['cpu_check_ms']} ms before, {after['cpu_check_ms']} ms after "
        "(other work on the machine slows every row)\n"
    )
    print(text)
    if json_path is not None:
        json_path.write_text(json.dumps(res, indent=2, default=str))
        log(f"results written to {json_path}")


if __name__ == "__main__":
    main()

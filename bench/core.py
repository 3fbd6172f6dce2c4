"""Core benchmark: hollowd against pickle, LMDB + msgpack, SQLite, a dict and a raw mmap table.

One run measures, side by side on the same synthetic ``Movie`` records:

* attach: warm (schema already known in the process) and first attach in a fresh
  process, at three dataset sizes, to show that attaching is O(1);
* primary-key lookups that read two fields, median and p99 per lookup;
* memory of several reader processes attached at once (PSS from smaps_rollup,
  plus the shared files in /dev/shm, each page counted once);
* the producer: one full cycle, and bytes per record of the state file.

Run ``.venv/bin/python bench/core.py [--quick] [--records N] [--json PATH]``;
progress goes to stderr, the tables to stdout. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import mmap
import os
import pickle
import random
import shutil
import sqlite3
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import msgpack

import hollow
from hollowd import Producer

BENCH_DIR = Path(__file__).resolve().parent
SCHEMA = BENCH_DIR / "movie.capnp"
NAMESPACE = "movies"
TYPE = "Movie"
SYSTEMS = ("hollowd", "pickle", "lmdb", "sqlite", "dict", "raw")
LABELS = {
    "hollowd": "hollowd",
    "pickle": "pickle per process",
    "lmdb": "LMDB + msgpack",
    "sqlite": "SQLite",
    "dict": "dict in process",
    "raw": "raw mmap+struct (floor)",
    "hollowd_nofollow": "hollowd, follow=False",
}

GENRES = (
    "Action",
    "Adventure",
    "Animation",
    "Biography",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Family",
    "Fantasy",
    "History",
    "Horror",
    "Music",
    "Musical",
    "Mystery",
    "Romance",
    "SciFi",
    "Sport",
    "Thriller",
    "War",
)
WORDS = (
    "amber",
    "anchor",
    "autumn",
    "beacon",
    "bridge",
    "canyon",
    "cipher",
    "comet",
    "crimson",
    "dawn",
    "delta",
    "ember",
    "echo",
    "falcon",
    "fable",
    "frost",
    "garden",
    "glacier",
    "harbor",
    "hollow",
    "horizon",
    "island",
    "jade",
    "jungle",
    "lantern",
    "legend",
    "meadow",
    "midnight",
    "mirror",
    "nebula",
    "oasis",
    "orbit",
    "pearl",
    "phantom",
    "prism",
    "quartz",
    "raven",
    "river",
    "saga",
    "shadow",
    "silver",
    "summit",
    "tempest",
    "thunder",
    "velvet",
    "voyage",
    "willow",
    "winter",
    "zephyr",
)

SQL_GET = "SELECT title, year FROM movie WHERE id = ?"
RAW_MAGIC = b"RAWMOVIE"
RAW_HEADER = struct.Struct("<8sQQ")  # magic, record count, offset of the titles blob
RAW_ROW = struct.Struct("<QIIH6x")  # id, title offset, title length, year: 24 bytes, row index = id
KEY_STRIDE = 2654435761  # a prime: (start + i * stride) % n visits distinct keys spread over the key space

LookupFn = Callable[[Sequence[int]], int]

_T0 = time.perf_counter()


def log(message: str) -> None:
    """A progress line on stderr, stamped with the time since start."""
    print(f"[{time.perf_counter() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


# --- configuration -------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """What one run measures, and how hard."""

    records: int
    attach_sizes: tuple[int, ...]
    procs: int
    touches: int
    lookup_keys: int
    warmup_keys: int
    batch: int
    attach_runs: int
    fresh_runs: int
    seed: int
    quick: bool


def parse_config(argv: Sequence[str] | None = None) -> tuple[Config, Path | None]:
    """Command-line options → a :class:`Config` and the JSON output path (or None)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=None, help="records in the big dataset (default 1,000,000)")
    ap.add_argument("--quick", action="store_true", help="N=100,000, fewer processes and iterations (~1 minute)")
    ap.add_argument("--procs", type=int, default=None, help="reader processes in the memory test (default 8)")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write every result as JSON here")
    args = ap.parse_args(argv)
    n = args.records or (100_000 if args.quick else 1_000_000)
    if n < 1000:
        ap.error("--records must be at least 1000")
    sizes = tuple(sorted({max(1000, n // 100), max(1000, n // 10), n}))
    cfg = Config(
        records=n,
        attach_sizes=sizes,
        procs=args.procs or (4 if args.quick else 8),
        touches=min(n, 50_000 if args.quick else 200_000),
        lookup_keys=30_000 if args.quick else 100_000,
        warmup_keys=50_000 if args.quick else 200_000,
        batch=100,
        attach_runs=50 if args.quick else 200,
        fresh_runs=3 if args.quick else 5,
        seed=args.seed,
        quick=args.quick,
    )
    return cfg, args.json


# --- synthetic data -------------------------------------------------------------


def make_record(i: int, rng: random.Random) -> dict[str, Any]:
    """One Movie record with id *i*: a title of 1-3 random words after "Movie <i>", 2-3 tags."""
    rand = rng.random
    return {
        "id": i,
        "title": f"Movie {i} " + " ".join(rng.choices(WORDS, k=1 + int(rand() * 3))),
        "year": 1920 + int(rand() * 106),
        "rating": round(rand() * 10, 1),
        "genre": GENRES[int(rand() * len(GENRES))],
        "tags": rng.sample(WORDS, 2 + (rand() < 0.5)),
    }


def make_records(n: int, seed: int) -> list[dict[str, Any]]:
    """*n* records with ids 0..n-1 in a shuffled (but fixed) order."""
    rng = random.Random(seed)
    ids = list(range(n))
    rng.shuffle(ids)
    return [make_record(i, rng) for i in ids]


def by_id(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records sorted by id (ids are 0..n-1, so position = id)."""
    out: list[dict[str, Any]] = [{}] * len(records)
    for r in records:
        out[r["id"]] = r
    return out


# --- building every system's files ---------------------------------------------


@dataclass
class Built:
    """The files of every system for one dataset size, and what building them took."""

    n: int
    dir: Path
    version: int = 0  # the announced version: what readers use
    older_version: int = 0  # the one before it (one record differs): what warm attach attaches
    build_s: dict[str, float] = field(default_factory=dict)

    @property
    def hollow_root(self) -> Path:
        return self.dir / "hollow"

    @property
    def state_file(self) -> Path:
        return self.hollow_root / NAMESPACE / str(self.version)

    @property
    def lmdb_dir(self) -> Path:
        return self.dir / "lmdb"

    @property
    def sqlite_path(self) -> Path:
        return self.dir / "movies.sqlite"

    @property
    def pickle_path(self) -> Path:
        return self.dir / "movies.pickle"

    @property
    def raw_path(self) -> Path:
        return self.dir / "movies.raw"

    def shm_files(self, system: str) -> list[Path]:
        """The files in /dev/shm that readers of *system* share (they cost memory once)."""
        if system == "hollowd":  # the version readers use; the older one is only there for the attach test
            ns = self.hollow_root / NAMESPACE
            return [
                p for p in (self.state_file, ns / f"{self.version}.lock", ns / "announce" / "announced") if p.exists()
            ]
        if system == "lmdb":
            return sorted(self.lmdb_dir.iterdir())
        if system == "sqlite":
            return [self.sqlite_path]
        if system == "raw":
            return [self.raw_path]
        return []  # pickle and dict: each process holds its own copy; the pickle file is not needed after load

    def data_file(self, system: str) -> Path:
        """The one file whose size is the system's stored form of the data."""
        return {
            "hollowd": self.state_file,
            "lmdb": self.lmdb_dir / "data.mdb",
            "sqlite": self.sqlite_path,
            "pickle": self.pickle_path,
            "raw": self.raw_path,
        }[system]


def timed(fn: Callable[[], Any]) -> float:
    """Seconds *fn* takes, after a full garbage collection."""
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def build_hollow(built: Built, records: list[dict[str, Any]]) -> None:
    """Publish *records* as a hollowd version (the timed ``run_cycle``), then a second one.

    The second version differs in one title. Readers use it; the first stays there for the
    warm-attach test, which must attach a version the process does not have attached already
    (``ds.attach`` of an attached version is a dict lookup, not an attach).
    """
    changed = [*records[:-1], {**records[-1], "title": records[-1]["title"] + " (restored)"}]

    def populate(rows: list[dict[str, Any]]) -> Callable[[Any], None]:
        def fill(state: Any) -> None:
            for d in rows:
                state.add(TYPE, d)

        return fill

    producer = Producer(
        NAMESPACE, schema=SCHEMA, primary_keys={TYPE: "id"}, indexes={TYPE: ["genre"]}, root=built.hollow_root
    )
    try:
        versions: list[int] = []
        built.build_s["hollowd"] = timed(lambda: versions.append(producer.run_cycle(populate(records))))
        built.build_s["hollowd_one_change"] = timed(lambda: versions.append(producer.run_cycle(populate(changed))))
        built.older_version, built.version = versions
    finally:
        producer.close()
    if built.older_version == built.version:
        raise RuntimeError("the second cycle published nothing")
    records[-1]["title"] = changed[-1]["title"]  # in place: every other system stores what readers see


def build_lmdb(built: Built, ordered: list[dict[str, Any]]) -> None:
    """One LMDB environment: key = id as 8 bytes big-endian, value = msgpack of the record (bulk append)."""
    packb = msgpack.packb
    env = lmdb.open(str(built.lmdb_dir), map_size=max(64 << 20, len(ordered) * 1024), subdir=True)

    def load() -> None:
        with env.begin(write=True) as txn:
            txn.cursor().putmulti(((r["id"].to_bytes(8, "big"), packb(r)) for r in ordered), append=True)

    try:
        built.build_s["lmdb"] = timed(load)
    finally:
        env.close()


def build_sqlite(built: Built, ordered: list[dict[str, Any]]) -> None:
    """One SQLite table with an INTEGER PRIMARY KEY, and an index on genre (hollowd has one too)."""
    conn = sqlite3.connect(built.sqlite_path)

    def load() -> None:
        conn.execute(
            "CREATE TABLE movie (id INTEGER PRIMARY KEY, title TEXT, year INTEGER, rating REAL, genre TEXT, tags TEXT)"
        )
        rows = ((r["id"], r["title"], r["year"], r["rating"], r["genre"], json.dumps(r["tags"])) for r in ordered)
        with conn:
            conn.executemany("INSERT INTO movie VALUES (?, ?, ?, ?, ?, ?)", rows)
            conn.execute("CREATE INDEX movie_genre ON movie (genre)")

    try:
        built.build_s["sqlite"] = timed(load)
    finally:
        conn.close()


def build_pickle(built: Built, ordered: list[dict[str, Any]]) -> None:
    """A pickle of the dict id -> record dict."""
    table = {r["id"]: r for r in ordered}

    def dump() -> None:
        with built.pickle_path.open("wb") as f:
            pickle.dump(table, f, protocol=pickle.HIGHEST_PROTOCOL)

    built.build_s["pickle"] = timed(dump)


def build_raw(built: Built, ordered: list[dict[str, Any]]) -> None:
    """A fixed-width table (row index = id) of (id, title offset, title length, year), then the titles."""

    def write() -> None:
        n = len(ordered)
        rows = bytearray(n * RAW_ROW.size)
        titles = bytearray()
        for i, r in enumerate(ordered):
            t = r["title"].encode()
            RAW_ROW.pack_into(rows, i * RAW_ROW.size, r["id"], len(titles), len(t), r["year"])
            titles += t
        with built.raw_path.open("wb") as f:
            f.write(RAW_HEADER.pack(RAW_MAGIC, n, RAW_HEADER.size + len(rows)))
            f.write(rows)
            f.write(titles)

    built.build_s["raw"] = timed(write)


def build_all(root: Path, n: int, seed: int, records: list[dict[str, Any]] | None = None) -> Built:
    """Every system's files for a dataset of *n* records under ``root/n<n>``."""
    built = Built(n=n, dir=root / f"n{n}")
    built.dir.mkdir(parents=True)
    if records is None:
        records = make_records(n, seed)
    ordered = by_id(records)
    builders: list[tuple[str, Callable[[], None]]] = [
        ("hollowd", lambda: build_hollow(built, records)),
        ("lmdb", lambda: build_lmdb(built, ordered)),
        ("sqlite", lambda: build_sqlite(built, ordered)),
        ("pickle", lambda: build_pickle(built, ordered)),
        ("raw", lambda: build_raw(built, ordered)),
    ]
    for name, build in builders:
        log(f"  N={n:,}: building {name}")
        build()
    return built


# --- opening each system (the "attach") -----------------------------------------


def open_lmdb(path: Path) -> tuple[Any, Any]:
    """A read-only environment and a read transaction on it."""
    env = lmdb.open(str(path), readonly=True, subdir=True)
    return env, env.begin()


def close_lmdb(handle: tuple[Any, Any]) -> None:
    env, txn = handle
    txn.abort()
    env.close()


def open_sqlite(path: Path) -> sqlite3.Connection:
    """A read-only connection, after its first query (SQLite reads its schema lazily, on first use)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.execute(SQL_GET, (0,)).fetchone()
    return conn


def load_pickle(path: Path) -> dict[int, dict[str, Any]]:
    with path.open("rb") as f:
        table: dict[int, dict[str, Any]] = pickle.load(f)
    return table


@dataclass
class RawTable:
    """An attached raw table: the mapping, where the rows start, where the titles start."""

    mm: mmap.mmap
    rows: int
    titles: int


def open_raw(path: Path) -> RawTable:
    """open, mmap, check the header: the least any attach can do."""
    fd = os.open(path, os.O_RDONLY)
    try:
        mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    magic, _n, titles = RAW_HEADER.unpack_from(mm, 0)
    if magic != RAW_MAGIC:
        raise ValueError(f"{path}: not a raw movie table")
    return RawTable(mm, RAW_HEADER.size, titles)


def mapped(path: Path) -> bool:
    """Whether this process has *path* mapped (from /proc/self/maps)."""
    name = str(path)
    with open("/proc/self/maps") as f:
        return any(line.rstrip("\n").endswith(name) for line in f)


Attacher = tuple[Callable[[], Any], Callable[[Any], None]]


def hollow_attacher(built: Built, stack: contextlib.ExitStack, *, follow: bool) -> Attacher:
    """(attach, release) of hollowd's older version, on a dataset opened (untimed) on the announced one.

    The check makes sure a released attach really unmapped the version, so that each timed
    attach maps it anew rather than finding it in the process's cache of attached versions.
    """
    ds = stack.enter_context(hollow.open(NAMESPACE, root=built.hollow_root, follow=follow))
    ds.snapshot().close()
    older = built.older_version
    older_path = built.hollow_root / NAMESPACE / str(older)

    def attach() -> Any:
        snap = ds.attach(older)
        return snap, snap[TYPE]

    def release(handle: Any) -> None:
        handle[0].close()

    release(attach())
    gc.collect()
    if mapped(older_path):
        raise RuntimeError(f"{older_path} stays mapped after its snapshot closed: warm attach would time a cache")
    return attach, release


WARM_SYSTEMS = ("hollowd", "hollowd_nofollow", "pickle", "lmdb", "sqlite", "raw")


def warm_attacher(system: str, built: Built, stack: contextlib.ExitStack) -> Attacher:
    """(attach, release) of *system*; hollowd's first open (which loads the schema) happens here, untimed.

    hollowd is measured twice: as ``hollow.open`` gives it (following announcements in the
    background: doorbell, inotify watch, thread) and with ``follow=False``.
    """
    if system in ("hollowd", "hollowd_nofollow"):
        return hollow_attacher(built, stack, follow=system == "hollowd")
    return {
        "pickle": (lambda: load_pickle(built.pickle_path), lambda h: None),
        "lmdb": (lambda: open_lmdb(built.lmdb_dir), close_lmdb),
        "sqlite": (lambda: open_sqlite(built.sqlite_path), lambda h: h.close()),
        "raw": (lambda: open_raw(built.raw_path), lambda h: None),
    }[system]


def time_attach(attach: Callable[[], Any], release: Callable[[Any], None]) -> float:
    """Microseconds of one attach; the release that follows is not timed."""
    t0 = time.perf_counter_ns()
    handle = attach()
    took = (time.perf_counter_ns() - t0) / 1e3
    release(handle)
    return took


def attach_runs(system: str, n: int, cfg: Config) -> int:
    """How many warm attaches to time: fewer for pickle, which loads the whole dataset each time."""
    if system == "pickle":
        return max(3, min(cfg.attach_runs, 500_000 // n))
    return cfg.attach_runs


def measure_warm_attach(builts: dict[int, Built], cfg: Config) -> dict[int, dict[str, list[float]]]:
    """Warm attach samples (µs) of every system at every size.

    One system at a time, with only its own handles open (a following hollowd dataset
    would otherwise see, and react to, the other one's opens in its directory). Sizes take
    turns run by run, so that noise from the rest of the machine lands on all of them alike
    (what matters is whether attach grows with N). Untimed warm-up runs first.
    """
    out: dict[int, dict[str, list[float]]] = {n: {} for n in builts}
    for system in WARM_SYSTEMS:
        with contextlib.ExitStack() as stack:
            attachers = {n: warm_attacher(system, b, stack) for n, b in builts.items()}
            runs = {n: attach_runs(system, n, cfg) for n in builts}
            for n in builts:
                out[n][system] = []
                for _ in range(1 if system == "pickle" else 2):
                    time_attach(*attachers[n])
            gc.collect()
            for i in range(max(runs.values())):
                for n in builts:
                    if i < runs[n]:
                        out[n][system].append(time_attach(*attachers[n]))
    return out


# --- first attach in a fresh process ---------------------------------------------
#
# Each snippet runs in a new interpreter (`python -c`); the clock starts before any
# import and stops after one lookup that reads two fields. argv: path, key.

_FRESH_PRELUDE = "import sys, time\nt0 = time.perf_counter_ns()\npath, key = sys.argv[1], int(sys.argv[2])\n"
_FRESH_EPILOGUE = "\nassert title and year\nprint(time.perf_counter_ns() - t0)\n{teardown}\n"
FRESH_SNIPPETS = {
    "hollowd": """
import hollow
ds = hollow.open("movies", root=path)
snap = ds.snapshot()
r = snap["Movie"].get(key)
title, year = r.title, r.year
""",
    "pickle": """
import pickle
with open(path, "rb") as f:
    d = pickle.load(f)
r = d[key]
title, year = r["title"], r["year"]
""",
    "lmdb": """
import lmdb, msgpack
env = lmdb.open(path, readonly=True)
txn = env.begin()
r = msgpack.unpackb(txn.get(key.to_bytes(8, "big")))
title, year = r["title"], r["year"]
""",
    "sqlite": """
import sqlite3
conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
title, year = conn.execute("SELECT title, year FROM movie WHERE id = ?", (key,)).fetchone()
""",
    "raw": """
import mmap, os, struct
fd = os.open(path, os.O_RDONLY)
mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
os.close(fd)
magic, n, toff = struct.unpack_from("<8sQQ", mm, 0)
_, off, ln, year = struct.unpack_from("<QIIH6x", mm, 24 + key * 24)
title = mm[toff + off : toff + off + ln].decode()
""",
}


def system_path(built: Built, system: str) -> Path:
    """What a reader of *system* is given to open."""
    return {
        "hollowd": built.hollow_root,
        "pickle": built.pickle_path,
        "lmdb": built.lmdb_dir,
        "sqlite": built.sqlite_path,
        "raw": built.raw_path,
    }[system]


def child_env(root: Path) -> dict[str, str]:
    """Environment of the reader processes: bytecode cached under *root* (never in the source tree).

    The harness sets PYTHONDONTWRITEBYTECODE; without a bytecode cache every fresh process
    would compile hollow from source, which no deployed service does.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
    return env


def run_fresh(system: str, path: Path, key: int, root: Path) -> tuple[float, float]:
    """One fresh process: (ms it reports from its first line to the lookup done, ms of the whole process)."""
    teardown = "snap.close()\nds.close()" if system == "hollowd" else ""
    code = _FRESH_PRELUDE + FRESH_SNIPPETS[system] + _FRESH_EPILOGUE.format(teardown=teardown)
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), str(key)],
        cwd=root,
        env=child_env(root),
        capture_output=True,
        text=True,
        check=False,
    )
    wall = (time.perf_counter() - t0) * 1e3
    if out.returncode:
        raise RuntimeError(f"fresh {system} reader failed:\n{out.stderr}")
    return int(out.stdout) / 1e6, wall


def measure_fresh_attach(
    builts: dict[int, Built], cfg: Config, root: Path
) -> dict[int, dict[str, dict[str, list[float]]]]:
    """Per size and system: in-process and whole-process times (ms) of first attaches in fresh interpreters.

    One untimed run per system and size first (it fills the page cache and the bytecode
    cache); then sizes and systems take turns, run by run.
    """
    rng = random.Random(cfg.seed + 2)
    out: dict[int, dict[str, dict[str, list[float]]]] = {
        n: {s: {"ms": [], "process_ms": []} for s in FRESH_SNIPPETS} for n in builts
    }
    for built in builts.values():
        for system in FRESH_SNIPPETS:
            run_fresh(system, system_path(built, system), 0, root)
    for _ in range(cfg.fresh_runs):
        for n, built in builts.items():
            for system in FRESH_SNIPPETS:
                ms, process_ms = run_fresh(system, system_path(built, system), rng.randrange(n), root)
                out[n][system]["ms"].append(ms)
                out[n][system]["process_ms"].append(process_ms)
    return out


# --- lookups ----------------------------------------------------------------------
#
# Every lookup function gets a batch of int keys, reads title and year of each
# record, and returns the sum of year + len(title): the same number for every
# system on the same keys (checked), so that no system can skip the work.


def hollow_lookups(view: Any) -> LookupFn:
    get = view.get

    def run(keys: Sequence[int]) -> int:
        acc = 0
        for k in keys:
            r = get(k)
            acc += r.year + len(r.title)
        return acc

    return run


def dict_lookups(table: dict[int, dict[str, Any]]) -> LookupFn:
    def run(keys: Sequence[int]) -> int:
        acc = 0
        for k in keys:
            r = table[k]
            acc += r["year"] + len(r["title"])
        return acc

    return run


def lmdb_lookups(txn: Any) -> LookupFn:
    get = txn.get
    unpackb = msgpack.unpackb

    def run(keys: Sequence[int]) -> int:
        acc = 0
        for k in keys:
            r = unpackb(get(k.to_bytes(8, "big")))
            acc += r["year"] + len(r["title"])
        return acc

    return run


def sqlite_lookups(conn: sqlite3.Connection) -> LookupFn:
    execute = conn.execute

    def run(keys: Sequence[int]) -> int:
        acc = 0
        for k in keys:
            title, year = execute(SQL_GET, (k,)).fetchone()
            acc += year + len(title)
        return acc

    return run


def raw_lookups(table: RawTable) -> LookupFn:
    mm, rows, titles = table.mm, table.rows, table.titles
    unpack_from = RAW_ROW.unpack_from
    size = RAW_ROW.size

    def run(keys: Sequence[int]) -> int:
        acc = 0
        for k in keys:
            _, off, length, year = unpack_from(mm, rows + k * size)
            start = titles + off
            acc += year + len(mm[start : start + length].decode())
        return acc

    return run


def expected_sum(ordered: Sequence[dict[str, Any]], keys: Sequence[int]) -> int:
    return sum(ordered[k]["year"] + len(ordered[k]["title"]) for k in keys)


def time_batches(fn: LookupFn, keys: Sequence[int], batch: int) -> list[float]:
    """Nanoseconds per lookup of each batch of *batch* keys (one clock read pair per batch)."""
    chunks = [keys[i : i + batch] for i in range(0, len(keys), batch)]
    clock = time.perf_counter_ns
    out = []
    for chunk in chunks:
        t0 = clock()
        fn(chunk)
        out.append((clock() - t0) / len(chunk))
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile *q* (0-100) of *values*."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def lookup_functions(built: Built, ordered: list[dict[str, Any]], stack: contextlib.ExitStack) -> dict[str, LookupFn]:
    """Every system opened for lookups in this process; *stack* closes them."""
    ds = stack.enter_context(hollow.open(NAMESPACE, root=built.hollow_root))
    snap = stack.enter_context(ds.snapshot())
    lmdb_handle = open_lmdb(built.lmdb_dir)
    stack.callback(close_lmdb, lmdb_handle)
    conn = stack.enter_context(contextlib.closing(open_sqlite(built.sqlite_path)))
    return {
        "hollowd": hollow_lookups(snap[TYPE]),
        "pickle": dict_lookups(load_pickle(built.pickle_path)),
        "lmdb": lmdb_lookups(lmdb_handle[1]),
        "sqlite": sqlite_lookups(conn),
        "dict": dict_lookups({r["id"]: r for r in ordered}),
        "raw": raw_lookups(open_raw(built.raw_path)),
    }


def measure_lookups(built: Built, ordered: list[dict[str, Any]], cfg: Config) -> dict[str, dict[str, float]]:
    """Median and p99 µs per lookup of every system, on the same random existing keys.

    Each system is first checked (same data as the source) and warmed up on other keys
    than the timed ones, enough to touch nearly every page of its data. The timed keys
    are then split in rounds in which every system takes its turn, so that noise from
    the rest of the machine is shared out rather than landing on one system.
    """
    n = built.n
    rng = random.Random(cfg.seed + 1)
    warm = [rng.randrange(n) for _ in range(cfg.warmup_keys)]
    keys = [rng.randrange(n) for _ in range(cfg.lookup_keys)]
    check_keys = keys[:1000]
    want = expected_sum(ordered, check_keys)
    with contextlib.ExitStack() as stack:
        fns = lookup_functions(built, ordered, stack)
        for system, fn in fns.items():
            got = fn(check_keys)
            if got != want:
                raise RuntimeError(f"{system} returned different data: checksum {got} != {want}")
            log(f"  lookups: warming up {system}")
            fn(warm)
        gc.collect()
        per: dict[str, list[float]] = {system: [] for system in fns}
        rounds = 20
        step = -(-len(keys) // rounds)
        for r in range(rounds):
            if r % 5 == 0:
                log(f"  lookups: round {r + 1} of {rounds}")
            part = keys[r * step : (r + 1) * step]
            for system, fn in fns.items():
                per[system] += time_batches(fn, part, cfg.batch)
    return {
        system: {
            "median_us": statistics.median(v) / 1e3,
            "p99_us": percentile(v, 99) / 1e3,
            "mean_us": statistics.fmean(v) / 1e3,
            "batches": len(v),
        }
        for system, v in per.items()
    }


# --- memory of many reader processes --------------------------------------------------
#
# Reader processes are fresh interpreters running a small snippet (`python -c`), so that
# they load nothing but what the system needs: the benchmark's own imports would add
# megabytes to every process. Each looks up `touches` distinct keys, says "ready" and
# waits on stdin; the parent measures all of them while all are alive, then releases them.
# argv: path, n, touches, start.

_WORKER_TEMPLATE = """
import sys
path, n, touches, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
{setup}
acc = 0
for i in range(touches):
    key = (start + i * {stride}) % n
    {body}
sys.stdout.write(f"ready {{acc}}\\n")
sys.stdout.flush()
sys.stdin.readline()
{teardown}
"""
WORKER_SNIPPETS = {
    "hollowd": (
        'import hollow\nds = hollow.open("movies", root=path)\nsnap = ds.snapshot()\nget = snap["Movie"].get',
        "r = get(key); acc += r.year + len(r.title)",
    ),
    "lmdb": (
        "import lmdb, msgpack\nenv = lmdb.open(path, readonly=True)\nget = env.begin().get\nunpackb = msgpack.unpackb",
        'r = unpackb(get(key.to_bytes(8, "big"))); acc += r["year"] + len(r["title"])',
    ),
    "sqlite": (
        'import sqlite3\nex = sqlite3.connect(f"file:{path}?mode=ro", uri=True).execute',
        't, y = ex("SELECT title, year FROM movie WHERE id = ?", (key,)).fetchone(); acc += y + len(t)',
    ),
    "pickle": (
        'import pickle\nwith open(path, "rb") as f:\n    d = pickle.load(f)',
        'r = d[key]; acc += r["year"] + len(r["title"])',
    ),
    "raw": (
        "import mmap, os, struct\nfd = os.open(path, os.O_RDONLY)\nmm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)\n"
        'os.close(fd)\ntoff = struct.unpack_from("<8sQQ", mm, 0)[2]\n'
        'unpack_from = struct.Struct("<QIIH6x").unpack_from',
        "_, o, ln, y = unpack_from(mm, 24 + key * 24); acc += y + len(mm[toff + o : toff + o + ln].decode())",
    ),
}


def worker_code(system: str) -> str:
    setup, body = WORKER_SNIPPETS[system]
    teardown = "snap.close()\nds.close()" if system == "hollowd" else ""
    return _WORKER_TEMPLATE.format(setup=setup, body=body, stride=KEY_STRIDE, teardown=teardown)


def smaps_rollup(pid: int) -> dict[str, int]:
    """The kB fields of /proc/<pid>/smaps_rollup, in bytes."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[name] = int(parts[0]) * 1024
    return out


def allocated_bytes(paths: Sequence[Path]) -> int:
    """Bytes the files actually occupy (tmpfs pages), not their apparent sizes."""
    return sum(p.stat().st_blocks * 512 for p in paths)


def start_workers(system: str, path: Path, cfg: Config, n: int, root: Path) -> list[subprocess.Popen[str]]:
    """Start cfg.procs readers of *system*, each on its own distinct keys."""
    code = worker_code(system)
    return [
        subprocess.Popen(
            [sys.executable, "-c", code, str(path), str(n), str(cfg.touches), str(i * 7919)],
            cwd=root,
            env=child_env(root),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(cfg.procs)
    ]


def wait_ready(procs: Sequence[subprocess.Popen[str]], system: str) -> None:
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline()
        if not line.startswith("ready"):
            p.wait()
            err = p.stderr.read() if p.stderr else ""
            raise RuntimeError(f"{system} reader {p.pid} failed (exit {p.returncode}):\n{err}")


def stop_workers(procs: Sequence[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None and p.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                p.stdin.close()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                stream.close()


def measure_memory_of(system: str, built: Built, cfg: Config, root: Path) -> dict[str, Any]:
    """Start cfg.procs readers of *system*, wait until all have done their lookups, measure, stop them."""
    procs = start_workers(system, system_path(built, system), cfg, built.n, root)
    try:
        wait_ready(procs, system)
        rollups = [smaps_rollup(p.pid) for p in procs]
    finally:
        stop_workers(procs)
    pss = sum(r["Pss"] for r in rollups)
    pss_shmem = sum(r.get("Pss_Shmem", 0) for r in rollups)
    shared = allocated_bytes(built.shm_files(system))
    return {
        "procs": len(procs),
        "pss_bytes": pss,
        "pss_shmem_bytes": pss_shmem,
        "shm_file_bytes": shared,
        "total_bytes": pss - pss_shmem + shared,
        "pss_plus_files_bytes": pss + shared,
        "per_process_private_bytes": (pss - pss_shmem) / len(procs),
    }


def measure_memory(built: Built, cfg: Config, root: Path) -> dict[str, dict[str, Any]]:
    """Memory of cfg.procs concurrent readers, one system after the other."""
    out = {}
    for system in ("hollowd", "lmdb", "sqlite", "pickle", "raw"):
        log(f"  memory: {cfg.procs} {system} readers")
        out[system] = measure_memory_of(system, built, cfg, root)
    return out


# --- producer and sizes ------------------------------------------------------------------


def measure_sizes(built: Built) -> dict[str, dict[str, float]]:
    """Per system: how long building took, and the size of its data file."""
    out = {}
    for system in ("hollowd", "lmdb", "sqlite", "pickle", "raw"):
        size = built.data_file(system).stat().st_size
        out[system] = {"build_s": built.build_s[system], "bytes": size, "bytes_per_record": size / built.n}
    return out


# --- reporting ------------------------------------------------------------------------------


def render(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table: first column left, numbers right, the last (target) column left."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, (c, w) in enumerate(zip(cells, widths, strict=True)):
            parts.append(c.ljust(w) if i in (0, len(cells) - 1) else c.rjust(w))
        return "  ".join(parts).rstrip()

    return "\n".join([title, line(header), line(["-" * w for w in widths]), *map(line, rows), ""])


def ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}x" if reference else "-"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def size_label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def attach_tables(
    warm: dict[int, dict[str, list[float]]], fresh: dict[int, dict[str, Any]], sizes: Sequence[int]
) -> str:
    """The two attach tables: warm (µs) and first attach in a fresh process (ms)."""
    big = sizes[-1]
    med = {n: {s: statistics.median(v) for s, v in warm[n].items()} for n in sizes}
    h = [med[n]["hollowd"] for n in sizes]
    flat = max(h) / min(h)
    rows = []
    for system in WARM_SYSTEMS:
        cells = [
            LABELS[system],
            *(f"{med[n][system]:,.1f}" for n in sizes),
            ratio(med[big][system], med[big]["hollowd"]),
        ]
        if system == "hollowd":
            target = f"<= 1000 us and flat: {verdict(max(h) <= 1000 and flat <= 2)} (max/min over N {flat:.2f}x)"
        elif system == "raw":
            target = f"hollowd / floor = {med[big]['hollowd'] / med[big]['raw']:.1f}x"
        else:
            target = ""
        rows.append([*cells, target])
    header = ["system", *(f"N={size_label(n)}" for n in sizes), f"x hollowd @{size_label(big)}", "target"]
    warm_table = render("ATTACH, warm process (median us; schema already loaded; alternative / hollowd)", header, rows)

    fmed = {n: {s: statistics.median(v["ms"]) for s, v in fresh[n].items()} for n in sizes}
    pmed = {n: {s: statistics.median(v["process_ms"]) for s, v in fresh[n].items()} for n in sizes}
    rows = []
    for system in ("hollowd", "pickle", "lmdb", "sqlite", "raw"):
        cells = [LABELS[system], *(f"{fmed[n][system]:,.1f}" for n in sizes)]
        cells += [f"{pmed[big][system]:,.1f}", ratio(fmed[big][system], fmed[big]["hollowd"])]
        worst = max(fmed[n]["hollowd"] for n in sizes)
        target = f"<= 50 ms: {verdict(worst <= 50)}" if system == "hollowd" else ""
        rows.append([*cells, target])
    header = ["system", *(f"N={size_label(n)}" for n in sizes), f"process @{size_label(big)}"]
    header += [f"x hollowd @{size_label(big)}", "target"]
    fresh_table = render(
        "FIRST ATTACH in a fresh process (median ms: imports + open + one lookup of two fields; "
        "'process' = whole interpreter run)",
        header,
        rows,
    )
    return warm_table + "\n" + fresh_table


def lookup_table(res: dict[str, dict[str, float]], n: int) -> str:
    ref = res["hollowd"]["median_us"]
    rows = []
    for system in SYSTEMS:
        r = res[system]
        if system == "hollowd":
            target = f"median <= 2 us: {verdict(ref <= 2)}"
        elif system in ("lmdb", "sqlite"):
            target = f"hollowd faster: {verdict(r['median_us'] > ref)}"
        elif system == "raw":
            target = f"hollowd / floor = {ref / r['median_us']:.1f}x"
        else:
            target = ""
        rows.append([LABELS[system], f"{r['median_us']:.2f}", f"{r['p99_us']:.2f}", ratio(r["median_us"], ref), target])
    return render(
        f"LOOKUP by primary key, two fields read, N={n:,} (us per lookup over batches of keys; alternative / hollowd)",
        ["system", "median", "p99", "x hollowd", "target"],
        rows,
    )


def memory_table(res: dict[str, dict[str, Any]], procs: int, touches: int) -> str:
    mib = 1 << 20
    ref = res["hollowd"]["total_bytes"]
    rows = []
    for system in ("hollowd", "lmdb", "sqlite", "pickle", "raw"):
        r = res[system]
        if system == "lmdb":
            target = f"hollowd <= 1.25x LMDB: {verdict(ref <= 1.25 * r['total_bytes'])} ({ref / r['total_bytes']:.2f}x)"
        elif system == "pickle":
            target = f"pickle >= 15x hollowd: {verdict(r['total_bytes'] >= 15 * ref)}"
        else:
            target = ""
        rows.append(
            [
                LABELS[system],
                f"{r['pss_bytes'] / mib:,.1f}",
                f"{r['pss_shmem_bytes'] / mib:,.1f}",
                f"{r['shm_file_bytes'] / mib:,.1f}",
                f"{r['total_bytes'] / mib:,.1f}",
                f"{r['per_process_private_bytes'] / mib:,.1f}",
                f"{r['pss_plus_files_bytes'] / mib:,.1f}",
                ratio(r["total_bytes"], ref),
                target,
            ]
        )
    return render(
        f"MEMORY of {procs} reader processes, each after {touches:,} lookups (MiB; total = sum PSS - shm pages "
        "they map + shm files; alternative / hollowd)",
        ["system", "sum PSS", "shm in PSS", "shm files", "total", "private/proc", "PSS+files", "x hollowd", "target"],
        rows,
    )


def producer_table(res: dict[str, dict[str, float]], n: int, cycles: dict[int, float], one_change: float) -> str:
    ref = res["hollowd"]
    budget = 5.0 * n / 1_000_000
    rows = []
    for system in ("hollowd", "lmdb", "sqlite", "pickle", "raw"):
        r = res[system]
        target = ""
        if system == "hollowd":
            scaled = "" if n == 1_000_000 else f" (5 s at 1M scaled to {budget:.2f} s)"
            target = f"cycle <= 5 s at 1M: {verdict(r['build_s'] <= budget)}{scaled}"
        elif system == "raw":
            target = "title and year only"
        rows.append(
            [
                LABELS[system],
                f"{r['build_s']:.2f}",
                ratio(r["build_s"], ref["build_s"]),
                f"{r['bytes'] / (1 << 20):,.1f}",
                f"{r['bytes_per_record']:.1f}",
                ratio(r["bytes"], ref["bytes"]),
                target,
            ]
        )
    table = render(
        f"PRODUCER and SIZE, N={n:,} (hollowd: run_cycle from built dicts; others: bulk load / dump; "
        "alternative / hollowd)",
        ["system", "build s", "x hollowd", "file MiB", "bytes/record", "x hollowd", "target"],
        rows,
    )
    scaling = ", ".join(f"N={size_label(k)}: {v:.2f} s" for k, v in sorted(cycles.items()))
    return (
        table
        + f"hollowd cycle by size: {scaling}; at N={size_label(n)}, a second full cycle with one title changed: "
        + f"{one_change:.2f} s\n"
    )


# --- main ----------------------------------------------------------------------------------------


def run(cfg: Config, root: Path) -> tuple[dict[str, Any], str]:
    """Run every measurement; returns (results for JSON, the printed report)."""
    results: dict[str, Any] = {"config": cfg.__dict__}
    log(f"generating {cfg.records:,} records")
    big_records = make_records(cfg.records, cfg.seed)
    gc.freeze()  # the records are long-lived: keep later collections (and timed() ones) from rescanning them
    builts: dict[int, Built] = {}
    for n in cfg.attach_sizes:
        log(f"building N={n:,}")
        builts[n] = build_all(root, n, cfg.seed, big_records if n == cfg.records else None)
    log("attach in a warm process, every size")
    results["warm_attach_us"] = measure_warm_attach(builts, cfg)
    log("first attach in fresh processes, every size")
    results["fresh_attach"] = measure_fresh_attach(builts, cfg, root)
    big = builts[cfg.records]
    log(f"lookups, N={cfg.records:,}")
    results["lookup"] = measure_lookups(big, by_id(big_records), cfg)
    del big_records
    gc.collect()
    log(f"memory, N={cfg.records:,}")
    results["memory"] = measure_memory(big, cfg, root)
    results["producer"] = measure_sizes(big)
    cycles = {n: b.build_s["hollowd"] for n, b in builts.items()}
    results["hollowd_cycle_s"] = cycles
    results["hollowd_one_change_cycle_s"] = big.build_s["hollowd_one_change"]
    report = "\n".join(
        [
            attach_tables(results["warm_attach_us"], results["fresh_attach"], cfg.attach_sizes),
            lookup_table(results["lookup"], cfg.records),
            memory_table(results["memory"], cfg.procs, cfg.touches),
            producer_table(results["producer"], cfg.records, cycles, big.build_s["hollowd_one_change"]),
        ]
    )
    return results, report


def cpu_check_ms() -> float:
    """Median ms of a fixed pure-Python loop: compare runs (or start and end of one) for machine speed."""
    samples = []
    for _ in range(7):
        t0 = time.perf_counter()
        acc = 0
        for i in range(1_000_000):
            acc += i
        samples.append((time.perf_counter() - t0) * 1e3)
    return round(statistics.median(samples), 1)


def environment() -> dict[str, Any]:
    """What the figures were measured on, and how busy the machine was (other work skews figures)."""
    return {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "machine": os.uname().machine,
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "cpu_check_ms": cpu_check_ms(),
    }


def remove_doorbells(root: Path) -> None:
    """Remove the semaphores that readers of our hollow roots left in /dev/shm.

    Readers unlink theirs at exit; this only matters when one was killed.
    """
    try:
        doorbell = importlib.import_module("hollow.doorbell")
    except ImportError:
        return
    starts = tuple("sem." + doorbell.prefix(r, NAMESPACE) for r in root.glob("n*/hollow"))
    for entry in Path("/dev/shm").iterdir():
        if starts and entry.name.startswith(starts):
            entry.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark in a fresh root under /dev/shm, removed at the end whatever happens."""
    cfg, json_path = parse_config(argv)
    root = Path("/dev/shm") / f"hollow-bench-{os.getpid()}"
    root.mkdir()
    before = environment()
    try:
        results, report = run(cfg, root)
    finally:
        remove_doorbells(root)
        shutil.rmtree(root, ignore_errors=True)
    after = environment()
    results["environment"] = {"before": before, "after": after, "seconds": round(time.perf_counter() - _T0, 1)}
    print(
        f"hollowd core benchmark: N={cfg.records:,}{' (quick)' if cfg.quick else ''}; Python {before['python']}, "
        f"{before['cpus']} CPUs, Linux {before['kernel']}; {results['environment']['seconds']} s\n"
        f"machine: load average {before['loadavg_1_5_15']} before, {after['loadavg_1_5_15']} after; "
        f"1M-iteration Python loop {before['cpu_check_ms']} ms before, {after['cpu_check_ms']} ms after "
        "(other work on the machine slows every row)\n"
    )
    print(report)
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=2, default=str))
        log(f"results written to {json_path}")


if __name__ == "__main__":
    main()

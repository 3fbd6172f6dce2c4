"""Open + first lookup in a fresh process, imports aside: hollowd (following and not) against the others.

Each sample is a new interpreter (`python -c`) that imports what it needs, starts its clock,
opens the data (hollowd: ``hollow.open``, then ``snapshot()``; LMDB: ``lmdb.open`` + ``begin``;
SQLite: ``connect``; raw: ``open`` + ``mmap`` + header; pickle: ``pickle.load``), looks one
random key up, reads two fields and stops the clock. The imports are timed too, apart (they are
the same for every open of a process, and a server pays them once, before it takes requests).
Systems take turns, run by run, so that other work on the machine lands on every row alike; one
untimed run of each fills the page cache and the bytecode cache first. Medians over ``--runs``
fresh processes (pickle, which loads the whole dataset, at most 3). The CPU column is the CPU time
the process used over the same span (all its threads; ``time.process_time_ns``): on a shared
machine it moves far less than the wall-clock times, which include waiting for a CPU.

The target (issue 12, item 15): hollowd's open + first lookup within 1 ms, following or not.

Run ``.venv/bin/python bench/first_open.py [--records N] [--runs R] [--keep DIR] [--json PATH]``;
``--keep DIR`` builds the files into DIR once and reuses them on the next run (remove it yourself).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import core  # bench/core.py builds every system's files the same way as the main table

_PRELUDE = "import sys, time\npath, key = sys.argv[1], int(sys.argv[2])\nt0 = time.perf_counter_ns()\n"
_START = "\nt1 = time.perf_counter_ns()\nc1 = time.process_time_ns()\n"
_END = (
    "\nc2 = time.process_time_ns()\nt2 = time.perf_counter_ns()\nassert title and year\n"
    "print(t1 - t0, t2 - t1, c2 - c1)\n{teardown}\n"
)

#: system -> (imports, open + first lookup), run as one ``python -c``.
SNIPPETS: dict[str, tuple[str, str]] = {
    "hollowd": (
        "import hollow",
        'ds = hollow.open("movies", root=path)\nsnap = ds.snapshot()\nr = snap["Movie"].get(key)\n'
        "title, year = r.title, r.year",
    ),
    "hollowd_nofollow": (
        "import hollow",
        'ds = hollow.open("movies", root=path, follow=False)\nsnap = ds.snapshot()\nr = snap["Movie"].get(key)\n'
        "title, year = r.title, r.year",
    ),
    "lmdb": (
        "import lmdb, msgpack",
        "env = lmdb.open(path, readonly=True)\ntxn = env.begin()\n"
        'r = msgpack.unpackb(txn.get(key.to_bytes(8, "big")))\n'
        'title, year = r["title"], r["year"]',
    ),
    "sqlite": (
        "import sqlite3",
        'conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)\n'
        'title, year = conn.execute("SELECT title, year FROM movie WHERE id = ?", (key,)).fetchone()',
    ),
    "raw": (
        "import mmap, os, struct",
        core.FRESH_SNIPPETS["raw"].strip(),
    ),
    "pickle": (
        "import pickle",
        'with open(path, "rb") as f:\n    d = pickle.load(f)\nr = d[key]\ntitle, year = r["title"], r["year"]',
    ),
}
LABELS = {**core.LABELS, "hollowd": "hollowd, following (the default)"}
TEARDOWN = {"hollowd": "snap.close()\nds.close()", "hollowd_nofollow": "snap.close()\nds.close()"}


def target_of(built: core.Built, system: str) -> Path:
    return core.system_path(built, "hollowd" if system.startswith("hollowd") else system)


def run_one(system: str, path: Path, key: int, root: Path) -> tuple[float, float, float]:
    """One fresh process: (ms of its imports, ms of open + first lookup, ms of CPU the process used for them,
    all its threads)."""
    imports, body = SNIPPETS[system]
    code = _PRELUDE + imports + _START + body + _END.format(teardown=TEARDOWN.get(system, ""))
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), str(key)],
        cwd=root,
        env=core.child_env(root),
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"fresh {system} reader failed:\n{out.stderr}")
    imp, first, cpu = (int(x) / 1e6 for x in out.stdout.split())
    return imp, first, cpu


def measure(built: core.Built, runs: int, seed: int, root: Path) -> dict[str, dict[str, list[float]]]:
    rng = random.Random(seed)
    out: dict[str, dict[str, list[float]]] = {
        s: {"imports_ms": [], "open_lookup_ms": [], "cpu_ms": []} for s in SNIPPETS
    }
    for system in SNIPPETS:
        run_one(system, target_of(built, system), 0, root)  # page cache, bytecode cache
    for i in range(runs):
        for system in SNIPPETS:
            if system == "pickle" and i >= 3:
                continue
            imp, first, cpu = run_one(system, target_of(built, system), rng.randrange(built.n), root)
            out[system]["imports_ms"].append(imp)
            out[system]["open_lookup_ms"].append(first)
            out[system]["cpu_ms"].append(cpu)
        core.log(f"  run {i + 1}/{runs}")
    return out


def table(res: dict[str, dict[str, list[float]]], n: int) -> str:
    ref = statistics.median(res["hollowd"]["open_lookup_ms"])
    rows = []
    for system, r in res.items():
        s = sorted(r["open_lookup_ms"])
        med = statistics.median(s)
        p90 = s[min(len(s) - 1, int(len(s) * 0.9))]
        target = f"<= 1 ms: {core.verdict(med <= 1.0)}" if system.startswith("hollowd") else ""
        rows.append(
            [
                LABELS[system],
                f"{med:,.2f}",
                f"{p90:,.2f}",
                f"{s[0]:,.2f}",
                f"{statistics.median(r['cpu_ms']):,.2f}",
                f"{statistics.median(r['imports_ms']):,.1f}",
                str(len(s)),
                core.ratio(med, ref),
                target,
            ]
        )
    header = ["system", "median ms", "p90 ms", "best ms", "CPU ms", "imports ms", "runs", "x hollowd", "target"]
    title = (
        f"OPEN + FIRST LOOKUP in a fresh process, N={core.size_label(n)} "
        "(ms from after the imports to one lookup of two fields done; imports timed apart)"
    )
    return core.render(title, header, rows)


def build(where: Path, n: int, seed: int) -> core.Built:
    """Every system's files for *n* records (pickle and raw too), or the ones a previous ``--keep`` run left."""
    done = where / "built.json"
    if done.exists():
        saved = json.loads(done.read_text())
        return core.Built(n=saved["n"], dir=Path(saved["dir"]), version=saved["version"])
    where.mkdir(parents=True, exist_ok=True)
    built = core.build_all(where, n, seed)
    done.write_text(json.dumps({"n": n, "dir": str(built.dir), "version": built.version}))
    return built


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=31, help="fresh processes per system (default 31)")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--keep", type=Path, default=None, metavar="DIR", help="build into DIR once and reuse it")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write every sample as JSON here")
    args = ap.parse_args(argv)
    root = args.keep or Path("/dev/shm") / f"hollow-bench-open-{os.getpid()}"
    before = core.environment()
    try:
        core.log(f"building N={args.records:,} under {root}")
        built = build(root, args.records, args.seed)
        core.log(f"{args.runs} fresh processes per system")
        res = measure(built, args.runs, args.seed + 3, root)
    finally:
        if args.keep is None:
            core.remove_doorbells(root)
            shutil.rmtree(root, ignore_errors=True)
    after = core.environment()
    print(
        f"hollowd open + first lookup: N={args.records:,}; Python {before['python']}, {before['cpus']} CPUs, "
        f"Linux {before['kernel']}\nmachine: load average {before['loadavg_1_5_15']} before, "
        f"{after['loadavg_1_5_15']} after (other work on the machine slows every row)\n"
    )
    print(table(res, args.records))
    if args.json is not None:
        args.json.write_text(json.dumps({"environment": [before, after], "results": res}, indent=2))


if __name__ == "__main__":
    time.perf_counter()
    main()

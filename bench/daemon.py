"""How long hollowd takes from a source change to a reader on the new version, at 1M records.

Two namespaces of N Movie records (bench/movie.capnp) in one daemon:

* ``movies``: a JSON Lines file of every record, replaced (by rename, as a
  careful writer does) by one in which ``--changed`` titles differ;
* ``changes``: a change log holding the same N records as upserts, to which
  the same ``--changed`` upserts are then appended.

For each, the time from the file's change to a following reader's switch
(its on_update), and the daemon's own cycle line from its log.

Run: ``.venv/bin/python bench/daemon.py [--records N] [--changed K]``.
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
import threading
import time
from pathlib import Path
from typing import Any

import hollow

HERE = Path(__file__).resolve().parent

CONFIG = """\
[daemon]
root = "{root}"
state_dir = "{state}"
control_socket = "{state}/control.sock"

[namespaces.movies]
schema = "{schema}"
source = "{source}"
debounce = 0.1

[namespaces.movies.types.Movie]
primary_key = "id"
indexes = ["genre"]

[namespaces.changes]
schema = "{schema}"
source = "{log}"
delivers = "changes"
debounce = 0.02

[namespaces.changes.types.Movie]
primary_key = "id"
indexes = ["genre"]
"""


def movie(i: int, rng: random.Random, title: str | None = None) -> dict[str, object]:
    genres = [f"genre{g}" for g in range(20)]
    words = [f"word{w}" for w in range(50)]
    default = f"Movie {i} {rng.choice(words)}"  # drawn even when replaced: later records stay the same
    return {
        "id": i,
        "title": title or default,
        "year": 1920 + i % 100,
        "rating": (i % 100) / 10,
        "genre": genres[i % 20],
        "tags": rng.sample(words, 2 + i % 2),
    }


def write_source(path: Path, n: int, changed: dict[int, str]) -> None:
    rng = random.Random(1)
    tmp = path.with_name(".movies.jsonl.tmp")
    with open(tmp, "w") as f:
        for i in range(n):
            f.write(json.dumps(movie(i, rng, changed.get(i))) + "\n")
    os.replace(tmp, path)


def change_lines(n: int, changed: dict[int, str]) -> bytes:
    """Upserts of the records *changed* gives new titles to (all N when *changed* is empty)."""
    rng = random.Random(1)
    lines = [json.dumps({"upsert": movie(i, rng, changed.get(i))}) + "\n" for i in range(n)]
    return "".join(line for i, line in enumerate(lines) if not changed or i in changed).encode()


def append_changes(path: Path, text: bytes) -> None:
    """*text* appended in one write, as a tool appending to a log would."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, text)
    finally:
        os.close(fd)


def follow(root: Path, namespace: str, change: Any, check: Any) -> float:
    """Seconds from *change()* returning (the file written) to a following reader on the new version."""
    switched = threading.Event()
    with hollow.open(namespace, root=root) as ds:
        ds.on_update(lambda v: switched.set())
        ds.wait_following(30)  # its doorbell and inotify are set up: the change is not timed against that
        changed_at = change()
        if not switched.wait(600):
            raise SystemExit(f"{namespace}: no new version within 600 s")
        seen_at = time.time()
        with ds.snapshot() as snap:
            check(snap)
    return seen_at - changed_at


def wait_announced(ns: Path, daemon: Any, log: Path) -> None:
    deadline = time.monotonic() + 900
    while not (ns / "announce" / "announced").exists():
        if time.monotonic() > deadline or daemon.poll() is not None:
            raise SystemExit(f"daemon did not publish {ns.name}: {log.read_text()}")
        time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--changed", type=int, default=1000, help="records changed (default 1,000)")
    ap.add_argument("--rounds", type=int, default=5, help="change-log appends timed (default 5; the median is shown)")
    args = ap.parse_args()
    work = Path(f"/dev/shm/hollow-bench-{os.getpid()}")
    state = Path(f"/tmp/hollow-bench-state-{os.getpid()}")
    work.mkdir()
    state.mkdir()
    source, changelog = state / "movies.jsonl", state / "changes.jsonl"
    changed = {i: f"changed {i}" for i in random.Random(2).sample(range(args.records), args.changed)}
    daemon = None
    try:
        print(f"writing {args.records:,} records twice ...", file=sys.stderr)
        write_source(source, args.records, {})
        changelog.write_bytes(change_lines(args.records, {}))
        config = state / "hollowd.toml"
        config.write_text(
            CONFIG.format(root=work, state=state, schema=HERE / "movie.capnp", source=source, log=changelog)
        )
        log_path = state / "daemon.log"
        log = open(log_path, "w")  # noqa: SIM115 - closed in finally
        daemon = subprocess.Popen([sys.executable, "-m", "hollowd.daemon", "--config", str(config)], stderr=log)
        for name in ("movies", "changes"):
            wait_announced(work / name, daemon, log_path)
        for name in ("movies", "changes"):  # and saved: the daemon is idle before anything is timed
            while not (state / name / "latest.state").exists():
                time.sleep(0.1)
        time.sleep(1)
        first, last = min(changed), max(changed)

        def check(snap: Any) -> None:
            assert snap["Movie"][first].title == changed[first]
            assert snap["Movie"][last].title == changed[last]

        def replace() -> float:
            write_source(source, args.records, changed)  # writing the file is the user's, not timed
            return os.stat(source).st_mtime

        def cycles() -> list[str]:
            return [ln for ln in log_path.read_text().splitlines() if "event=cycle " in ln]

        def idle(count: int) -> None:
            """Until the daemon has logged *count* cycles (its durable copies are written after the
            announcement): a change is timed only on an idle daemon."""
            while len(cycles()) < count:
                time.sleep(0.05)
            time.sleep(0.5)

        print(f"both published; changing {args.changed:,} records ...", file=sys.stderr)
        done = timed_from = len(cycles())
        whole = follow(work, "movies", replace, check)
        idle(done + 1)
        logged = []
        for n in range(args.rounds):
            titles = {i: f"changed {i} round {n}" for i in changed}
            text = change_lines(args.records, titles)  # made before: the bench's own work is not timed

            def append(text: bytes = text) -> float:
                append_changes(changelog, text)
                return os.stat(changelog).st_mtime

            def check_round(snap: Any, titles: dict[int, str] = titles) -> None:
                assert snap["Movie"][first].title == titles[first]

            done = len(cycles())
            logged.append(follow(work, "changes", append, check_round))
            idle(done + 1)
        print(f"\n{args.records:,} records, {args.changed:,} of them changed (debounce: file 0.1 s, log 0.02 s)")
        print(f"JSON Lines file ({source.stat().st_size / 2**20:,.0f} MiB) replaced -> reader on it: {whole:.2f} s")
        print(
            f"{args.changed:,} change-log lines appended -> reader on it:      "
            f"{statistics.median(logged) * 1e3:.0f} ms median of {len(logged)} "
            f"({', '.join(f'{t * 1e3:.0f}' for t in logged)})"
        )
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print("the daemon's cycles since the timed changes began:")
        for line in cycles()[timed_from:]:
            print("  " + line)
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(60)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()

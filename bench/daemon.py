"""How long hollowd takes from a source file change to the announcement, at 1M records.

Writes a JSON Lines source of N Movie records (bench/movie.capnp), starts
hollowd on it, then replaces the file with one where a single title changed
(by rename, as a careful writer does) and measures the time until the new
version is announced, as a reader sees it (its on_update). Prints the daemon's
own stage timings from its log as well.

Run: ``.venv/bin/python bench/daemon.py [--records N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

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
"""


def write_source(path: Path, n: int, changed_title: str) -> None:
    rng = random.Random(1)
    genres = [f"genre{g}" for g in range(20)]
    words = [f"word{w}" for w in range(50)]
    tmp = path.with_name(".movies.jsonl.tmp")
    with open(tmp, "w") as f:
        for i in range(n):
            rec = {
                "id": i,
                "title": changed_title if i == 0 else f"Movie {i} {rng.choice(words)}",
                "year": 1920 + i % 100,
                "rating": (i % 100) / 10,
                "genre": genres[i % 20],
                "tags": rng.sample(words, 2 + i % 2),
            }
            f.write(json.dumps(rec) + "\n")
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    args = ap.parse_args()
    work = Path(f"/dev/shm/hollow-bench-{os.getpid()}")
    state = Path(f"/tmp/hollow-bench-state-{os.getpid()}")
    work.mkdir()
    source = state / "movies.jsonl"
    state.mkdir()
    daemon = None
    try:
        print(f"writing {args.records:,} records ...", file=sys.stderr)
        write_source(source, args.records, "first")
        config = state / "hollowd.toml"
        config.write_text(CONFIG.format(root=work, state=state, schema=HERE / "movie.capnp", source=source))
        log = open(state / "daemon.log", "w")  # noqa: SIM115 - closed in finally
        daemon = subprocess.Popen([sys.executable, "-m", "hollowd.daemon", "--config", str(config)], stderr=log)
        ns = work / "movies"
        deadline = time.monotonic() + 600
        while not (ns / "announce" / "announced").exists():
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit(f"daemon did not publish: {(state / 'daemon.log').read_text()}")
            time.sleep(0.1)
        switched = threading.Event()
        with hollow.open("movies", root=work) as ds:
            first = ds.version
            ds.on_update(lambda v: switched.set())
            print(f"version {first} announced; changing one title ...", file=sys.stderr)
            write_source(source, args.records, "second")  # not timed: writing the file is the user's
            changed_at = os.stat(source).st_mtime
            switched.wait(600)
            seen_at = time.time()
            with ds.snapshot() as snap:
                assert snap["Movie"][0].title == "second"
                version = snap.version
        cycle_lines = [ln for ln in (state / "daemon.log").read_text().splitlines() if "event=cycle " in ln]
        print(f"\n{args.records:,} records, JSON Lines source, {source.stat().st_size / 2**20:,.0f} MiB")
        print(f"file replaced -> version {version} followed by a reader: {seen_at - changed_at:.2f} s")
        print(f"daemon's cycle: {cycle_lines[-1] if cycle_lines else '?'}")
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(60)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Publish the airports namespace (or, with --readers-only, use what a daemon published),
then let several processes read it.

N reader processes attach to the same shared-memory file and look airports
up, each reporting what it saw and how long attaching and looking up took.
``examples/airports/run.py`` (``make run``) runs this against a live daemon.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import hollow
from examples.airports import source
from hollowd import Producer

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", default=None, help="shared-memory root (default $HOLLOW_ROOT or /dev/shm/hollow)")
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--readers-only", action="store_true", help="do not publish: a daemon does")
    args = ap.parse_args()
    if args.readers_only:
        version = hollow.status("airports", root=args.root).announced
    else:
        t0 = time.perf_counter()
        records = source.records()
        with Producer(
            "airports", schema=source.SCHEMA, primary_keys=source.PRIMARY_KEYS, indexes=source.INDEXES, root=args.root
        ) as producer:
            version = producer.run_cycle(lambda state: [state.add("Airport", r) for r in records])
            path = producer.dir / str(version)
        took = time.perf_counter() - t0
        print(
            f"published airports version {version}: {len(records):,} records, {path.stat().st_size:,} bytes "
            f"at {path} in {took:.2f} s"
        )
    cmd = [sys.executable, "-m", "examples.airports.reader"] + ([args.root] if args.root else [])
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(args.readers)]
    reports = [json.loads(p.communicate()[0]) for p in procs]
    if any(p.returncode for p in procs):
        sys.exit("a reader failed")
    print(f"\n{args.readers} reader processes attached to version {version}:")
    print(f"{'pid':>8} {'records':>8} {'first attach':>13} {'attach':>9} {'lookup median':>14} {'NZ airports':>12}")
    for r in reports:
        print(
            f"{r['pid']:>8} {r['records']:>8,} {r['first_attach_ms']:>10.2f} ms {r['attach_ms']:>6.3f} ms "
            f"{r['lookup_median_us']:>11.2f} µs {r['nz_airports']:>12}"
        )
    print("\nwhat they saw:")
    for code, what in reports[0]["seen"].items():
        print(f"  {code}: {what}")


if __name__ == "__main__":
    main()

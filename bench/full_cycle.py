"""The CPU a full cycle costs per record it is handed (issue 10, target 4), in one process.

``run_cycle`` handed all N Movie records of bench/core.py, k of them with a new title, for each k
(after the ones before, as bench/changes.py runs them): process CPU and wall time a record, and the
producer's stages. Unlike bench/changes.py this times no new reader and runs no other system, so
old and new code can be compared back to back (docs/decisions.md §101). ``--profile K`` prints
cProfile's table for the last run of that k.

Run: ``.venv/bin/python bench/full_cycle.py [--n N] [--ks 1,1000,10000] [--reps 3] [--profile K]``.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import random
import shutil
import time
from pathlib import Path
from typing import Any

from core import NAMESPACE, SCHEMA, TYPE, make_records

from hollowd import Producer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--ks", default="1,1000,10000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--profile", type=int, default=0, metavar="K", help="profile the last run of this k")
    args = ap.parse_args()
    root = Path(f"/dev/shm/hollow-bench-cycle-{os.getpid()}")
    root.mkdir()
    try:
        p = Producer(NAMESPACE, schema=SCHEMA, primary_keys={TYPE: "id"}, indexes={TYPE: ["genre"]}, root=root)
        records = make_records(args.n, 7)

        def populate(state: Any) -> None:
            state.add_all(TYPE, records)

        p.run_cycle(populate)
        gc.collect()
        gc.freeze()
        rng = random.Random(3)
        print(f"N={args.n:,}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        step = 0
        for k in map(int, args.ks.split(",")):
            for rep in range(args.reps):
                step += 1
                for i in rng.sample(range(len(records)), k):
                    records[i] = {**records[i], "title": f"changed {step} {i}"}
                gc.collect()
                prof = cProfile.Profile() if args.profile == k and rep == args.reps - 1 else None
                cpu, wall = time.process_time(), time.perf_counter()
                if prof is not None:
                    prof.enable()
                p.run_cycle(populate)
                if prof is not None:
                    prof.disable()
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                stages = " ".join(f"{s}={v * 1e3:.1f}" for s, v in p.last_timings.items())
                print(
                    f"k={k:,}: {cpu * 1e6 / len(records):.3f} us CPU a record, "
                    f"{wall * 1e6 / len(records):.3f} us wall; stages (ms): {stages}",
                    flush=True,
                )
                if prof is not None:
                    pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        p.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

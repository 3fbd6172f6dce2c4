"""One reader process: attach to the airports namespace, look records up, report timings as JSON.

Run by ``demo.py`` (several at once); also runnable alone:
``python -m examples.airports.reader [ROOT]``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import hollow

SAMPLE = ["NZAA", "KJFK", "EGLL", "YSSY", "RJTT", "FAOR", "SBGR", "LFPG"]


def main(root: str | None = None) -> dict[str, object]:
    t0 = time.perf_counter()
    ds = hollow.open("airports", root=root)  # first attach: loads the embedded schema, starts following
    first_attach = time.perf_counter() - t0
    version = ds.version
    t0 = time.perf_counter()
    with hollow.open("airports", root=root, follow=False) as again, again.snapshot():
        attach = time.perf_counter() - t0  # open, lease, map, check: the schema is known by now
    seen = {}
    with ds.snapshot() as snap:
        airports = snap["Airport"]
        for code in SAMPLE:
            a = airports.get(code)
            seen[code] = None if a is None else f"{a.name}, {a.city} ({a.country})"
        nz = airports.find(country="NZ")
        codes = [a.icao for a in airports][:: max(1, len(airports) // 2000)]
        timings = []
        for code in codes:
            t0 = time.perf_counter()
            a = airports.get(code)
            _ = (a.name, a.country)
            timings.append(time.perf_counter() - t0)
        count = len(airports)
    ds.close()
    return {
        "pid": os.getpid(),
        "version": version,
        "records": count,
        "first_attach_ms": first_attach * 1e3,
        "attach_ms": attach * 1e3,
        "lookup_median_us": statistics.median(timings) * 1e6,
        "nz_airports": len(nz),
        "seen": seen,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1] if len(sys.argv) > 1 else None)))

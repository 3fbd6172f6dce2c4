"""bench/first_open.py runs end to end on a tiny dataset and prints its table, so that it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ("hollowd, following", "hollowd, follow=False", "LMDB + msgpack", "SQLite", "raw mmap", "pickle")


def test_first_open_benchmark_prints_its_table(tmp_path: Path) -> None:
    results = tmp_path / "first_open.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "first_open.py"),
            "--records",
            "2000",
            "--runs",
            "2",
            "--json",
            str(results),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("OPEN + FIRST LOOKUP"))
    rows = lines[start + 3 : start + 3 + len(SYSTEMS)]
    assert [next(s for s in SYSTEMS if row.startswith(s)) for row in rows] == list(SYSTEMS), proc.stdout
    assert all("<= 1 ms:" in row for row in rows[:2]), rows
    got = json.loads(results.read_text())["results"]
    assert len(got["hollowd"]["open_lookup_ms"]) == 2
    assert all(ms > 0 for r in got.values() for ms in r["open_lookup_ms"])

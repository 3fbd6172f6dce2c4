"""bench/hosts.py runs end to end on a tiny dataset (its own SeaweedFS, 4 follower processes) and prints its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_hosts_benchmark_prints_its_table(tmp_path: Path) -> None:
    results = tmp_path / "hosts.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "hosts.py"), "--n", "3000", "--k", "30", "--versions", "2",
         "--json", str(results)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "MANY HOSTS: 3,000 records, 30 changed per version" in done.stdout
    for row in ("snapshot blob", "bytes a follower fetches", "1 s watch", "0.1 s watch", "fresh follower"):
        assert row in done.stdout, done.stdout
    res = json.loads(results.read_text())
    assert res["watch 1.0"]["fetched"] < res["snapshot"]["stored"]  # deltas, not snapshots

"""bench/changes.py runs end to end on a tiny dataset and prints every table, so that it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "changes.py"
SYSTEMS = ("hollowd", "LMDB + msgpack", "SQLite")


def _table(out: str, title: str) -> list[str]:
    """The lines of the table whose title starts with *title* (up to the blank line after it)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def test_changes_benchmark_prints_every_table(tmp_path: Path) -> None:
    results = tmp_path / "changes.json"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--n", "2000", "--reps", "2", "--json", str(results)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    for title in ("FIRST BUILD", "PUBLISH", "WRITER MEMORY"):
        rows = _table(out, title)
        for system in SYSTEMS:
            assert any(row.startswith(system + " ") for row in rows), f"{title}: no row for {system}:\n{out}"
    publish = _table(out, "PUBLISH")
    assert "k=1 ms" in publish[1], publish[1]
    assert "k=1,000 ms" in publish[1], publish[1]
    for title, first_cells in (
        ("HOLLOWD run_cycle", ("k=1 ", "k=1,000 ")),
        ("/dev/shm ADDED", ("k=1 ", "k=1,000 ")),
        ("HOLLOWD LOOKUP", ("first version", "last version")),
        (
            "TARGETS",
            (
                "publish k=1 ",
                "publish k=1,000 ",
                "publish k=10,000 ",
                "/dev/shm per version",
                "producer RSS",
                "first build",
            ),
        ),
    ):
        rows = _table(out, title)
        for cell in first_cells:
            assert any(row.startswith(cell) for row in rows), f"{title}: no row {cell!r}:\n{out}"
    targets = _table(out, "TARGETS")[3:]
    assert all(("met" in row.lower()) or "not measured" in row for row in targets), targets
    assert not (Path("/dev/shm") / f"hollow-bench-changes-{proc.pid}").exists()
    data = json.loads(results.read_text())
    assert set(data["changes"]) == {"hollowd", "lmdb", "sqlite"}
    assert data["consistency_keys"] > 0

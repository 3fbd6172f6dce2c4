"""A callable airports source for tests/test_daemon_boundaries.py: good records, or (while a flag file
in HOLLOW_TEST_CONTROL says so) one with a lone surrogate as its Text primary key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def populate(state: Any) -> None:
    control = Path(os.environ["HOLLOW_TEST_CONTROL"])
    codes = ["NZAA", "KJFK", "EGLL"]
    if (control / "surrogate").exists():
        codes.append("\ud800")
    for code in codes:
        state.add("Airport", {"icao": code, "name": f"airport {code!r}", "country": "NZ"})

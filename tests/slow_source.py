"""A callable source for tests/test_daemon.py: fast, or (while a flag file exists) stuck mid-cycle."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tests.helpers import movie


def populate(state: Any) -> None:
    control = Path(os.environ["HOLLOW_TEST_CONTROL"])
    for i in range(5):
        state.add("Movie", movie(i, title=(control / "title").read_text() if (control / "title").exists() else "t"))
    if (control / "slow").exists():
        (control / "in-cycle").touch()
        time.sleep(120)  # killed here

"""An incremental callable source for tests/test_changes.py: the changes are a JSON list in a file
(HOLLOW_TEST_CONTROL/changes.json), the cursor how many of them were given; every call is recorded."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def changes_since(cursor: dict[str, int] | None) -> tuple[list[Any], dict[str, int]]:
    control = Path(os.environ["HOLLOW_TEST_CONTROL"])
    with (control / "calls").open("a") as calls:
        calls.write(json.dumps(cursor) + "\n")
    changes = json.loads((control / "changes.json").read_text())
    start = 0 if cursor is None else cursor["given"]
    return changes[start:], {"given": len(changes)}

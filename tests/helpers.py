"""Helpers for tests: a producer with the movies schema, subprocess readers."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hollowd import Producer

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"


def movie(i: int, **over: object) -> dict[str, object]:
    """A deterministic Movie record."""
    genres = ["Drama", "Comedy", "Action", "Horror", "Documentary"]
    rec: dict[str, object] = {
        "id": i,
        "title": f"Movie {i}",
        "year": 1950 + i % 70,
        "rating": (i % 50) / 10,
        "genre": genres[i % len(genres)],
        "tags": ["classic", "restored"] if i % 2 else ["new"],
        "releasedAt": {"unixMillis": 1_600_000_000_000 + i},
    }
    rec.update(over)
    return rec


def movies_producer(root: Path, **kw: Any) -> Producer:
    kw.setdefault("primary_keys", {"Movie": "id", "Actor": "id", "Role": ["movieId", "actorId"]})
    kw.setdefault("indexes", {"Movie": ["genre", "year"], "Role": ["actorId"]})
    return Producer("movies", schema=SCHEMAS / "movies.capnp", root=root, **kw)


def populate(records: Iterable[dict[str, Any]], type_name: str = "Movie") -> Any:
    records = list(records)

    def fill(state: Any) -> None:
        for r in records:
            state.add(type_name, r)

    return fill


def run_python(code: str, *args: str, timeout: float = 60) -> Any:
    """Run *code* in a fresh interpreter; it prints one JSON document, returned parsed."""
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if out.returncode != 0:
        raise AssertionError(f"subprocess failed ({out.returncode}):\n{out.stderr}")
    return json.loads(out.stdout)


def f32(x: float) -> float:
    """*x* as a Float32 field stores it (rounded to the nearest single-precision value)."""
    return float(struct.unpack("<f", struct.pack("<f", float(x)))[0])


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

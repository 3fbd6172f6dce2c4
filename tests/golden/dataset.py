"""The known dataset the golden files hold, and how to make them.

``python -m tests.golden.dataset`` rewrites ``tests/golden/v<FORMAT_VERSION>/``.
Do that only together with a FORMAT_VERSION bump: the golden files exist to
catch format changes that were not meant.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from hollow import layout
from hollowd import Producer

HERE = Path(__file__).resolve().parent
SCHEMA = HERE.parent.parent / "schemas" / "movies.capnp"
KEYS = {"Movie": "id", "Actor": "id", "Role": ["movieId", "actorId"]}
INDEXES = {"Movie": ["genre", ["year", "genre"]], "Role": ["actorId"]}


def first_cycle() -> dict[str, list[dict[str, Any]]]:
    movies = [
        {
            "id": 1,
            "title": "Heat",
            "year": 1995,
            "rating": 8.3,
            "genre": "Crime",
            "tags": ["heist", "la"],
            "releasedAt": {"unixMillis": 818_035_200_000},
        },
        {"id": 2, "title": "Amélie", "year": 2001, "rating": 8.3, "genre": "Comedy", "tags": ["paris"]},
        {"id": 3, "title": "Alien", "year": 1979, "rating": 8.5, "genre": "Horror", "tags": ["space", "classic"]},
        {"id": 4, "title": "Ran", "year": 1985, "rating": 8.2, "genre": "Drama", "tags": ["classic"]},
        {"id": 5, "title": "Up", "year": 2009, "rating": 8.3, "genre": "Comedy", "tags": []},
        {"id": 6, "title": "Ronin", "year": 1998, "rating": 7.2, "genre": "Crime", "tags": ["heist", "paris"]},
    ]
    actors = [
        {"id": 10, "name": "Al Pacino", "bornAt": {"unixMillis": -938_736_000_000}},
        {"id": 11, "name": "Robert De Niro"},
        {"id": 12, "name": "Sigourney Weaver"},
    ]
    roles = [
        {"movieId": 1, "actorId": 10, "character": "Vincent Hanna"},
        {"movieId": 1, "actorId": 11, "character": "Neil McCauley"},
        {"movieId": 6, "actorId": 11, "character": "Sam"},
        {"movieId": 3, "actorId": 12, "character": "Ripley"},
    ]
    return {"Movie": movies, "Actor": actors, "Role": roles}


def second_cycle() -> dict[str, list[dict[str, Any]]]:
    """Movie 2 and 5 removed (two holes), movie 7 added (fills the first), movie 4 changed."""
    data = first_cycle()
    movies = [m for m in data["Movie"] if m["id"] not in (2, 5)]
    movies[2] = {**movies[2], "rating": 8.6}
    movies.append(
        {"id": 7, "title": "Seven Samurai", "year": 1954, "rating": 9.0, "genre": "Drama", "tags": ["classic"]}
    )
    data["Movie"] = movies
    return data


def produce(root: Path) -> Path:
    """Publish both cycles under *root*; return the second version's state file."""
    with Producer("movies", schema=SCHEMA, primary_keys=KEYS, indexes=INDEXES, root=root) as p:
        for cycle in (first_cycle(), second_cycle()):
            version = p.run_cycle(lambda state, c=cycle: [state.add_all(t, rs) for t, rs in c.items()])
        return p.dir / str(version)


def normalized(data: bytes, base: bytes | None = None) -> bytes:
    """The file with what depends on the clock zeroed: publication time (header and
    envelope), the content and envelope hashes over it, and the header checksum; for a
    version built on a base, the base's content hash it names (which covers the base's time)."""
    header = layout.Header.unpack(data, what="golden", size=len(data))
    stamp = header.published_at_ns.to_bytes(8, "little", signed=True)
    body = bytearray(data)
    body[64:72] = bytes(8)  # content hash (covers the envelope's publication time)
    body[72:80] = bytes(8)  # envelope hash (covers the envelope's publication time)
    body[112:128] = bytes(16)  # published-at and the checksum over it
    rest = bytes(body[128:]).replace(stamp, bytes(8))
    if base is not None:
        rest = rest.replace(base[64:72], bytes(8))
    return bytes(body[:128]) + rest


def main() -> None:
    out = HERE / f"v{layout.FORMAT_VERSION}"
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        state = produce(Path(tmp))
        out.mkdir(exist_ok=True)
        shutil.copyfile(state, out / "movies.state")
        (out / "movies.state").chmod(0o644)
        base = state.with_name(state.name + ".base")
        if base.exists():  # format 4: the second version is an overlay on the first
            shutil.copyfile(base, out / "movies.state.base")
            (out / "movies.state.base").chmod(0o644)
    (out / "movies.json").write_text(json.dumps(second_cycle(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

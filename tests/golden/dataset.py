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
from hollowd import Producer, overlay

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


def third_cycle() -> dict[str, list[dict[str, Any]]]:
    """Movie 6 moves to another genre, movie 8 is added, Ronin's role goes: written over version 2
    as its mid (format 5), the overlay thresholds lowered so that a tiny dataset has one."""
    data = second_cycle()
    data["Movie"] = [{**m, "genre": "Thriller"} if m["id"] == 6 else m for m in data["Movie"]]
    data["Movie"].append({"id": 8, "title": "Heat 2", "year": 2026, "rating": 7.0, "genre": "Crime", "tags": []})
    data["Role"] = [r for r in data["Role"] if r["movieId"] != 6]
    return data


def produce(root: Path) -> Path:
    """Publish the three cycles under *root*; return the last version's state file."""
    saved = overlay.TOP_FROM, overlay.TOP_MIN
    overlay.TOP_FROM, overlay.TOP_MIN = 1, 16
    try:
        with Producer("movies", schema=SCHEMA, primary_keys=KEYS, indexes=INDEXES, root=root) as p:
            for cycle in (first_cycle(), second_cycle(), third_cycle()):
                version = p.run_cycle(lambda state, c=cycle: [state.add_all(t, rs) for t, rs in c.items()])
            return p.dir / str(version)
    finally:
        overlay.TOP_FROM, overlay.TOP_MIN = saved


def normalized(data: bytes, base: bytes | None = None, mid: bytes | None = None) -> bytes:
    """The file with what depends on the clock zeroed: publication time (header and
    envelope), the content and envelope hashes over it, and the header checksum; for a
    version built on a base (over a mid), the base's (mid's) content hash it names (which
    covers the base's time)."""
    header = layout.Header.unpack(data, what="golden", size=len(data))
    stamp = header.published_at_ns.to_bytes(8, "little", signed=True)
    body = bytearray(data)
    body[64:72] = bytes(8)  # content hash (covers the envelope's publication time)
    body[72:80] = bytes(8)  # envelope hash (covers the envelope's publication time)
    body[112:128] = bytes(16)  # published-at and the checksum over it
    rest = bytes(body[128:]).replace(stamp, bytes(8))
    for other in (base, mid):
        if other is not None:
            rest = rest.replace(other[64:72], bytes(8))
    return bytes(body[:128]) + rest


def main() -> None:
    out = HERE / f"v{layout.FORMAT_VERSION}"
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        state = produce(Path(tmp))
        out.mkdir(exist_ok=True)
        shutil.copyfile(state, out / "movies.state")
        (out / "movies.state").chmod(0o644)
        for suffix in (layout.BASE_SUFFIX, layout.MID_SUFFIX):  # format 4: a base; 5: a mid too
            linked = state.with_name(state.name + suffix)
            if linked.exists():
                shutil.copyfile(linked, out / f"movies.state{suffix}")
                (out / f"movies.state{suffix}").chmod(0o644)
    (out / "movies.json").write_text(json.dumps(third_cycle(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

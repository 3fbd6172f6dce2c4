from __future__ import annotations

from pathlib import Path

import hollow
from tests.helpers import movie, movies_producer, populate


def test_publish_and_read(root: Path) -> None:
    with movies_producer(root) as p:
        v = p.run_cycle(populate(movie(i) for i in range(100)))
    with hollow.open("movies", root=root) as ds, ds.snapshot() as snap:
        assert snap.version == v
        assert snap["Movie"][7].title == "Movie 7"
        assert snap["Movie"][7].releasedAt.unixMillis == 1_600_000_000_007

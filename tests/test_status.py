"""hollow.status: versions, sizes, flags, lease holders and followers, seen from outside."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import hollow
from hollow.lease import holders, lock_path
from tests.helpers import movies_producer
from tests.test_follow import follower, version_data


def test_status_reports_versions_sizes_flags_leases_and_followers(root: Path) -> None:
    ns_dir = root / "movies"
    with movies_producer(root) as p:
        for n in (1, 2, 3):
            p.run_cycle(version_data(n, count=10 * n))  # three different sizes
        with follower(root, poll=3600) as kid, hollow.open("movies", root=root, follow=False) as mine:
            kid.expect("ready", version=3)
            old = mine.attach(1)
            try:
                st = hollow.status("movies", root=root)
                assert (st.namespace, st.root) == ("movies", str(root))
                assert (st.announced, st.pinned, st.latest) == (3, None, 3)
                assert [v.version for v in st.versions] == [1, 2, 3]
                sizes = {v.version: v.bytes for v in st.versions}
                assert sizes == {v: os.stat(ns_dir / str(v)).st_size for v in (1, 2, 3)}
                assert len(set(sizes.values())) == 3
                assert st.bytes == sum(sizes.values())
                flags = {v.version: (v.announced, v.pinned, v.latest) for v in st.versions}
                assert flags == {1: (False, False, False), 2: (False, False, False), 3: (True, False, True)}
                leases = {v.version: v.leases for v in st.versions}
                # this process leases 1 (attach) and 3 (its non-following dataset's current); the child 3
                assert leases == {1: [os.getpid()], 2: [], 3: sorted([os.getpid(), kid.pid])}
                assert st.followers == [kid.pid], "a non-following dataset is not a follower"

                with hollow.open("movies", root=root, poll_interval=3600) as following:
                    assert following.version == 3
                    assert following.wait_following(60)  # a follower counts from its doorbell, made by its thread
                    assert hollow.status("movies", root=root).followers == sorted([os.getpid(), kid.pid])
                assert hollow.status("movies", root=root).followers == [kid.pid]

                p.pin(2)
                kid.expect("update", version=2)
                st = hollow.status("movies", root=root)
                assert (st.announced, st.pinned, st.latest) == (2, 2, 3)
                flags = {v.version: (v.announced, v.pinned, v.latest) for v in st.versions}
                assert flags == {1: (False, False, False), 2: (True, True, False), 3: (False, False, True)}
                assert kid.pid in {v.version: v.leases for v in st.versions}[2]

                kid.send("close")
                kid.expect("ack", op="close")
                st = hollow.status("movies", root=root)
                assert st.followers == [], "a closed dataset still shows as a follower"
                assert all(kid.pid not in v.leases for v in st.versions)
                assert kid.proc.poll() is None, "the child is alive; only its dataset is closed"
                kid.finish()
            finally:
                old.close()
        assert holders(lock_path(ns_dir, 1)) == []
        assert all(v.leases == [] for v in hollow.status("movies", root=root).versions)


def test_status_of_a_missing_namespace_is_namespace_not_found(root: Path) -> None:
    with pytest.raises(hollow.NamespaceNotFoundError, match="nope"):
        hollow.status("nope", root=root)


def test_status_to_dict_is_json(root: Path) -> None:
    with movies_producer(root) as p:
        p.run_cycle(version_data(1))
        p.run_cycle(version_data(2))
        p.pin(1)
        with follower(root, poll=3600) as kid:
            kid.expect("ready", version=1)
            st = hollow.status("movies", root=root)
            doc = json.loads(json.dumps(st.to_dict()))
            kid.finish()
    assert doc["namespace"] == "movies"
    assert doc["root"] == str(root)
    assert (doc["announced"], doc["pinned"], doc["latest"]) == (1, 1, 2)
    assert doc["followers"] == [kid.pid]
    assert [v["version"] for v in doc["versions"]] == [1, 2]
    first = doc["versions"][0]
    assert set(first) == {"version", "bytes", "announced", "pinned", "latest", "leases", "base_bytes", "mid_bytes"}
    assert first["leases"] == [kid.pid]
    assert first["bytes"] == st.versions[0].bytes > 0

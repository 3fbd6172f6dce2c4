"""Following a producer on another host through a blob store (hollowd.replication, hollowd.follower)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from hollow import layout
from hollow.state import StateFile
from hollowd import Producer, ProducerLockedError, blobs, overlay, replication
from hollowd.follower import Follower, restore
from hollowd.replication import Publisher, ReplicationError, content_hash, header_key, read_header
from tests.daemons import run
from tests.helpers import movie, movies_producer, populate
from tests.seaweed import Seaweed


@pytest.fixture(params=["dir", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path / "store") if request.param == "dir" else request.getfixturevalue("s3_url")


@pytest.fixture
def store(store_url: str) -> Iterator[blobs.BlobStore]:
    s = blobs.open_store(store_url)
    yield s
    s.close()


@pytest.fixture
def host2(tmp_path: Path) -> Iterator[Path]:
    """A second host's shared-memory root."""
    path = Path("/dev/shm") / f"hollow-test-f{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class Replicated:
    """A producer that published its first version to a store, and a follower of that store on a second
    host that has polled once (so it is on that version)."""

    p: Producer
    pub: Publisher
    f: Follower
    store: blobs.BlobStore
    first: Any  # the first version's header, as published


@pytest.fixture
def replicated(root: Path, host2: Path, tmp_path: Path) -> Iterator[Callable[..., Replicated]]:
    """``replicated(records, store=…, publisher={…}, follower={…}, **producer)``: the setup most tests share.
    The store is a directory store under tmp_path unless given; the follower is closed before the producer."""
    with contextlib.ExitStack() as stack:

        def make(
            records: int,
            *,
            store: blobs.BlobStore | None = None,
            publisher: dict[str, Any] | None = None,
            follower: dict[str, Any] | None = None,
            **producer: Any,
        ) -> Replicated:
            store = store if store is not None else blobs.DirStore(tmp_path / "store")
            p = stack.enter_context(movies_producer(root, **producer))
            pub = Publisher(store, p, **(publisher or {}))
            p.run_cycle(populate(movie(i) for i in range(records)))
            first = pub.publish()
            f = Follower(store, "movies", root=host2, work_dir=tmp_path / "f", **(follower or {}))
            stack.callback(f.close)
            f.poll()
            return Replicated(p, pub, f, store, first)

        yield make


def records_of(root: Path, version: int | None = None) -> dict[str, list[tuple[int, dict[str, Any]]]]:
    """Every record of every type, with its ordinal, from a version's files (the announced one by default)."""
    ns = root / "movies"
    v = version or layout.read_announcement(ns).version  # type: ignore[union-attr]
    state = StateFile(ns / str(v), namespace="movies")
    out = {}
    for name in state.type_names:
        view = state.type(name)
        holes = set(view.holes.tolist())
        out[name] = [(o, view.record_at(o).to_dict()) for o in range(view.size) if o not in holes]
    return out


def hash_of(root: Path, version: int) -> int:
    return content_hash(StateFile(root / "movies" / str(version), namespace="movies"))


def delta_key(store: blobs.BlobStore, version: int) -> str:
    got = store.get(header_key(version))
    assert got is not None
    return str(orjson.loads(got.data)["blobs"]["delta"]["key"])


def change(p: Any, i: int) -> int:
    def edit(d: Any) -> None:
        d.upsert("Movie", movie(i * 7 % 300, title=f"changed {i}"))
        d.upsert("Movie", movie(1000 + i))  # a new record
        d.remove("Movie", (i * 13) % 300)

    return int(p.run_incremental(edit))


def test_a_follower_replays_every_version_by_deltas(
    root: Path, host2: Path, store: blobs.BlobStore, tmp_path: Path
) -> None:
    with movies_producer(root) as p:
        pub = Publisher(store, p, snapshot_every=100)
        pub.claim()
        v = p.run_cycle(populate(movie(i) for i in range(300)))
        first = pub.publish()
        assert set(first.blobs) == {"snapshot"}  # nothing to be a delta of
        f = Follower(store, "movies", root=host2, work_dir=tmp_path / "f1")
        try:
            assert f.poll()
            assert f.here == v
            for i in range(1, 8):
                v = change(p, i)
                h = pub.publish()
                assert set(h.blobs) == {"delta", "reverse"}
                fetched = f.bytes_fetched
                assert f.poll()
                assert f.here == v
                assert f.bytes_fetched - fetched < first.blobs["snapshot"]["size"] / 5  # a delta, not the snapshot
                assert records_of(host2) == records_of(root)
                assert hash_of(host2, v) == hash_of(root, v) == h.content_hash
            assert not f.poll()  # nothing new: a conditional GET, nothing applied
            assert f.status().lag == 0
            assert f.status().there == v
        finally:
            f.close()
            pub.release()


def test_producer_and_follower_compact_at_different_moments(
    root: Path, host2: Path, replicated: Callable[..., Replicated]
) -> None:
    """The producer compacts every few versions (in the background), the follower never: the files differ,
    the records, ordinals and content hashes do not."""
    r = replicated(300, publisher={"snapshot_every": 1000}, compact_share=0.0, compact_min=3)
    p, pub, f = r.p, r.pub, r.f
    bases = set()
    for i in range(1, 25):
        v = change(p, i)
        h = pub.publish()
        assert h.content_hash == hash_of(root, v)  # O(changes) from the parent's, equal to the full sum
        bases.add(StateFile(root / "movies" / str(v), namespace="movies").base.version)  # type: ignore[union-attr]
        assert f.poll()
        assert f.here == v
        assert hash_of(host2, v) == hash_of(root, v)
        if i % 8 == 0 and p._compactor is not None:
            p._compactor.join()  # a compaction child may take longer than 24 quick cycles on a loaded machine
    assert len(bases) >= 2  # the producer compacted (in the background) and moved to a new base
    assert records_of(host2) == records_of(root)
    theirs = StateFile(host2 / "movies" / str(v), namespace="movies")
    assert theirs.base is not None
    assert theirs.base.version == 1


def test_versions_over_a_mid_replicate_by_delta_and_by_snapshot(
    root: Path,
    host2: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    replicated: Callable[..., Replicated],
) -> None:
    """The producer writes versions over a mid (docs/decisions.md §18); a follower replays them by
    deltas, and a fresh one starts from a snapshot of such a version (its mid uploaded with it)."""
    monkeypatch.setattr(overlay, "TOP_FROM", 1)
    monkeypatch.setattr(overlay, "TOP_MIN", 8)
    host3 = host2.with_name(host2.name + "-3")
    host3.mkdir()
    r = replicated(300, publisher={"snapshot_every": 4})
    p, pub, f, store = r.p, r.pub, r.f, r.store
    late = None
    try:
        mids, snapshot_mids = 0, 0
        for i in range(1, 14):
            v = change(p, i)
            h = pub.publish()
            mids += (root / "movies" / f"{v}.mid").exists()
            snapshot_mids += "mid" in h.blobs
            assert f.poll()
            assert f.here == v
            assert hash_of(host2, v) == hash_of(root, v) == h.content_hash
        assert records_of(host2) == records_of(root)
        assert mids >= 4  # the layouts this test is about did occur
        assert snapshot_mids >= 1
        start = read_header(store, read_header(store, v).snapshot_at)  # type: ignore[union-attr]
        assert start is not None
        assert "mid" in start.blobs  # the late one starts from a version over a mid
        late = Follower(store, "movies", root=host3, work_dir=tmp_path / "late")
        assert late.poll()
        assert late.here == v
        assert records_of(host3) == records_of(root)
    finally:
        if late is not None:
            late.close()
        shutil.rmtree(host3, ignore_errors=True)


def test_a_version_whose_content_hash_differs_is_refused(host2: Path, replicated: Callable[..., Replicated]) -> None:
    r = replicated(100)
    p, pub, f, store = r.p, r.pub, r.f, r.store
    good = f.here
    v = change(p, 1)
    pub.publish()
    h = store.get(header_key(v))
    assert h is not None
    ann = store.get("announced")
    assert ann is not None
    doc = orjson.loads(h.data)
    wrong = {**doc, "content_hash": doc["content_hash"] ^ 1}
    store.put(header_key(v), orjson.dumps(wrong))  # and the copy the announcement carries
    store.put("announced", orjson.dumps({**orjson.loads(ann.data), "header": wrong}))
    f._headers.clear()
    assert not f.poll()
    assert f.here == good
    assert "content hash" in (f.last_error or "")
    assert not (host2 / "movies" / str(v)).exists()  # removed, never announced
    store.put(header_key(v), h.data)  # mended: the next poll catches up
    store.put("announced", ann.data)
    f._headers.clear()
    assert f.poll()
    assert f.here == v
    assert f.last_error is None


def test_a_corrupt_delta_is_refused_and_a_missing_one_falls_back_to_a_snapshot(
    root: Path, host2: Path, replicated: Callable[..., Replicated]
) -> None:
    r = replicated(100, publisher={"snapshot_every": 3})
    p, pub, f, store = r.p, r.pub, r.f, r.store
    v = change(p, 1)
    pub.publish()
    blob = store.get(delta_key(store, v))
    assert blob is not None
    store.put(delta_key(store, v), blob.data[: len(blob.data) // 2])  # truncated
    assert not f.poll()
    assert f.here == 1
    assert "truncated" in (f.last_error or "") or "damaged" in (f.last_error or "")
    store.put(delta_key(store, v), blob.data)
    assert f.poll()
    assert f.here == v
    for i in range(2, 6):
        v = change(p, i)
        pub.publish()
    snapshots = [x for x in range(2, v + 1) if "snapshot" in f._header(x).blobs]  # type: ignore[union-attr]
    assert snapshots == [4]  # every third version
    store.delete(delta_key(store, 3))
    assert f.poll()
    assert f.here == v
    assert records_of(host2) == records_of(root)
    change(p, 7)
    pub.publish()
    v = change(p, 8)
    pub.publish()
    store.delete(delta_key(store, v))  # no snapshot after it: the follower gets as far as it can, and says why
    assert f.poll()
    assert f.here == v - 1
    assert "missing" in (f.last_error or "")
    assert records_of(host2) == records_of(root, v - 1)


def test_a_second_producer_is_refused(root: Path, host2: Path, tmp_path: Path) -> None:
    store = blobs.DirStore(tmp_path / "store")
    with movies_producer(root) as p, movies_producer(host2) as q:
        a = Publisher(store, p, owner="host-a")
        a.claim()
        b = Publisher(store, q, owner="host-b")
        with pytest.raises(ProducerLockedError, match="host-a"):
            b.claim()
        p.run_cycle(populate(movie(i) for i in range(10)))
        a.publish()
        store.delete("lease")  # an operator removes the lease of a producer that is still running
        q.run_cycle(populate(movie(i) for i in range(20)))
        b.claim()
        with pytest.raises(ProducerLockedError, match="does not have"):
            b.publish()  # a's announcement is there; b never read it: refused, not merged
        change(p, 1)
        with pytest.raises(ProducerLockedError, match="taken over"):
            a.publish()


def test_a_fresh_producer_host_restores_and_continues_the_chain(root: Path, host2: Path, tmp_path: Path) -> None:
    store = blobs.DirStore(tmp_path / "store")
    with movies_producer(root) as p:
        pub = Publisher(store, p)
        pub.claim()
        p.run_cycle(populate(movie(i) for i in range(100)))
        pub.publish()
        v = change(p, 1)
        pub.publish()
        pub.release()
    new_root = host2
    with movies_producer(new_root) as q:
        assert restore(q, store, tmp_path / "work") == v
        assert records_of(new_root) == records_of(root)
        pub = Publisher(store, q)
        pub.claim()
        w = change(q, 2)
        h = pub.publish()
        assert w == v + 1
        assert h.parent == v
        assert "delta" in h.blobs
        pub.release()


def until_writable(store: blobs.BlobStore, timeout: float = 60) -> None:
    """Wait until *store* takes a write. A restarted SeaweedFS answers ``/status`` (what Seaweed.start waits
    for) before it takes writes; the test's 1 s read timeout then failed the first PUT on a loaded machine."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            store.put("probe", b"")
            store.delete("probe")
            return
        except blobs.StoreUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_the_store_unreachable_followers_keep_serving_and_catch_up(root: Path, host2: Path, tmp_path: Path) -> None:
    """A server of its own, which the test stops and starts again."""
    server = Seaweed(tmp_path / "weed")
    env = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        # Patient while the server is up (a loaded machine can be slow to answer), and
        # quick to give up while it is down, which is what the test is about.
        s3 = blobs.S3Store("hollow-down", "ns", retries=4, backoff=0.05, timeout=1)
        s3.create_bucket()
        fs3 = blobs.S3Store("hollow-down", "ns", retries=4, backoff=0.05, timeout=1)
        with movies_producer(root) as p:
            pub = Publisher(s3, p)
            p.run_cycle(populate(movie(i) for i in range(50)))
            pub.publish()
            f = Follower(fs3, "movies", root=host2, work_dir=tmp_path / "f")
            try:
                assert f.poll()
                server.stop()
                s3.retries = fs3.retries = 1
                v = change(p, 1)  # published here; the store is down
                with pytest.raises(blobs.StoreUnavailableError, match=r"s3://hollow-down/ns.*AWS_ENDPOINT_URL"):
                    pub.publish()
                assert not f.poll()
                assert f.here == 1
                assert f.status().failures == 1
                assert "failed after 2 attempts" in (f.status().last_error or "")
                assert records_of(host2)["Movie"]  # still served
                server.start()
                s3.retries = fs3.retries = 4
                until_writable(s3)
                pub.publish()
                assert f.poll()
                assert f.here == v
                assert f.last_error is None
            finally:
                f.close()
        s3.close()
        fs3.close()
    finally:
        server.stop()
        for k, val in env.items():
            if val is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = val


def test_a_pin_in_the_store_moves_every_follower_and_a_local_pin_overrides_it(
    replicated: Callable[..., Replicated],
) -> None:
    r = replicated(50)
    p, pub, f = r.p, r.pub, r.f
    for _ in range(2):
        v2 = v3 = change(p, len(p.versions()))
        pub.publish()
        assert f.poll()
    v2 = v3 - 1
    p.pin(v2)
    pub.publish()  # the producer's pin goes to the store
    assert f.poll()
    assert f.here == v2
    assert f.status().pinned
    p.unpin()
    pub.publish()
    assert f.poll()
    assert f.here == v3
    f.pin(v2)  # this host only
    v4 = change(p, 3)
    pub.publish()
    assert not f.poll()
    assert f.here == v2
    f.pin(None)
    assert f.here == v4
    with pytest.raises(ReplicationError, match="not on this host"):
        f.pin(999)


def test_a_follower_far_behind_jumps_by_snapshot_when_that_moves_fewer_bytes(
    root: Path, host2: Path, replicated: Callable[..., Replicated]
) -> None:
    r = replicated(100, publisher={"snapshot_every": 4})
    p, pub, f = r.p, r.pub, r.f
    v = 1
    for n in range(12):  # each version rewrites a third of the records
        v = p.run_incremental(lambda d, n=n: [d.upsert("Movie", movie(i, title=f"{n}")) for i in range(0, 100, 3)])
        pub.publish()
    near = f.plan(v - 1, v)
    assert [s.kind for s in near] == ["delta"]  # one behind: the delta
    far = f.plan(1, v)
    assert far[0].kind == "snapshot"
    assert far[0].header.version > 1  # the nearest snapshot, then its deltas
    assert all(s.kind == "delta" for s in far[1:])
    moved = sum(
        s.header.bytes_for("snapshot", "base") if s.kind == "snapshot" else s.header.bytes_for("delta") for s in far
    )
    chain = sum(f._header(x).bytes_for("delta") for x in range(2, v + 1))  # type: ignore[union-attr]
    assert moved < chain
    assert f.poll()
    assert f.here == v
    assert records_of(host2) == records_of(root)


def test_hollow_history_lists_the_versions_in_the_store(root: Path, tmp_path: Path) -> None:
    store = blobs.DirStore(tmp_path / "store")
    with movies_producer(root) as p:
        pub = Publisher(store, p)
        p.run_cycle(populate(movie(i) for i in range(20)))
        pub.publish()
        v = change(p, 1)
        pub.publish()
    out = run("hollowd.cli", "--json", "history", "movies", "--store", str(tmp_path / "store"))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [d["version"] for d in doc] == [1, v]
    assert doc[-1]["announced"]
    assert set(doc[0]["blobs"]) == {"snapshot"}
    assert set(doc[1]["blobs"]) == {"delta", "reverse"}


class CountingStore(blobs.DirStore):
    """A directory store that counts what a follower asks of it (to show a plan's cost)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gets: list[str] = []
        self.lists = 0

    def get(self, key: str) -> Any:
        self.gets.append(key)
        return super().get(key)

    def list(self, prefix: str = "") -> Any:
        self.lists += 1
        return super().list(prefix)


@pytest.mark.parametrize("over_a_mid", [False, True], ids=["over-the-base", "over-a-mid"])
def test_a_pin_to_a_version_gone_from_a_follower_goes_back_by_reverse_deltas(
    root: Path,
    host2: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    replicated: Callable[..., Replicated],
    over_a_mid: bool,
) -> None:
    """Every version has a reverse delta; a follower that no longer has the pinned version walks back to it
    from its latest by them (no snapshot, no LIST, O(distance) GETs), with every record at the producer's
    ordinal and the producer's content hash, and goes on forward when the pin goes. *over_a_mid*: the
    producer and the follower write versions over a mid (docs/decisions.md §18) from tiny overlays on."""
    if over_a_mid:
        monkeypatch.setattr(overlay, "TOP_FROM", 1)
        monkeypatch.setattr(overlay, "TOP_MIN", 8)
    store = CountingStore(tmp_path / "store")
    r = replicated(300, store=store, publisher={"snapshot_every": 1000}, follower={"retain": 2}, retain=50)
    p, pub, f, first = r.p, r.pub, r.f, r.first
    versions = []
    for i in range(1, 9):  # removals free ordinals that new records then take, removed keys come back
        versions.append(change(p, i))
        if i >= 3:  # at another ordinal: going back, the key moves
            h = pub.publish()
            assert set(h.blobs) == {"delta", "reverse"}
            versions.append(
                p.run_incremental(lambda d, i=i: d.upsert("Movie", movie((i - 2) * 13 % 300, title="back")))
            )
        h = pub.publish()
        assert set(h.blobs) == {"delta", "reverse"}
        assert f.poll()
    target = versions[0]
    old = {r["id"]: o for o, r in records_of(root, target)["Movie"]}
    now = {r["id"]: o for o, r in records_of(root, versions[-1])["Movie"]}
    assert old[26] != now[26]
    assert not (host2 / "movies" / str(target)).exists()  # reclaimed here (retain=2)
    p.pin(target)
    pub.publish()
    store.gets.clear()
    fetched = f.bytes_fetched
    assert f.poll()
    assert f.here == target
    assert f.status().pinned
    assert store.lists == 0
    assert not [k for k in store.gets if k.startswith(("snapshots/", "bases/", "deltas/"))]
    assert len([k for k in store.gets if k.startswith("reverses/")]) == len(versions) - 1
    assert f.bytes_fetched - fetched < first.blobs["snapshot"]["size"]
    assert records_of(host2, target) == records_of(root, target)
    assert hash_of(host2, target) == hash_of(root, target)
    p.unpin()
    pub.publish()
    assert f.poll()
    assert f.here == versions[-1]
    v = change(p, 20)
    pub.publish()
    assert f.poll()
    assert f.here == v
    assert records_of(host2) == records_of(root)


def test_a_damaged_reverse_delta_is_refused_and_the_pinned_version_comes_by_snapshot(
    root: Path, host2: Path, caplog: pytest.LogCaptureFixture, replicated: Callable[..., Replicated]
) -> None:
    r = replicated(300, publisher={"snapshot_every": 2}, follower={"retain": 1}, retain=50)
    p, pub, f, store = r.p, r.pub, r.f, r.store
    for i in range(1, 6):
        change(p, i)
        pub.publish()
        f.poll()
    target = 3
    assert "snapshot" in orjson.loads(store.get(header_key(target)).data)["blobs"]  # type: ignore[union-attr]
    for v in (4, 5):  # both on the way back; one damaged
        assert "reverse" in orjson.loads(store.get(header_key(v)).data)["blobs"]  # type: ignore[union-attr]
    key = orjson.loads(store.get(header_key(4)).data)["blobs"]["reverse"]["key"]  # type: ignore[union-attr]
    blob = bytearray(store.get(key).data)  # type: ignore[union-attr]
    blob[-3] ^= 0xFF
    store.put(key, bytes(blob))
    p.pin(target)
    pub.publish()
    assert f.poll()  # the reverse delta is refused by its checksum: the snapshot instead
    assert "event=follow-fallback" in caplog.text
    assert "reverses/4-" in caplog.text
    assert f.here == target
    assert records_of(host2, target) == records_of(root, target)


def test_store_retention_deletes_old_versions_but_never_what_a_follower_needs(
    root: Path, host2: Path, tmp_path: Path, s3_url: str
) -> None:
    """Against SeaweedFS: with store_retain=4 and a snapshot every 3 versions, the store stays bounded as
    versions go on, keeps the newest snapshot at or before every kept version and the chain from it, and
    the store's pin to an old version with what leads to it; fresh and far-behind followers still get
    there."""
    store = blobs.open_store(s3_url)
    with movies_producer(root, retain=50) as p:
        pub = Publisher(store, p, snapshot_every=3, store_retain=4)
        p.run_cycle(populate(movie(i) for i in range(100)))
        pub.publish()
        behind = Follower(store, "movies", root=host2, work_dir=tmp_path / "behind")
        try:
            behind.poll()  # at version 1, then left behind
            sizes = []
            for i in range(1, 25):
                change(p, i)
                pub.publish()
                sizes.append(len(store.list("")))
            latest = p.versions()[-1]
            keys = store.list("")
            versions = {replication.version_of_key(k) for k in keys if not k.startswith("bases/")} - {None}
            assert min(versions) >= latest - 4 - 3  # the window, back to the snapshot before it at most
            assert max(sizes[12:]) <= max(sizes[:12])  # bounded: it stopped growing
            oldest_kept = min(v for v in versions if (header_key(v)) in keys)
            top = replication.read_header(store, latest - 3)
            assert top is not None
            assert top.snapshot_at in versions  # the snapshot a follower of the oldest kept version needs
            assert oldest_kept <= top.snapshot_at
            first = [k for k in keys if replication.version_of_key(k) == 1]
            assert [k.split("/")[0] for k in first] == ["bases"]  # the first version's base stays: snapshots use it
            assert behind.poll()  # far behind a deleted chain: by the snapshot
            assert behind.here == latest
            assert records_of(host2) == records_of(root)

            pinned = latest - 2
            p.pin(pinned)
            pub.publish()
            for i in range(30, 40):  # the store moves on past the window; the pin stays reachable
                change(p, i)
                pub.publish(pinned, pinned=True)
            keys = store.list("")
            assert header_key(pinned) in keys
            snap = replication.read_header(store, pinned)
            assert snap is not None
            for v in range(snap.snapshot_at, pinned + 1):
                assert header_key(v) in keys
            fresh_root = Path("/dev/shm") / f"hollow-test-fr{uuid.uuid4().hex[:8]}"
            fresh_root.mkdir()
            fresh = Follower(store, "movies", root=fresh_root, work_dir=tmp_path / "fresh")
            try:
                assert fresh.poll()
                assert fresh.here == pinned
                assert records_of(fresh_root, pinned) == records_of(root, pinned)
            finally:
                fresh.close()
                shutil.rmtree(fresh_root, ignore_errors=True)
        finally:
            behind.close()
            store.close()


def test_a_follower_one_version_behind_makes_two_requests_the_announcement_and_the_delta(
    root: Path, host2: Path, tmp_path: Path, replicated: Callable[..., Replicated]
) -> None:
    """The announcement carries its version's header: one version behind, a look at the store is the
    announcement's GET and the delta's, no header GET (issue 11.5: one round trip fewer per version)."""
    store = CountingStore(tmp_path / "store")
    r = replicated(50, store=store)
    p, pub, f = r.p, r.pub, r.f
    for i in range(1, 4):
        v = change(p, i)
        pub.publish()
        store.gets.clear()
        assert f.poll()
        assert f.here == v
        assert [k.split("/")[0] for k in store.gets] == ["announced", "deltas"]
    assert records_of(host2) == records_of(root)

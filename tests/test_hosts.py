"""Many hosts: a producing daemon and two following daemons, each in its own mount namespace with a private
tmpfs as its shared-memory root and its own state directory, connected by nothing but a real S3 server."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hollow import layout
from hollowd import control
from tests.daemons import Daemon, wait_until, write_jsonl
from tests.helpers import SCHEMAS, movie, run_python
from tests.seaweed import Seaweed

PRODUCER = """\
[daemon]
root = "{root}"
state_dir = "{state}"
control_socket = "{state}/control.sock"

[namespaces.movies]
schema = "{schema}"
source = "{source}"
type = "Movie"
debounce = 0.1
publish_to = "{store}"
snapshot_every = 4

[namespaces.movies.types.Movie]
primary_key = "id"
indexes = ["genre"]

[namespaces.movies.types.Actor]
primary_key = "id"

[namespaces.movies.types.Role]
primary_key = ["movieId", "actorId"]
"""

FOLLOWER = """\
[daemon]
root = "{root}"
state_dir = "{state}"
control_socket = "{state}/control.sock"

[namespaces.movies]
follow = "{store}"
watch_interval = 0.2
"""


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    return done.returncode == 0


pytestmark = pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare(1) for a mount namespace per host")


class Host:
    """One "host": a daemon in a mount namespace of its own, its shared-memory root a private tmpfs."""

    def __init__(self, tmp: Path, name: str, config: str, env: dict[str, str], **fmt: str) -> None:
        self.dir = tmp / name
        self.root = self.dir / "shm"  # a private tmpfs inside the host's namespace; empty from outside
        self.state = self.dir / "state"
        self.root.mkdir(parents=True)
        self.state.mkdir()
        cfg = self.config = self.dir / "hollowd.toml"
        cfg.write_text(config.format(root=self.root, state=self.state, **fmt))
        self.env = env
        self.start()

    def start(self) -> None:
        """Start the host's daemon (again): a new mount namespace, so an empty tmpfs, as after a reboot."""
        wrapper = ("unshare", "-m", "--propagation", "private", "sh", "-c",
                   'mount -t tmpfs -o size=256m tmpfs "$0" && exec "$@"', str(self.root))  # fmt: skip
        self.daemon = Daemon(self.config, self.dir, self.env, wrapper=wrapper)
        self.stopped: int | None = None

    def stop(self, sig: int = 15) -> int:
        if self.stopped is None:
            self.stopped = self.daemon.stop(sig)
        return self.stopped

    def status(self) -> dict[str, Any]:
        """What the host's daemon says of the namespace, over its control socket."""
        answer = control.call(self.state / "control.sock", {"command": "status", "namespace": "movies"}, timeout=10)
        return dict(answer["namespaces"]["movies"])

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`hollow ARGS` inside the host's mount namespace, where its shared-memory root is."""
        return subprocess.run(
            ["nsenter", "-t", str(self.daemon.proc.pid), "-m", sys.executable, "-m", "hollowd.cli", "--root",
             str(self.root), "--socket", str(self.state / "control.sock"), *args],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip

    def announced(self) -> int:
        return int(self.status().get("announced") or 0)

    def get(self, key: int) -> Any:
        """`hollow get` run inside the host's mount namespace, where its /dev/shm root is."""
        out = self.cli("--json", "get", "movies", "Movie", str(key))
        return json.loads(out.stdout)["record"] if out.returncode == 0 else None


@pytest.fixture
def hosts(tmp_path: Path, seaweed: Seaweed, s3_url: str) -> Iterator[tuple[Path, list[Host]]]:
    env = seaweed.env()
    source = tmp_path / "movies.jsonl"
    write_jsonl(source, [movie(i) for i in range(200)])
    schema = str(SCHEMAS / "movies.capnp")
    made: list[Host] = []
    try:
        made.append(Host(tmp_path, "a", PRODUCER, env, schema=schema, source=str(source), store=s3_url))
        made[0].daemon.notifications("READY=1")
        for name in ("b", "c"):
            made.append(Host(tmp_path, name, FOLLOWER, env, store=s3_url))
        for h in made[1:]:
            h.daemon.notifications("READY=1")
        yield source, made
    finally:
        for h in made:
            h.stop()


def test_followers_on_other_hosts_serve_each_new_version(hosts: tuple[Path, list[Host]]) -> None:
    source, (a, b, c) = hosts
    first = a.announced()
    assert first >= 1
    for h in (b, c):
        wait_until(lambda h=h: h.announced() == first)
        assert h.get(7)["title"] == "Movie 7"
        assert not any(h.root.iterdir())  # from outside the host's namespace its tmpfs is not there
    for n in range(1, 4):
        write_jsonl(source, [movie(i, title=f"v{n} {i}") if i < 5 else movie(i) for i in range(200)])
        wait_until(lambda n=n: a.announced() > first + n - 1)
        v = a.announced()
        for h in (b, c):
            wait_until(lambda h=h, v=v: h.announced() == v)
            assert h.get(3)["title"] == f"v{n} 3"
    st = b.status()
    assert st["follows"].startswith("s3://")
    assert st["lag"] == 0
    assert st["store_version"] == v
    assert st["blobs_applied"] >= 4
    assert st["failures"] == 0
    human = b.cli("status", "movies")
    assert human.returncode == 0, human.stderr
    assert f"the store is at {v}, this host at {v}, lag 0" in human.stdout


def test_a_follower_killed_restarts_cleanly_and_a_fresh_producer_host_continues_the_chain(
    hosts: tuple[Path, list[Host]], tmp_path: Path, seaweed: Seaweed, s3_url: str
) -> None:
    source, (a, b, c) = hosts
    v = a.announced()
    wait_until(lambda: b.announced() == v)
    b.stop(9)  # killed: its tmpfs goes with its namespace; its state directory stays
    a.stop()
    env = seaweed.env()
    schema = str(SCHEMAS / "movies.capnp")
    fresh = Host(tmp_path, "a2", PRODUCER, env, schema=schema, source=str(source), store=s3_url)
    try:
        fresh.daemon.notifications("READY=1")
        assert fresh.announced() == v  # restored from the store: the same data, no new version
        write_jsonl(source, [movie(i, title="after") if i == 9 else movie(i) for i in range(200)])
        wait_until(lambda: fresh.announced() == v + 1)
        wait_until(lambda: c.announced() == v + 1)  # the chain went on: c follows by a delta
        assert c.get(9)["title"] == "after"
        assert c.status()["failures"] == 0
        b.start()  # the killed follower, on its own state directory, with an empty tmpfs
        b.daemon.notifications("READY=1")
        wait_until(lambda: b.announced() == v + 1)
        assert b.get(9)["title"] == "after"
    finally:
        fresh.stop()


def test_a_local_pin_on_a_follower_host_overrides_the_store_and_survives_a_restart(
    hosts: tuple[Path, list[Host]],
) -> None:
    """`hollow pin` on a follower host keeps that host on its version while the store moves on, across a
    restart of its daemon with an empty tmpfs (a reboot: the pinned version comes from the store again);
    `hollow unpin` follows the store again. The other follower is not pinned."""
    source, (a, b, c) = hosts
    v = a.announced()
    wait_until(lambda: b.announced() == v)
    pinned = b.cli("pin", "movies", str(v))
    assert pinned.returncode == 0, pinned.stderr
    write_jsonl(source, [movie(i, title="moved on") if i == 4 else movie(i) for i in range(200)])
    wait_until(lambda: c.announced() == v + 1)  # the store moved; c follows it
    assert b.announced() == v
    b.stop()
    b.start()  # a new mount namespace: an empty tmpfs, as after a reboot
    b.daemon.notifications("READY=1")
    wait_until(lambda: b.announced() == v)
    assert b.status()["local_pin"] == v
    assert b.get(4)["title"] == "Movie 4"
    write_jsonl(source, [movie(i, title="and on") if i == 4 else movie(i) for i in range(200)])
    wait_until(lambda: c.announced() == v + 2)
    assert b.announced() == v
    unpinned = b.cli("unpin", "movies")
    assert unpinned.returncode == 0, unpinned.stderr
    wait_until(lambda: b.announced() == v + 2)
    assert b.get(4)["title"] == "and on"
    assert b.status()["local_pin"] is None


def _lock_waiters(lock: Path) -> set[int]:
    """PIDs blocked waiting for a flock on *lock* (/proc/locks: the "->" lines of its inode)."""
    ino = lock.stat().st_ino
    out = set()
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if len(parts) > 6 and parts[1] == "->" and parts[6].rsplit(":", 1)[-1] == str(ino):
            out.add(int(parts[5]))
    return out


@pytest.fixture
def dir_hosts(tmp_path: Path) -> Iterator[tuple[Path, Path, list[Host]]]:
    """A producer host and a follower host, connected by a directory store (its writes can be held)."""
    store = tmp_path / "store"
    source = tmp_path / "movies.jsonl"
    write_jsonl(source, [movie(i) for i in range(200)])
    schema = str(SCHEMAS / "movies.capnp")
    made: list[Host] = []
    try:
        made.append(Host(tmp_path, "a", PRODUCER, {}, schema=schema, source=str(source), store=str(store)))
        made[0].daemon.notifications("READY=1")
        made.append(Host(tmp_path, "b", FOLLOWER, {}, store=str(store)))
        made[1].daemon.notifications("READY=1")
        yield source, store, made
    finally:
        for h in made:
            h.stop()


def _kill_between_blobs_and_announcement(a: Host, b: Host, source: Path, store: Path, title: str) -> int:
    """Change the source and SIGKILL the producer host *a* exactly after the new version's blobs are in the
    store and before its header (held on the store's lock, seen in /proc/locks); returns the version
    announced before, which *b* serves."""
    v = a.announced()
    wait_until(lambda: b.announced() == v)
    lock = store / ".lock"
    producer = a.daemon.proc.pid
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the producer's next conditional write (the lease's renewal) waits
        write_jsonl(source, [movie(i, title=title) if i == 5 else movie(i) for i in range(200)])
        wait_until(lambda: producer in _lock_waiters(lock))
        here = subprocess.run(  # its control socket waits on the cycle: read its tmpfs from inside
            ["nsenter", "-t", str(producer), "-m", "cat", str(a.root / "movies" / "announce" / "announced")],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert json.loads(here.stdout)["version"] == v + 1  # announced on its own host, not yet in the store
        lease = (store / "lease").read_bytes()
        fcntl.flock(fd, fcntl.LOCK_UN)  # let the renewal through...
        while (store / "lease").read_bytes() == lease:
            pass  # (its blobs take milliseconds more: encoding, compressing, an fsync each)
        os.kill(producer, signal.SIGSTOP)  # ...and hold the next one, the header's, after the blobs
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # stopped inside the renewal's lock: let it out
                os.kill(producer, signal.SIGCONT)
                os.kill(producer, signal.SIGSTOP)
        os.kill(producer, signal.SIGCONT)
        wait_until(lambda: producer in _lock_waiters(lock))
        assert [p.name for p in (store / "deltas").glob(f"{v + 1}-*")]  # its blobs are there
        assert not (store / "headers" / str(v + 1)).exists()
        a.stop(signal.SIGKILL)
    finally:
        os.close(fd)
    return v


def test_a_producer_killed_between_its_blobs_and_its_announcement_leaves_nothing_half_visible(
    dir_hosts: tuple[Path, Path, list[Host]],
) -> None:
    """SIGKILL exactly after a version's blobs are in the store and before its header and announcement (the
    producer is held on the store's lock, seen from outside in /proc/locks): the follower stays on the
    announced version, whole; the producer, started again (after a reboot: an empty tmpfs), takes its own
    lease back at once, announces that version without uploading it again, and the chain goes on."""
    source, store, (a, b) = dir_hosts
    v = _kill_between_blobs_and_announcement(a, b, source, store, "half")
    ann = json.loads((store / "announced").read_bytes())
    assert ann["version"] == v
    contact = b.status()["last_contact"]
    wait_until(lambda: b.status()["last_contact"] > contact)  # the follower looked at the store since
    assert b.announced() == v
    assert b.get(5)["title"] == "Movie 5"
    assert b.status()["failures"] == 0
    a.start()  # its state directory kept, its tmpfs empty: the daemon and then the store give it back
    a.daemon.notifications("READY=1")
    wait_until(lambda: b.announced() == v + 1)
    assert b.get(5)["title"] == "half"
    write_jsonl(source, [movie(i, title="on") if i == 5 else movie(i) for i in range(200)])
    wait_until(lambda: b.announced() == v + 2)
    assert b.get(5)["title"] == "on"
    header = json.loads((store / "headers" / str(v + 2)).read_bytes())
    assert header["parent"] == v + 1
    assert "delta" in header["blobs"]


def test_a_follower_killed_mid_apply_restarts_cleanly_and_goes_on(tmp_path: Path, root: Path) -> None:
    """SIGKILL while the follower applies a version (its delta fetched, the version not yet announced: seen
    from outside through its status), then the same daemon again on the same root and state directory:
    it serves a whole version at once, leaves no debris, and catches up and goes on."""
    store = tmp_path / "store"
    source = tmp_path / "movies.jsonl"
    n = 20_000
    write_jsonl(source, [movie(i) for i in range(n)])
    a = Host(tmp_path, "a", PRODUCER, {}, schema=str(SCHEMAS / "movies.capnp"), source=str(source), store=str(store))
    b_dir = tmp_path / "b"
    b_dir.mkdir()
    (b_dir / "hollowd.toml").write_text(FOLLOWER.format(root=root, state=b_dir / "state", store=store))
    ns = root / "movies"

    def status() -> dict[str, Any]:
        answer = control.call(b_dir / "state" / "control.sock", {"command": "status", "namespace": "movies"})
        return dict(answer["namespaces"]["movies"])

    def here() -> int:
        current = layout.read_announcement(ns)
        return current.version if current else 0

    b = Daemon(b_dir / "hollowd.toml", b_dir)
    try:
        a.daemon.notifications("READY=1")
        b.notifications("READY=1")
        v = a.announced()
        wait_until(lambda: here() == v)
        fetched = status()["bytes_fetched"]
        write_jsonl(source, [movie(i, title="big") if i % 2 else movie(i) for i in range(n)])  # half of them
        wait_until(lambda: json.loads((store / "announced").read_bytes())["version"] == v + 1)
        wait_until(lambda: status()["bytes_fetched"] > fetched + 10_000 and here() == v, timeout=120)
        os.kill(b.proc.pid, signal.SIGSTOP)  # mid-apply: its delta is fetched, the version not announced
        assert here() == v
        assert b.stop(signal.SIGKILL) == -signal.SIGKILL
        b = Daemon(b_dir / "hollowd.toml", b_dir)  # the same root and state directory
        b.notifications("READY=1")
        first = here()
        assert first in (v, v + 1)
        got = run_python(READ_ALL, str(root), str(first))
        assert got["count"] == n
        assert got["titles"] == (["Movie 1", "Movie 3"] if first == v else ["big"])
        wait_until(lambda: here() == v + 1)
        write_jsonl(source, [movie(i, title="on") if i == 3 else movie(i) for i in range(n)])
        wait_until(lambda: here() == v + 2)
        assert run_python(READ_ALL, str(root), str(v + 2))["titles"] == ["Movie 1", "on"]
        assert status()["failures"] == 0
        assert not [p.name for p in ns.iterdir() if p.name.endswith(".tmp")]  # nothing of the killed apply
    finally:
        b.stop()
        a.stop()


READ_ALL = """
import json, sys
import hollow
with hollow.open("movies", root=sys.argv[1], follow=False) as ds, ds.attach(int(sys.argv[2])) as snap:
    movies = snap["Movie"]
    print(json.dumps({"count": len(movies), "titles": sorted({movies[i].title for i in (1, 3)})}))
"""


def test_after_a_producer_killed_before_announcing_a_fresh_producer_host_replaces_its_orphan(
    dir_hosts: tuple[Path, Path, list[Host]], tmp_path: Path
) -> None:
    """The killed producer left version v+1's blobs (and it could have left its header) unannounced; a
    producer on a fresh host (new state directory, empty tmpfs) restores v and publishes its own,
    different v+1: the orphan's header is replaced, not a reason to refuse, and the chain goes on."""
    source, store, (a, b) = dir_hosts
    v = _kill_between_blobs_and_announcement(a, b, source, store, "half")
    orphan = {"version": v + 1, "parent": v}  # what the killed producer would have written next: its header
    killed = json.loads((store / "headers" / str(v)).read_bytes())
    (store / "headers" / str(v + 1)).write_bytes(
        json.dumps({**killed, **orphan, "content_hash": 12345, "blobs": {}}).encode()
    )
    (store / "lease").unlink()  # the operator's way past the dead producer's lease (its error says so)
    write_jsonl(source, [movie(i, title="other") if i == 5 else movie(i) for i in range(200)])
    fresh = Host(tmp_path, "a2", PRODUCER, {}, schema=str(SCHEMAS / "movies.capnp"), source=str(source),
                 store=str(store))  # fmt: skip
    try:
        fresh.daemon.notifications("READY=1")
        wait_until(lambda: b.announced() == v + 1)
        assert b.get(5)["title"] == "other"
        assert json.loads((store / "headers" / str(v + 1)).read_bytes())["content_hash"] != 12345
        write_jsonl(source, [movie(i, title="on") if i == 5 else movie(i) for i in range(200)])
        wait_until(lambda: b.announced() == v + 2)
        assert b.status()["failures"] == 0
    finally:
        fresh.stop()

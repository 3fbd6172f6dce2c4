"""Following processes: every announced version in order or skipping ahead, never back.

Real reader processes (``python -c``) speak JSON lines on stdout; the producer
runs in the test process. :class:`Child`, :data:`FOLLOWER` and :func:`version_data`
are shared with test_pins.py and test_status.py.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import posix_ipc
import pytest

import hollow
from hollow import doorbell
from tests.helpers import ROOT, movie, movies_producer
from tests.hostile import User

SHM = Path("/dev/shm")
TIMEOUT = 60.0  # generous: the machine is shared and noisy; never a measure of speed


def version_data(n: int, count: int = 50) -> Callable[[Any], None]:
    """Cycle *n*'s data: every type says which version it belongs to (Movie 0 "v<n>", Actor 0 "a<n>")."""

    def fill(state: Any) -> None:
        for i in range(count):
            state.add("Movie", movie(i, title=f"v{n}" if i == 0 else f"Movie {i} of v{n}"))
            state.add("Actor", {"id": i, "name": f"a{n}"})
            state.add("Role", {"movieId": i, "actorId": i, "character": f"r{n}"})

    return fill


class Child:
    """A ``python -c`` subprocess that prints one JSON object per line.

    Lines written to it are commands; closing its stdin asks it to finish. It
    runs in a session of its own so that :meth:`stop` also kills anything it
    forked.
    """

    def __init__(self, code: str, *args: object, env: dict[str, str] | None = None) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *map(str, args)],
            cwd=ROOT,
            env=None if env is None else {**os.environ, **env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,
        )
        self._buf = b""
        self._eof = False
        self.events: list[dict[str, Any]] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def _next(self, timeout: float) -> dict[str, Any] | None:
        """The next event; None if none came within *timeout* or the child closed its stdout."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            if self._eof:
                return None
            left = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if not ready:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                self._eof = True
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        event: dict[str, Any] = json.loads(line)
        self.events.append(event)
        return event

    def expect(self, event: str, timeout: float = TIMEOUT, **fields: Any) -> dict[str, Any]:
        """Read events until one named *event* whose *fields* match; fail on timeout or exit."""
        deadline = time.monotonic() + timeout
        while True:
            got = self._next(max(0.0, deadline - time.monotonic()))
            if got is None:
                state = "exited" if self._eof else "timed out"
                raise AssertionError(
                    f"child {self.pid} {state} waiting for {event} {fields}; "
                    f"events {self.events[-10:]}\nstderr:\n{self.stderr()}"
                )
            if got["event"] == "error":
                raise AssertionError(f"child {self.pid} reported {got}\nstderr:\n{self.stderr()}")
            if got["event"] == event and all(got.get(k) == v for k, v in fields.items()):
                return got

    def finish(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """Close stdin, wait for the child's ``end`` event and a clean exit; return that event."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        end = self.expect("end", timeout)
        rc = self.proc.wait(timeout)
        assert rc == 0, f"child {self.pid} exited with {rc}\nstderr:\n{self.stderr()}"
        return end

    def stop(self) -> None:
        """Kill the child (and what it forked) unless it exited; release the pipes."""
        if self.proc.poll() is None:  # not reaped: its PID is still its session's id
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(TIMEOUT)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        self._stderr.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# A following reader. argv: root, poll interval, "exhaust" to use up inotify instances first.
# Events: exhausted, ready, update (on_update), snapshot (a new version seen by snapshot()),
# log (hollow's warnings), ack (after a command), end (every version seen, with times).
# Commands on stdin: "pin V", "unpin", "wait V", "close", "ping"; EOF ends it.
FOLLOWER = r"""
import json, logging, os, queue, sys, threading, time
import hollow

root, poll, mode = sys.argv[1], float(sys.argv[2]), sys.argv[3]
out = threading.Lock()

def say(event, **kw):
    kw.update(event=event, t=time.monotonic())
    with out:
        os.write(1, (json.dumps(kw) + "\n").encode())

class Relay(logging.Handler):
    def emit(self, record):
        say("log", level=record.levelname, message=record.getMessage())

logging.getLogger("hollow").addHandler(Relay(logging.WARNING))

inotify_fds = []
if mode == "exhaust":
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    err = 0
    while len(inotify_fds) < 100_000:
        fd = libc.inotify_init1(os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            break
        inotify_fds.append(fd)
    say("exhausted", count=len(inotify_fds), errno=err)

commands = queue.Queue()
def read_commands():
    for line in sys.stdin:
        commands.put(line.split())
    commands.put(None)
threading.Thread(target=read_commands, daemon=True).start()

ds = hollow.open("movies", root=root, poll_interval=poll)
updates, snapshots, bad = [], [], []

def on_update(v):
    updates.append([v, time.monotonic()])
    say("update", version=v)

ds.on_update(on_update)
closed = False

def look():
    with ds.snapshot() as snap:
        v = snap.version
        got = [snap["Movie"][0].title, snap["Actor"][0].name, snap["Role"][(0, 0)].character]
    if got != [f"v{v}", f"a{v}", f"r{v}"]:
        bad.append([v, got])
    if not snapshots or snapshots[-1][0] != v:
        snapshots.append([v, time.monotonic()])
        say("snapshot", version=v)

ds.wait_following(60)  # its doorbell and watch are made by the follower thread, after open returned
say("ready", pid=os.getpid(), version=ds.version)
while True:
    if not closed:
        look()
    try:
        cmd = commands.get(timeout=0.005)
    except queue.Empty:
        continue
    if cmd is None:
        break
    op, args = cmd[0], [int(a) for a in cmd[1:]]
    try:
        ok = True
        if op == "pin":
            ds.pin(args[0])
        elif op == "unpin":
            ds.unpin()
        elif op == "wait":
            ok = ds.wait_for(args[0], timeout=60)
        elif op == "close":
            ds.close()
            closed = True
        if not closed:
            look()
        say("ack", op=op, ok=ok, version=None if closed else ds.version, pinned=None if closed else ds.pinned)
    except Exception as e:
        say("ack", op=op, ok=False, error=f"{type(e).__name__}: {e}")
if not closed:
    look()
    ds.close()
say("end", updates=updates, snapshots=snapshots, bad=bad)
"""


def follower(root: Path, *, poll: float = 5.0, mode: str = "plain", user: Any = None) -> Child:
    """A FOLLOWER process; as *user* (a ``tests.hostile.User``) when given."""
    if user is not None:
        return Child(user.code(FOLLOWER), root, poll, mode, env=user.env())
    return Child(FOLLOWER, root, poll, mode)


def doorbells(root: Path, pid: int | None = None) -> list[Path]:
    """The semaphore files of followers of movies under *root* (of one *pid* if given)."""
    start = "sem." + doorbell.prefix(root, "movies") + (f"{pid}." if pid is not None else "")
    return sorted(p for p in SHM.iterdir() if p.name.startswith(start))


def strictly_increasing(seq: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(seq))


def dead_pid() -> int:
    """The PID of a process that has exited (reaped; reuse within a test is unlikely)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(TIMEOUT)
    return proc.pid


# -- every version, in order --------------------------------------------------


def test_followers_see_versions_in_order_with_matching_data(root: Path) -> None:
    with movies_producer(root) as p, contextlib.ExitStack() as stack:
        assert p.run_cycle(version_data(1)) == 1
        kids = [stack.enter_context(follower(root, poll=5.0)) for _ in range(4)]
        for kid in kids:
            kid.expect("ready")
        # Lockstep first: every follower must report each of these versions through on_update.
        for n in range(2, 12):
            assert p.run_cycle(version_data(n)) == n
            for kid in kids:
                kid.expect("update", version=n)
        # Then a burst: followers may skip ahead, never go back.
        for n in range(12, 31):
            assert p.run_cycle(version_data(n)) == n
        for kid in kids:
            kid.expect("update", version=30)
        ends = [kid.finish() for kid in kids]
    for end in ends:
        updates = [v for v, _ in end["updates"]]
        snapshots = [v for v, _ in end["snapshots"]]
        assert updates[:10] == list(range(2, 12)), updates
        assert strictly_increasing(updates), updates
        assert strictly_increasing(snapshots), snapshots
        assert updates[-1] == 30
        assert snapshots[-1] == 30
        assert set(snapshots) <= set(range(1, 31))
        assert end["bad"] == [], "a snapshot's data did not match its version"


def test_reader_started_after_announcement_is_on_it_at_once(root: Path) -> None:
    # Hollow #273: a reader that opens after an announcement must not wait for the next one.
    # Then it opens over and over while the producer publishes: right after open, ds.version
    # is never older than the announcement read just before opening.
    code = r"""
import json, sys
from pathlib import Path
import hollow
from hollow import layout
root = sys.argv[1]
ns_dir = Path(root) / "movies"
with hollow.open("movies", root=root, poll_interval=3600) as ds:
    print(json.dumps({"event": "ready", "version": ds.version}), flush=True)
sys.stdin.readline()
seen = []
for _ in range(40):
    before = layout.read_announcement(ns_dir).version
    with hollow.open("movies", root=root, poll_interval=3600) as ds:
        seen.append([before, ds.version])
print(json.dumps({"event": "end", "seen": seen}), flush=True)
"""
    with movies_producer(root) as p:
        for n in (1, 2, 3):
            p.run_cycle(version_data(n))
        with Child(code, root) as kid:
            assert kid.expect("ready")["version"] == 3
            kid.send("go")
            n = 3
            while kid.proc.poll() is None and n < 300:
                n += 1
                p.run_cycle(version_data(n, count=5))
            end = kid.expect("end")
    assert len(end["seen"]) == 40
    for before, version in end["seen"]:
        assert version >= before


def test_held_snapshot_keeps_its_version_for_every_type(root: Path) -> None:
    code = r"""
import json, sys
import hollow
root = sys.argv[1]
def read(snap):
    return [snap.version, snap["Movie"][0].title, snap["Actor"][0].name, snap["Role"][(0, 0)].character,
            len(snap["Movie"]), 7 in snap["Movie"]]
with hollow.open("movies", root=root, poll_interval=3600) as ds:
    old = ds.snapshot()
    print(json.dumps({"event": "ready", "version": old.version}), flush=True)
    target = int(sys.stdin.readline())
    ok = ds.wait_for(target, timeout=60)
    with ds.snapshot() as new:
        out = {"event": "end", "ok": ok, "old": read(old), "new": read(new)}
    out["old_after"] = read(old)
    old.close()
print(json.dumps(out), flush=True)
"""
    with movies_producer(root) as p:
        v1 = p.run_cycle(version_data(1, count=10))
        with Child(code, root) as kid:
            kid.expect("ready", version=v1)
            v2 = p.run_cycle(version_data(2, count=7))  # the new version also drops records 7-9
            kid.send(str(v2))
            end = kid.expect("end")
    assert end["ok"] is True
    assert end["old"] == [v1, "v1", "a1", "r1", 10, True]
    assert end["new"] == [v2, "v2", "a2", "r2", 7, False]
    assert end["old_after"] == end["old"]


# -- when a path fails ----------------------------------------------------------


def _exhausted_or_skip(kid: Child) -> None:
    got = kid.expect("exhausted")
    if got["errno"] != errno.EMFILE or got["count"] >= 100_000:
        pytest.skip(f"could not exhaust inotify instances ({got['count']} made, errno {got['errno']})")


def test_without_inotify_a_follower_warns_and_follows_through_its_doorbell(root: Path, user: User) -> None:
    # As a user of its own: inotify instances are counted per user, so that root's other processes
    # (other tests, a daemon's watchdog) neither give the follower one back nor starve for one.
    with movies_producer(root, mode=0o644) as p:
        p.run_cycle(version_data(1))
        # A poll interval of an hour: only the doorbell can bring version 2 within the test.
        with follower(root, poll=3600, mode="exhaust", user=user) as kid:
            _exhausted_or_skip(kid)
            kid.expect("ready", version=1)
            # the follower thread sets up inotify after open returned (docs/decisions.md §21), before ready
            warnings = [e for e in kid.events if e["event"] == "log" and e["level"] == "WARNING"]
            assert any("inotify" in w["message"] for w in warnings), kid.events
            assert doorbells(root, kid.pid), "the follower has no doorbell"
            assert p.run_cycle(version_data(2)) == 2
            kid.send("wait 2")
            assert kid.expect("ack", op="wait")["ok"] is True
            end = kid.finish()
    assert [v for v, _ in end["updates"]] == [2]
    assert end["bad"] == []


@pytest.mark.parametrize("mode", ["plain", "exhaust"])
def test_follower_whose_doorbell_was_removed_still_follows(root: Path, mode: str, user: User) -> None:
    # systemd's RemoveIPC deletes sem.* files: inotify or, without it, the safety poll remains.
    # As a user of its own, for the inotify instances it uses up (see the test above).
    with movies_producer(root, mode=0o644) as p:
        p.run_cycle(version_data(1))
        with follower(root, poll=0.5, mode=mode, user=user) as kid:
            if mode == "exhaust":
                _exhausted_or_skip(kid)
            kid.expect("ready", version=1)
            bells = doorbells(root, kid.pid)
            assert len(bells) == 1
            bells[0].unlink()
            assert p.run_cycle(version_data(2)) == 2
            kid.send("wait 2")
            assert kid.expect("ack", op="wait")["ok"] is True
            assert p.run_cycle(version_data(3)) == 3
            kid.send("wait 3")
            assert kid.expect("ack", op="wait")["ok"] is True
            end = kid.finish()
    assert [v for v, _ in end["updates"]] == [2, 3]
    assert end["bad"] == []


def test_follower_recreates_a_removed_doorbell(root: Path) -> None:
    # docs/pitfalls.md 17: detect the missing semaphore and re-create it; otherwise announcements no
    # longer reach this process (it falls back to inotify or the poll) and status loses it.
    with movies_producer(root) as p:
        p.run_cycle(version_data(1))
        with follower(root, poll=0.5) as kid:
            kid.expect("ready", version=1)
            (bell,) = doorbells(root, kid.pid)
            bell.unlink()
            p.run_cycle(version_data(2))
            kid.expect("update", version=2)
            deadline = time.monotonic() + 30
            while not doorbells(root, kid.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert doorbells(root, kid.pid), "the follower never re-created its removed doorbell"
            assert kid.pid in hollow.status("movies", root=root).followers
            kid.finish()


_EXIT_WITHOUT_CLOSE = """
import atexit, sys, time
atexit.register(time.sleep, 0.3)  # runs after hollow's own exit handler: the follower's waits end meanwhile
import hollow
ds = hollow.open("movies", root=sys.argv[1], poll_interval=0.05)
time.sleep(float(sys.argv[2]))
print(ds.version)
"""


@pytest.mark.parametrize("after", [0.0, 0.3], ids=["during-the-followers-start-up", "while-it-waits"])
def test_a_process_that_exits_without_closing_its_dataset_exits_cleanly_and_leaves_no_doorbell(
    root: Path, after: float
) -> None:
    """At exit, doorbells lose their names but stay mapped: a follower thread's wait on one must not end
    on unmapped memory (it did: SIGSEGV, exit status 139), and no doorbell is made after that."""
    with movies_producer(root) as p:
        p.run_cycle(version_data(1))
    out = subprocess.run(
        [sys.executable, "-c", _EXIT_WITHOUT_CLOSE, str(root), str(after)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert (out.returncode, out.stdout.strip()) == (0, "1"), out.stderr
    assert doorbells(root) == []


# -- the producer's care of doorbells ------------------------------------------------


def test_announcement_removes_doorbell_of_dead_pid_and_rings_live_ones(root: Path) -> None:
    pid = dead_pid()
    stale = "/" + doorbell.prefix(root, "movies") + f"{pid}.0"
    stale_file = SHM / f"sem.{stale[1:]}"
    try:
        with movies_producer(root) as p:
            p.run_cycle(version_data(1))
            with follower(root, poll=3600) as kid:
                kid.expect("ready", version=1)
                posix_ipc.Semaphore(stale, posix_ipc.O_CREX, initial_value=0).close()
                live = doorbells(root, kid.pid)
                assert len(live) == 1
                assert stale_file.exists()
                assert pid not in hollow.status("movies", root=root).followers
                p.run_cycle(version_data(2))
                assert p._ringer.settle(TIMEOUT), "the ringer did not carry out the announcement's ring"
                assert not stale_file.exists(), "the dead process's doorbell was not removed"
                assert [b.exists() for b in live] == [True]
                kid.expect("update", version=2)
                kid.finish()
            assert doorbells(root, kid.pid) == [], "a follower that closed left its doorbell"
    finally:
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_semaphore(stale)


@pytest.mark.parametrize("size", [0, 16, 4096])
def test_doorbell_file_of_wrong_size_is_never_opened_as_a_semaphore(root: Path, size: int) -> None:
    # Under the prefix, with a live PID (ours): only its size says it is not a semaphore.
    bad = SHM / f"sem.{doorbell.prefix(root, 'movies')}{os.getpid()}.999999"
    bad.write_bytes(b"\1" * size)
    try:
        with movies_producer(root) as p:
            p.run_cycle(version_data(1))
            with follower(root, poll=3600) as kid:
                kid.expect("ready")
                p.run_cycle(version_data(2))
                assert p._ringer.settle(TIMEOUT)
                assert p._ringer.last[0] == 1, "the live follower was not rung (or the bad file was)"
                assert bad.read_bytes() == b"\1" * size, "the ringer wrote to a file that is not a semaphore"
                kid.expect("update", version=2)
                kid.finish()
    finally:
        with contextlib.suppress(FileNotFoundError):
            bad.unlink()


def test_wait_following_returns_at_once_when_the_follower_thread_cannot_start(
    root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A process out of threads still opens and serves (without following), and wait_following()
    says False instead of blocking until its timeout (None: for ever)."""
    start = threading.Thread.start

    def refuse(self: threading.Thread) -> None:
        if self.name.startswith("hollow-follow-"):
            raise RuntimeError("can't start new thread")
        start(self)

    with movies_producer(root) as p:
        p.run_cycle(version_data(1))
        monkeypatch.setattr(threading.Thread, "start", refuse)
        with hollow.open("movies", root=root) as ds:
            answers: list[bool] = []
            waiter = threading.Thread(target=lambda: answers.append(ds.wait_following(None)))
            waiter.start()
            waiter.join(60)
            assert answers == [False]  # before the fix it never returned
            assert ds.version == 1
    assert "cannot start the follower thread" in caplog.text

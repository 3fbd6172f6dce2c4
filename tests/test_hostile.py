"""Hostile local users (issue 9, items 1-6): what any account on the host can do must hurt
only itself. Every cross-user case uses real users made by the test (tests/hostile.py)."""

from __future__ import annotations

import errno
import grp
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hollow
from hollow import doorbell, layout
from hollowd import control
from hollowd.errors import ConfigurationError
from hollowd.schema import NamespaceSchema
from hollowd.sources import FileSource, SourceError
from hollowd.state import WriteState
from tests.daemons import Daemon, announced, movies_config, run, write_jsonl
from tests.helpers import SCHEMAS, movie, movies_producer
from tests.hostile import User, made_user
from tests.test_daemon import MORE
from tests.test_follow import TIMEOUT, dead_pid, doorbells, follower, version_data

SHM = Path("/dev/shm")


def _mapped_doorbells() -> list[str]:
    """The doorbells this process has mapped (the producer must map none: a damaged one would kill it)."""
    with open("/proc/self/maps") as f:
        return [line.split()[-1] for line in f if "/dev/shm/sem.hollow." in line]


# -- 9.1 doorbells -----------------------------------------------------------------------


def test_only_the_follower_and_the_producer_may_write_a_doorbell(root: Path, user: User, other_user: User) -> None:
    with made_user() as producer:
        code = r"""
import sys
from pathlib import Path
from hollow.doorbell import Doorbell
bell = Doorbell(Path(sys.argv[1]), "movies", producer_uid=int(sys.argv[2]))
print(bell.name, flush=True)
sys.stdin.read()
bell.close()
"""
        proc = subprocess.Popen(
            [sys.executable, "-c", user.code(code), str(root), str(producer.uid)],
            env={**os.environ, **user.env()},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdin is not None
            name = proc.stdout.readline().strip()
            path = SHM / f"sem.{name[1:]}"
            st = path.stat()
            assert st.st_uid == user.uid
            assert stat.S_IMODE(st.st_mode) & 0o077 == 0o060, oct(st.st_mode)  # the ACL mask: one more user
            probe = (
                "import sys\ntry:\n    os.close(os.open(sys.argv[1], os.O_RDWR))\n    print('yes')\n"
                "except PermissionError:\n    print('no')\n"
            )
            assert producer.run(probe, str(path)).stdout.strip() == "yes", "the producer cannot ring it"
            assert other_user.run(probe, str(path)).stdout.strip() == "no", "a stranger may write it"
            proc.stdin.close()
            assert proc.wait(TIMEOUT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    f.close()


def _plant(owner: User, entries: dict[str, str]) -> None:
    """As *owner*, create /dev/shm entries: name → "empty" | "dir" | "fifo" | "ff" (32 bytes of 0xFF)
    | "max" (a semaphore at its maximum value) | "zero" (truncate an existing file to 0 bytes)."""
    code = r"""
import json, sys
for name, kind in json.loads(sys.argv[1]).items():
    path = "/dev/shm/" + name
    if kind == "dir":
        os.mkdir(path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        os.truncate(path, 0)
    else:
        data = {"empty": b"", "ff": b"\xff" * 32,
                "max": struct.pack("<QI", 0x7FFFFFFF, 128) + bytes(20)}[kind]
        with open(path, "wb") as f:
            f.write(data)
print("ok")
"""
    import json  # noqa: PLC0415

    done = owner.run(code, json.dumps(entries))
    assert done.stdout.strip() == "ok", done.stderr


def test_damaged_and_planted_doorbells_kill_no_one_and_fail_no_cycle(root: Path, user: User, other_user: User) -> None:
    """The figures of issue 9.1, each at once: a follower truncating its own doorbell, 0xFF fakes under a live
    follower's PID, a semaphore at its maximum value, an empty file, a directory and a FIFO under dead PIDs'
    names, a follower of another user killed by SIGKILL. The producer rings from a helper and maps nothing."""
    hostile, victim = user, other_user
    prefix = doorbell.prefix(root, "movies")
    dead = dead_pid()
    with movies_producer(root, retain=2, mode=0o644) as p:
        p.run_cycle(version_data(1))
        with (
            follower(root, poll=3600, user=victim) as good,
            follower(root, poll=3600, user=hostile) as bad,
            follower(root, poll=3600, user=hostile) as killed,
        ):
            good.expect("ready", version=1)
            bad.expect("ready", version=1)
            killed.expect("ready", version=1)
            killed.stop()  # SIGKILL: its doorbell stays behind, another user's, undeletable by a daemon user
            [own] = doorbells(root, bad.pid)
            _plant(
                hostile,
                {
                    own.name: "zero",  # its own doorbell, truncated by its owner
                    f"sem.{prefix}{good.pid}.900": "ff",  # named like the victim's, owned by the hostile user
                    f"sem.{prefix}{bad.pid}.901": "max",
                },
            )
            # Under a dead PID's name, by a user that runs no reader: a user's own readers may sweep its
            # own debris, and only what the producer does is in question here.
            debris = {f"sem.{prefix}{dead}.902": "empty", f"sem.{prefix}{dead}.903": "dir"}
            debris[f"sem.{prefix}{dead}.904"] = "fifo"
            with made_user() as bystander:
                _plant(bystander, debris)
                for v in range(2, 8):
                    assert p.run_cycle(version_data(v)) == v
                    good.expect("update", version=v)
                assert p._ringer.settle(TIMEOUT)
                assert _mapped_doorbells() == []
                assert len(p.versions()) <= 3, f"reclaim stopped: {p.versions()}"
                left = [n for n in debris if os.path.lexists(SHM / n)]
                assert left == list(debris), "another user's files were removed (or tried)"
            assert hollow.status("movies", root=root).followers == sorted([good.pid, bad.pid])
            good.finish()


def test_announcing_does_no_work_per_doorbell_in_the_producer(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """10,000 fakes cost the helper, not the cycle: the producer never even lists /dev/shm."""
    with movies_producer(root) as p:
        p.run_cycle(version_data(1))
        listed: list[str] = []
        real = os.listdir

        def spy(path: object = ".") -> list[str]:
            listed.append(os.fspath(path))  # type: ignore[arg-type]
            return real(path)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "listdir", spy)
        p.run_cycle(version_data(2))
        monkeypatch.undo()
        assert str(SHM) not in listed
        assert "/dev/shm" not in listed


def test_a_ringer_that_dies_is_replaced_and_the_cycle_goes_on(root: Path) -> None:
    with movies_producer(root) as p:
        p.run_cycle(version_data(1))
        with follower(root, poll=3600) as kid:
            kid.expect("ready", version=1)
            helper = p._ringer._proc
            assert helper is not None
            helper.kill()
            helper.wait()
            assert p.run_cycle(version_data(2)) == 2  # the ring is lost; inotify still tells the follower
            kid.expect("update", version=2)
            assert p.run_cycle(version_data(3)) == 3
            kid.expect("update", version=3)
            assert p._ringer._proc is not helper
            kid.finish()


# -- 9.3 the control socket ---------------------------------------------------------------


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may enter (tmp_path is under root's private /tmp/pytest-of-root)."""
    path = Path(tempfile.mkdtemp(prefix="hollow-hostile-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _daemon_config(root: Path, where: Path, extra: str = "") -> Path:
    source = where / "movies.jsonl"
    write_jsonl(source, [movie(i) for i in range(5)])
    (where / "state").mkdir()
    config = movies_config(where, root, source, debounce=0.2, more=MORE)
    text = config.read_text().replace(
        f'control_socket = "{where / "state"}/control.sock"', f'control_socket = "{where}/control.sock"'
    )
    config.write_text(text.replace("[daemon]\n", "[daemon]\n" + extra))
    return config


ASK = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(json.dumps({"connect": e.strerror}))
    sys.exit()
try:
    s.sendall(sys.argv[2].encode() + b"\n")
except OSError:
    pass  # answered and closed before the whole request was sent (refused, too long)
print(s.makefile().readline().strip() or "{}")
"""


def _ask(who: User | None, sock: Path, request: object) -> dict[str, Any]:
    body = request if isinstance(request, str) else json.dumps(request)
    if who is None:
        out = subprocess.run(
            [sys.executable, "-c", ASK, str(sock), body], capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
    else:
        out = who.run(ASK, str(sock), body)
    assert out.returncode == 0, out.stderr
    answer: dict[str, Any] = json.loads(out.stdout)
    return answer


def test_control_is_for_operators_not_readers(root: Path, open_dir: Path, user: User, other_user: User) -> None:
    group = f"hg{uuid.uuid4().hex[:8]}"
    subprocess.run(["groupadd", "--system", group], check=True)
    try:
        subprocess.run(["usermod", "-aG", group, other_user.name], check=True)
        operator = User(
            other_user.name, other_user.uid, other_user.gid, (*other_user.groups, grp.getgrnam(group).gr_gid)
        )
        config = _daemon_config(root, open_dir)
        sock = open_dir / "control.sock"
        d = Daemon(config, open_dir)
        try:
            d.notifications("READY=1")
            assert stat.S_IMODE(sock.stat().st_mode) == 0o600
            assert _ask(user, sock, {"command": "pin", "namespace": "movies", "version": 1}) == {
                "connect": "Permission denied"
            }
            sock.chmod(0o666)  # an operator's mistake: the peer's credentials still decide
            answer = _ask(user, sock, {"command": "pin", "namespace": "movies", "version": 1})
            assert answer["ok"] is False
            assert f"uid {user.uid}" in answer["error"]
            assert "socket_group" in answer["error"]
            assert announced(root) == 1
            assert not layout.read_announcement(root / "movies").pinned  # type: ignore[union-attr]
            assert _ask(None, sock, {"command": "status"})["ok"] is True  # root
        finally:
            assert d.stop() == 0
        config.write_text(config.read_text().replace("[daemon]\n", f'[daemon]\nsocket_group = "{group}"\n'))
        d = Daemon(config, open_dir)
        try:
            d.notifications("READY=1")
            st = sock.stat()
            assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, grp.getgrnam(group).gr_gid)
            answer = _ask(operator, sock, {"command": "pin", "namespace": "movies", "version": 1})
            assert answer.get("pinned") is True, answer
            assert _ask(user, sock, {"command": "unpin", "namespace": "movies"}) == {"connect": "Permission denied"}
        finally:
            assert d.stop() == 0
    finally:
        subprocess.run(["groupdel", group], check=False)


@pytest.mark.parametrize(
    ("request_line", "says"),
    [
        ("[" * 2000 + "]" * 2000, "nested too deeply"),
        ('{"command": "pin", "namespace": "movies", "version": ' + "[" * 1900 + "]" * 1900 + "}", "nested"),
        ("[" * 5000 + "]" * 5000, "longer than 4096 bytes"),
        ("[[1]]", "a request is a JSON object"),
        ('{"command": "pin", "namespace": "movies", "version": Infinity}', "Infinity is not a value"),
        ('{"command": "pin", "namespace": "movies", "version": -Infinity}', "-Infinity is not a value"),
        ('{"command": "pin", "namespace": "movies", "version": NaN}', "NaN is not a value"),
        ('{"command": "pin", "namespace": "movies", "version": 1e400}', "1e400 is not an integer"),
        ('{"command": "pin", "namespace": "movies", "version": 1.5}', "1.5 is not an integer"),
        ('{"command": "pin", "namespace": "movies", "version": "1"}', "version must be an integer"),
        ('{"command": "pin", "namespace": "movies", "version": true}', "version must be an integer"),
        ('{"command": "pin", "namespace": "movies", "version": 0}', "version must be an integer"),
        ('{"command": "pin", "namespace": "movies", "version": 99999999999999999999}', "version must be an integer"),
        ('{"command": "pin", "namespace": ["movies"], "version": 1}', "namespace must be a string"),
        ('{"command": "pin", "namespace": "movies", "version": 1, "x": 2}', "unknown field"),
        ('{"command": "rm -rf", "namespace": "movies"}', "command must be one of"),
        ("x" * 10_000, "longer than"),
        ("\xff\xfe", "not JSON"),
    ],
)
def test_bad_requests_are_refused_by_name_and_change_nothing(request_line: str, says: str) -> None:
    with pytest.raises(control.BadRequestError, match=re.escape(says)):
        control.parse(request_line.encode("utf-8", "surrogateescape"))


def test_slow_silent_huge_and_malformed_clients_never_stop_control(root: Path, open_dir: Path) -> None:
    sock = open_dir / "control.sock"
    d = Daemon(_daemon_config(root, open_dir), open_dir)
    held: list[socket.socket] = []
    try:
        d.notifications("READY=1")
        for _ in range(3):  # connections that never send a newline, and one that drips
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(sock))
            s.sendall(b'{"command": ')
            held.append(s)
        bodies = [
            "[" * 2000 + "]" * 2000,
            "[" * 5000 + "]" * 5000,
            '{"command": "pin", "namespace": "movies", "version": Infinity}',
            '{"command": "pin", "namespace": "movies", "version": 1e400}',
            "x" * 100_000,
        ]
        for body in bodies:
            answer = _ask(None, sock, body)
            assert (answer["ok"], answer["code"]) == (False, 2), answer
            held[-1].sendall(b" ")
        answer = _ask(None, sock, {"command": "pin", "namespace": "movies", "version": 1})
        assert answer["ok"] is True, answer
        assert d.proc.poll() is None
        answer = json.loads(held[0].makefile().readline())  # the silent ones get their own answer, in time
        assert "no whole request line" in answer["error"]
    finally:
        for s in held:
            s.close()
        assert d.stop() == 0


# -- 9.2 root and namespace directory trust --------------------------------------------------


def _chown(path: Path, who: User, mode: int) -> None:
    os.chown(path, who.uid, who.gid)
    path.chmod(mode)


@pytest.mark.parametrize("mode", [0o777, 0o755])
def test_a_root_made_by_another_user_is_refused_by_name(root: Path, user: User, mode: int) -> None:
    shared = root / "shared"
    shared.mkdir()
    _chown(shared, user, mode)  # made first by someone else, as on a host where anyone may write /dev/shm
    with pytest.raises(ConfigurationError) as e:
        movies_producer(shared)
    message = str(e.value)
    assert str(shared) in message
    assert user.name in message
    assert f"{mode:04o}" in message
    assert "chown" in message
    assert not (shared / "movies").exists(), "published into it anyway"


def test_a_forged_namespace_cannot_reach_readers(root: Path, user: User) -> None:
    """The issue's attack: the root is writable by others, who swap the namespace for a forged one."""
    with movies_producer(root, mode=0o644) as p:
        p.run_cycle(version_data(1))
    forged = root / "forged"
    with movies_producer(forged, mode=0o644) as p:
        p.run_cycle(lambda s: [s.add("Movie", movie(0, title="FORGED-0")), s.add("Actor", {"id": 0, "name": "x"})])
    root.chmod(0o777)
    (root / "movies").rename(root / "real")
    (forged / "movies").rename(root / "movies")
    with pytest.raises(hollow.UntrustedDirectoryError, match="0777"):
        hollow.open("movies", root=root)
    with pytest.raises(hollow.UntrustedDirectoryError):
        hollow.status("movies", root=root)
    root.chmod(0o755)
    (root / "movies").chmod(0o777)
    with pytest.raises(hollow.UntrustedDirectoryError, match="namespace directory"):
        hollow.open("movies", root=root)
    os.chown(root / "movies", user.uid, user.gid)
    (root / "movies").chmod(0o755)
    with pytest.raises(hollow.UntrustedDirectoryError, match=user.name):
        hollow.open("movies", root=root)  # a stranger's namespace in a root it does not own


def test_a_symlinked_root_or_namespace_is_not_followed(root: Path) -> None:
    real = root / "real"
    with movies_producer(real) as p:
        p.run_cycle(version_data(1))
    link = root / "link"
    link.symlink_to(real)
    with pytest.raises(ConfigurationError, match="symlink"):
        movies_producer(link)
    with pytest.raises(hollow.UntrustedDirectoryError, match="symlink"):
        hollow.open("movies", root=link)
    (real / "other").symlink_to(real / "movies")
    with pytest.raises(hollow.UntrustedDirectoryError, match="symlink"):
        hollow.open("other", root=real)


def test_the_daemon_exits_78_naming_an_untrusted_root(root: Path, open_dir: Path, user: User) -> None:
    shared = root / "shared"
    shared.mkdir()
    _chown(shared, user, 0o777)
    done = run("hollowd.daemon", "--config", str(_daemon_config(shared, open_dir)))
    assert done.returncode == 78, done.stderr
    assert str(shared) in done.stderr
    assert "Traceback" not in done.stderr


def test_roots_and_namespaces_are_made_with_exact_modes_whatever_the_umask(root: Path) -> None:
    old = os.umask(0o022)
    try:
        with movies_producer(root / "private") as p:
            p.run_cycle(version_data(1))
        with movies_producer(root / "public", mode=0o644) as p:
            p.run_cycle(version_data(1))
    finally:
        os.umask(old)
    modes = {
        name: stat.S_IMODE(path.stat().st_mode)
        for name, path in {
            "private root": root / "private",
            "private ns": root / "private" / "movies",
            "public root": root / "public",
            "public ns": root / "public" / "movies",
        }.items()
    }
    # outside the group no one lists namespaces; with world-readable files others may enter, not list
    assert modes == {"private root": 0o750, "private ns": 0o750, "public root": 0o751, "public ns": 0o755}


# -- 9.4 readers that block others -----------------------------------------------------------

BLOCKER = r"""
import sys
ns = sys.argv[1]
held, tried = [], {}
for name in sorted(os.listdir(ns)):
    for flags in (os.O_RDONLY, os.O_RDWR):
        try:
            fd = os.open(os.path.join(ns, name), flags | os.O_NONBLOCK)
        except OSError as e:
            tried[f"{name} {flags}"] = e.errno
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            tried[f"{name} flock"] = 0
        except OSError as e:
            tried[f"{name} flock"] = e.errno
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))
            tried[f"{name} ofd"] = 0
        except OSError as e:
            tried[f"{name} ofd"] = e.errno
        held.append(fd)
print(json.dumps(tried), flush=True)
sys.stdin.read()
"""


def test_a_reader_cannot_block_leases_reclaim_or_the_producer(root: Path, user: User) -> None:
    with movies_producer(root, mode=0o644, retain=2) as p:
        for v in range(1, 4):
            p.run_cycle(version_data(v))
        assert stat.S_IMODE((root / "movies" / ".producer.lock").stat().st_mode) == 0o600
        blocker = subprocess.Popen(
            [sys.executable, "-c", user.code(BLOCKER), str(root / "movies")],
            env={**os.environ, **user.env()},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert blocker.stdout is not None
            tried = json.loads(blocker.stdout.readline())
            assert tried[f".producer.lock {os.O_RDONLY}"] == errno.EACCES, tried
            assert tried["3.lock flock"] == 0, tried  # a flock it may take: it is only a name tag now
            assert tried["3.lock ofd"] == errno.EBADF, tried  # but no write lock: leases are OFD read locks
            assert tried[f"3.lock {os.O_RDWR}"] == errno.EACCES, tried
            with hollow.open("movies", root=root) as ds:  # a new reader leases version 3 all the same
                assert ds.version == 3
            for v in range(4, 8):
                p.run_cycle(version_data(v))
            assert p.versions() == [6, 7], "reclaim was blocked by a reader's flock"
        finally:
            assert blocker.stdin is not None
            blocker.stdin.close()
            blocker.wait(TIMEOUT)
            blocker.stdout.close()  # type: ignore[union-attr]


def test_leases_on_every_version_cannot_grow_shm_past_its_bound(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A reader that leases every version (issue 9.4: 2 → 21 versions with retain = 2) meets max_versions:
    the oldest leased are removed anyway, named with their holders, and the holder keeps reading them."""
    held = []
    with movies_producer(root, retain=2, max_versions=4) as p:
        p.run_cycle(version_data(1))
        ds = hollow.open("movies", root=root, follow=False)
        held.append(ds.attach(1))
        for v in range(2, 12):
            p.run_cycle(version_data(v))
            held.append(ds.attach(v))
            assert len(p.versions()) <= 4, p.versions()
        assert p.versions() == [8, 9, 10, 11]
        assert p.last_revoked == {7: [os.getpid()]}
        assert f"versions=7 holders={os.getpid()}" in caplog.text
        for v, snap in enumerate(held, 1):  # revoked or not, a holder reads what it holds
            assert snap["Movie"][0].title == f"v{v}"
            snap.close()
        with pytest.raises(hollow.VersionNotFoundError):
            ds.attach(3)
        ds.close()


def test_the_daemons_locks_are_its_own(tmp_path: Path, root: Path) -> None:
    lock = root / "movies" / ".producer.lock"
    lock.parent.mkdir()
    lock.write_text("1\n")
    lock.chmod(0o644)  # as an older hollowd left it
    with movies_producer(root):
        assert stat.S_IMODE(lock.stat().st_mode) == 0o600


# -- 9.5 files planted by the daemon's user or root ------------------------------------------


def test_a_fifo_as_a_lockfile_hangs_no_one(root: Path) -> None:
    with movies_producer(root) as p:
        p.run_cycle(version_data(1))
        os.mkfifo(root / "movies" / "2.lock")  # where the next version's lockfile goes
        assert p.run_cycle(version_data(2)) == 2
        assert stat.S_ISREG((root / "movies" / "2.lock").lstat().st_mode)
        (root / "movies" / "2.lock").unlink()
        os.mkfifo(root / "movies" / "2.lock")  # under the announced version
        code = (
            "import sys, hollow\ntry:\n    hollow.open('movies', root=sys.argv[1])\n"
            "except hollow.CorruptStateError as e:\n    print(e)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=TIMEOUT, check=True
        )
        assert "not a regular file" in out.stdout, out
        (root / "movies" / "2.lock").unlink()
        assert p.run_cycle(version_data(3)) == 3  # and reclaiming past it hangs nothing


@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory", "garbage"])
def test_anything_planted_as_the_announcement_is_replaced_at_the_next_cycle(root: Path, kind: str) -> None:
    announced = root / "movies" / "announce" / "announced"
    decoy = root / "decoy.json"
    decoy.write_text('{"version": 1, "pinned": true}')
    with movies_producer(root) as p:
        p.run_cycle(version_data(1))
        announced.unlink()
        if kind == "fifo":
            os.mkfifo(announced)
        elif kind == "symlink":
            announced.symlink_to(decoy)
        elif kind == "directory":
            announced.mkdir()
            (announced / "x").write_text("x")
        else:
            announced.write_bytes(b"\xff" * 10)
        with pytest.raises(hollow.CorruptStateError):
            layout.read_announcement(root / "movies")
        assert p.announcement() is None
        assert p.run_cycle(version_data(2)) == 2
        assert layout.read_announcement(root / "movies") == p.announcement()
        assert p.announcement().version == 2  # type: ignore[union-attr]
        assert stat.S_ISREG(announced.lstat().st_mode)
        assert decoy.read_text() == '{"version": 1, "pinned": true}'


def test_a_symlinked_announce_directory_is_replaced_not_followed(root: Path) -> None:
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    with movies_producer(root) as p:
        p.run_cycle(version_data(1))
        shutil.rmtree(root / "movies" / "announce")
        (root / "movies" / "announce").symlink_to(elsewhere)
        with pytest.raises(hollow.CorruptStateError, match="symlink"):
            layout.read_announcement(root / "movies")
        assert p.run_cycle(version_data(2)) == 2
        assert (root / "movies" / "announce").is_dir()
        assert not (root / "movies" / "announce").is_symlink()
        assert os.listdir(elsewhere) == []
        with hollow.open("movies", root=root, follow=False) as ds:
            assert ds.version == 2


def test_a_fifo_as_the_source_file_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "movies.jsonl"
    os.mkfifo(fifo)
    source = FileSource(fifo, NamespaceSchema(SCHEMAS / "movies.capnp", {"Movie": "id"}), type_name="Movie")
    with pytest.raises(SourceError, match="not a regular file"):
        source(WriteState(source.schema))


# -- 9.21 the leak fixture counts only the test's own -----------------------------------------


def test_the_leak_check_counts_only_what_this_test_made(root: Path) -> None:
    from tests import conftest  # noqa: PLC0415

    me, ours = os.getpid(), doorbell.prefix(root, "movies")
    theirs = doorbell.prefix(Path("/dev/shm/hollow-test-1-elsewhere"), "movies")
    with subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE) as child:
        assert conftest._ours(f"sem.{ours}1.0")  # under this test's root, whoever's PID
        assert conftest._ours(f"sem.{theirs}{me}.0")  # this process's
        assert conftest._ours(f"sem.{theirs}{child.pid}.0")  # a child's
        assert not conftest._ours(f"sem.{theirs}1.0")  # another process's, under another root
        assert conftest._ours(f"hollow-test-{me}-left-behind")
        assert not conftest._ours("hollow-test-1-another-run")
        assert not conftest._ours("some-other-program")
        child.stdin.close()  # type: ignore[union-attr]


def test_a_restore_rings_past_planted_doorbells_and_succeeds(root: Path, tmp_path: Path, user: User) -> None:
    """After a reboot, the restore announces the saved version: planted names must not fail it (issue 9.1)."""
    with movies_producer(root, mode=0o644) as p:
        p.run_cycle(version_data(1))
        saved = tmp_path / "latest.state"
        saved.write_bytes((root / "movies" / "1").read_bytes())
    shutil.rmtree(root / "movies")  # the reboot
    prefix = doorbell.prefix(root, "movies")
    dead = dead_pid()
    _plant(user, {f"sem.{prefix}{dead}.1": "dir", f"sem.{prefix}{dead}.2": "fifo", f"sem.{prefix}{dead}.3": "empty"})
    with movies_producer(root, mode=0o644) as p:
        assert p.materialize(saved) == 1
        assert p._ringer.settle(TIMEOUT)
        assert p.run_cycle(version_data(2)) == 2
    assert announced(root) == 2

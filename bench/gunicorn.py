"""gunicorn benchmark: hollowd in sync workers against a dict per worker, a --preload dict and Redis.

Real gunicorn (sync workers, 8 by default), real HTTP on loopback, load from wrk. Every
configuration serves the same endpoint, ``GET /movie/<id>`` -> JSON title, year and version
(bench/gunicorn_app.py); only the lookup differs:

* ``hollow``: hollow.wsgi.Middleware + the hollow.gunicorn hooks, ``--preload``;
* ``perworker`` (a): every worker ``pickle.load``s a dict id -> record at app import, no ``--preload``;
* ``preload`` (b): the same dict loaded once in the master, ``--preload`` (copy-on-write after fork);
* ``redis``: a redis-server of our own on loopback, msgpack values, one client per worker.

Measured, per configuration: boot (Popen of gunicorn until every worker has answered),
throughput and latency under wrk with random keys, memory of the workers and master after
that load (PSS from smaps_rollup plus the shared files in /dev/shm, each page counted once),
CPU time per request; and for hollowd, a burst of announcements under load.

Run ``.venv/bin/python bench/gunicorn.py [--quick] [--records N] [--json PATH]``; progress goes
to stderr, the tables to stdout. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import http.client
import json
import os
import pickle
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import gunicorn_app
import msgpack
import redis
from core import (
    NAMESPACE,
    SCHEMA,
    TYPE,
    allocated_bytes,
    by_id,
    child_env,
    environment,
    log,
    make_records,
    percentile,
    ratio,
    render,
    smaps_rollup,
    time_batches,
    verdict,
)

import hollow.wsgi
from hollow import doorbell, layout, lease
from hollowd import Producer

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
LUA_SCRIPT = BENCH_DIR / "wrk_random.lua"
ASGI_APP = "bench.gunicorn_app:asgi_app"  # for uvicorn workers
APP = "bench.gunicorn_app:app"  # imported as bench.gunicorn_app: a top-level "gunicorn*" name next to us would clash

CONFIGS = ("hollow", "perworker", "preload", "redis", "hollowlazy")
DEFAULT_CONFIGS = CONFIGS[:4]
LABELS = {
    "hollow": "hollowd (--preload + hooks)",
    "perworker": "dict per worker (a)",
    "preload": "dict, --preload (b)",
    "redis": "Redis + msgpack",
    "hollowlazy": "hollowd, no --preload",
}
BACKENDS = {"hollow": "hollow", "perworker": "dict", "preload": "dict", "redis": "redis", "hollowlazy": "hollow"}
PRELOAD = {"hollow": True, "perworker": False, "preload": True, "redis": True, "hollowlazy": False}
BOOT_NOTES = {
    "hollow": "each worker attaches in post_worker_init",
    "perworker": "every worker pickle.loads the dict",
    "preload": "one pickle.load in the master, then fork",
    "redis": "data already in redis-server",
    "hollowlazy": "each worker imports the app, then attaches",
}
HOLLOW_CONF = """\
import os
from hollow.gunicorn import hooks
post_worker_init, worker_exit = hooks("movies", root=os.environ["HOLLOW_BENCH_ROOT"])
"""
PLAIN_CONF = "# no hooks: the dict and Redis backends set themselves up at app import\n"
# Lines of a gunicorn log that mean trouble (its INFO lines about booting and exiting workers do not).
LOG_TROUBLE = ("[ERROR]", "[CRITICAL]", "[WARNING]", "Traceback", "WORKER TIMEOUT", "hollow:", "Error")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1 << 20
T0 = time.perf_counter()


# --- configuration -------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """What one run measures, and how hard."""

    records: int
    workers: int
    worker_class: str  # gunicorn -k: sync, or gthread (keep-alive connections, --threads)
    worker_threads: int  # gunicorn --threads, for gthread
    duration: int  # seconds of each configuration's wrk load (throughput, latency, then memory)
    rounds: int  # the load is split in this many rounds in which the configurations take turns
    warmup: int  # seconds of untimed wrk on each configuration before the rounds
    threads: int  # wrk -t
    connections: int  # wrk -c
    boots: int
    steady: int  # seconds of each steady window around the announcement burst
    versions: int  # announcements in the burst
    changes: int  # titles changed per version
    publish: str  # "prebuilt" or "live"
    configs: tuple[str, ...]
    seed: int
    quick: bool


def parse_config(argv: Sequence[str] | None = None) -> tuple[Config, Path | None]:
    """Command-line options → a :class:`Config` and the JSON output path (or None)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=None, help="records in the dataset (default 1,000,000)")
    ap.add_argument("--quick", action="store_true", help="N=100,000, 12 s of load each, one boot each (~2 minutes)")
    ap.add_argument("--workers", type=int, default=8, help="gunicorn workers (default 8)")
    ap.add_argument(
        "--worker-class",
        choices=("sync", "gthread", "uvicorn"),
        default="sync",
        help="gunicorn -k: sync (default; a new connection per request), gthread (keep-alive) or uvicorn (the ASGI "
        "app in uvicorn_worker.UvicornWorker, keep-alive, redis.asyncio)",
    )
    ap.add_argument("--worker-threads", type=int, default=2, help="gunicorn --threads for gthread (default 2)")
    ap.add_argument("--duration", type=int, default=None, help="seconds of wrk load per configuration (default 60)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds the load is split in (default 12)")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    ap.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    ap.add_argument("--boots", type=int, default=None, help="timed boots per configuration (default 3)")
    ap.add_argument("--versions", type=int, default=10, help="announcements in the burst (default 10)")
    ap.add_argument(
        "--publish",
        choices=("prebuilt", "live"),
        default="prebuilt",
        help="burst of announcements of versions built before the load (default), or run_incremental under load",
    )
    ap.add_argument(
        "--configs",
        default=",".join(DEFAULT_CONFIGS),
        help=f"comma-separated subset of {', '.join(CONFIGS)} (default: {', '.join(DEFAULT_CONFIGS)})",
    )
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write every result as JSON here")
    args = ap.parse_args(argv)
    n = args.records or (100_000 if args.quick else 1_000_000)
    if n < 1000:
        ap.error("--records must be at least 1000")
    configs = tuple(c for c in CONFIGS if c in args.configs.split(","))
    unknown = set(args.configs.split(",")) - set(CONFIGS)
    if unknown or not configs:
        ap.error(f"--configs: unknown {sorted(unknown)}; choose among {', '.join(CONFIGS)}")
    cfg = Config(
        records=n,
        workers=args.workers,
        worker_class=args.worker_class,
        worker_threads=args.worker_threads,
        duration=args.duration or (12 if args.quick else 60),
        rounds=args.rounds or (4 if args.quick else 12),
        warmup=2 if args.quick else 5,
        threads=args.threads,
        connections=args.connections,
        boots=args.boots or (1 if args.quick else 3),
        steady=5 if args.quick else 18,
        versions=args.versions,
        changes=max(1, min(n // 100, 1000)),
        publish=args.publish,
        configs=configs,
        seed=args.seed,
        quick=args.quick,
    )
    return cfg, args.json


# --- processes ---------------------------------------------------------------------


def alive(pid: int) -> bool:
    """Whether *pid* is a live process (not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    """The child PIDs of *pid* (for gunicorn's master: its workers)."""
    try:
        return sorted(int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    except FileNotFoundError:
        return []


class Processes:
    """Every process the benchmark starts (and every gunicorn worker it saw), stopped at the end.

    Each is started in a session of its own, so that a Ctrl-C in the terminal reaches only
    the benchmark, which then stops them here. Processes are only ever signalled by PID.
    """

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []
        self.workers: dict[int, str] = {}  # worker PID -> the command line it had (guards against PID reuse)

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        p: subprocess.Popen[Any] = subprocess.Popen(cmd, start_new_session=True, **kwargs)
        self.procs.append(p)
        return p

    def saw_workers(self, pids: Sequence[int]) -> None:
        for pid in pids:
            self.workers.setdefault(pid, cmdline(pid))

    @staticmethod
    def stop(p: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        """Signal *p*, wait up to *timeout* s, then kill it."""
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def kill_stray_workers(self, pids: Sequence[int] | None = None) -> list[int]:
        """SIGKILL the workers among *pids* (default: every one we saw) that still run, once their master is gone.

        A PID is only signalled while it runs the command line it had when we saw it.
        """
        killed = []
        for pid in self.workers if pids is None else pids:
            cmd = self.workers.get(pid, "")
            if alive(pid) and cmd and cmdline(pid) == cmd:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        return killed

    def close(self) -> list[int]:
        """Stop everything still running; returns the worker PIDs that had to be killed."""
        for p in reversed(self.procs):
            self.stop(p, timeout=30)
        return self.kill_stray_workers()


# --- the data: hollowd versions, a pickle, a Redis -----------------------------


@dataclass
class Data:
    """The dataset in every form the configurations read, and what making each took."""

    root: Path
    records: list[dict[str, Any]]  # by id
    producer: Producer
    version: int  # the first version: what every backend serves
    setup_s: dict[str, float] = field(default_factory=dict)
    redis_proc: subprocess.Popen[Any] | None = None
    redis_port: int = 0

    @property
    def hollow_root(self) -> Path:
        return self.root / "hollow"

    @property
    def ns_dir(self) -> Path:
        return self.hollow_root / NAMESPACE

    @property
    def pickle_path(self) -> Path:
        return self.root / "movies.pickle"

    def env(self) -> dict[str, str]:
        """The app's configuration (HOLLOW_BENCH_*), whatever the backend."""
        return {
            "HOLLOW_BENCH_ROOT": str(self.hollow_root),
            "HOLLOW_BENCH_PICKLE": str(self.pickle_path),
            "HOLLOW_BENCH_REDIS": f"127.0.0.1:{self.redis_port}",
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def publish_first(root: Path, records: list[dict[str, Any]], cfg: Config) -> tuple[Producer, int, float]:
    """A producer on root/hollow (kept open: it publishes the burst later) and its first version."""
    producer = Producer(
        NAMESPACE,
        schema=SCHEMA,
        primary_keys={TYPE: "id"},
        indexes={TYPE: ["genre"]},
        root=root / "hollow",
        retain=cfg.versions + 2,  # every version of the burst stays until the end
    )
    try:
        t0 = time.perf_counter()
        version = producer.run_cycle(lambda state: state.add_all(TYPE, records))
        took = time.perf_counter() - t0
    except BaseException:
        producer.close()
        raise
    return producer, version, took


def start_redis(data: Data, procs: Processes) -> None:
    """A redis-server of our own: loopback, a free port, no persistence, its directory under our root."""
    rdir = data.root / "redis"
    rdir.mkdir()
    data.redis_port = free_port()
    cmd = ["redis-server", "--port", str(data.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--dir", str(rdir), "--logfile", str(rdir / "redis.log"), "--daemonize", "no"]
    data.redis_proc = procs.popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=data.redis_port)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if data.redis_proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {(rdir / 'redis.log').read_text()}") from None
            time.sleep(0.05)
    client.close()


def load_redis(data: Data) -> None:
    """Every record as msgpack under ``movie:<id>``: MSETs of 1,000 keys, 20 per pipeline round trip."""
    client = redis.Redis(port=data.redis_port)
    packb = msgpack.packb
    try:
        pipe = client.pipeline(transaction=False)
        for i in range(0, len(data.records), 1000):
            pipe.mset({b"movie:%d" % r["id"]: packb(r) for r in data.records[i : i + 1000]})
            if len(pipe) >= 20:
                pipe.execute()
        pipe.execute()
        if client.dbsize() != len(data.records):
            raise RuntimeError(f"redis holds {client.dbsize()} keys, not {len(data.records)}")
    finally:
        client.close()


def prepare(root: Path, cfg: Config, procs: Processes) -> Data:
    """Records, hollowd's first version, the pickle, and (if Redis is measured) a loaded redis-server."""
    log(f"generating {cfg.records:,} records")
    records = make_records(cfg.records, cfg.seed)
    gc.freeze()  # long-lived: keep later collections from rescanning them
    log("publishing hollowd version 1 (run_cycle)")
    producer, version, cycle_s = publish_first(root, records, cfg)
    data = Data(root=root, records=by_id(records), producer=producer, version=version)
    data.setup_s["hollowd_run_cycle"] = cycle_s
    del records
    log("writing the pickle of the dict id -> record")
    t0 = time.perf_counter()
    with data.pickle_path.open("wb") as f:
        pickle.dump({r["id"]: r for r in data.records}, f, protocol=pickle.HIGHEST_PROTOCOL)
    data.setup_s["pickle_dump"] = time.perf_counter() - t0
    if "redis" in cfg.configs:
        log("starting redis-server and loading it")
        start_redis(data, procs)
        t0 = time.perf_counter()
        load_redis(data)
        data.setup_s["redis_load"] = time.perf_counter() - t0
    return data


# --- gunicorn ------------------------------------------------------------------------


@dataclass
class Server:
    """One gunicorn master of one configuration."""

    config: str
    proc: subprocess.Popen[Any]
    port: int
    log_path: Path
    log_file: IO[str]
    seen: set[int] = field(default_factory=set)  # every worker PID this master had

    @property
    def master(self) -> int:
        return self.proc.pid

    def workers(self) -> list[int]:
        pids = children(self.master)
        self.seen.update(pids)
        return pids


def gunicorn_env(data: Data, config: str, run_dir: Path, *, asgi: bool = False) -> dict[str, str]:
    env = child_env(run_dir)  # bytecode cached under our root, never in the source tree
    env.update(data.env())
    env["HOLLOW_BENCH_BACKEND"] = BACKENDS[config]
    if asgi:
        env["HOLLOW_BENCH_ASGI"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_DIR / "client"), str(PROJECT_DIR)])
    return env


def gunicorn_kind(cfg: Config) -> list[str]:
    """gunicorn's worker-class arguments for *cfg*."""
    if cfg.worker_class == "uvicorn":
        return ["-k", "uvicorn_worker.UvicornWorker"]
    threads = ["--threads", str(cfg.worker_threads)] if cfg.worker_class == "gthread" else []
    return ["-k", cfg.worker_class, *threads]


def start_server(data: Data, cfg: Config, config: str, procs: Processes, attempt: int) -> Server:
    """Popen gunicorn for *config* (returns at once: the caller times the boot)."""
    run_dir = data.root / "run"
    run_dir.mkdir(exist_ok=True)
    conf = run_dir / f"{config}.conf.py"
    conf.write_text(HOLLOW_CONF if BACKENDS[config] == "hollow" else PLAIN_CONF)
    port = free_port()
    log_path = run_dir / f"{config}.{attempt}.log"
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(conf), *gunicorn_kind(cfg), "-w", str(cfg.workers)]
    cmd += ["-b", f"127.0.0.1:{port}", "--backlog", "2048", "--timeout", "120", "--graceful-timeout", "30"]
    cmd += ["--preload"] if PRELOAD[config] else []
    log_file = log_path.open("w")
    try:
        proc = procs.popen(
            [*cmd, ASGI_APP if cfg.worker_class == "uvicorn" else APP],
            cwd=run_dir,
            env=gunicorn_env(data, config, run_dir, asgi=cfg.worker_class == "uvicorn"),
            stdout=log_file,
            stderr=log_file,
        )
    except BaseException:
        log_file.close()
        raise
    return Server(config, proc, port, log_path, log_file)


def stop_server(server: Server, procs: Processes) -> dict[str, Any]:
    """SIGTERM the master (graceful: workers run worker_exit), wait; report what its log says."""
    server.seen.update(server.workers())
    procs.saw_workers(sorted(server.seen))
    procs.stop(server.proc, signal.SIGTERM, timeout=60)
    server.log_file.close()
    stray = procs.kill_stray_workers(sorted(server.seen))  # this server's workers only
    text = server.log_path.read_text(errors="replace")
    trouble = [line for line in text.splitlines() if any(t in line for t in LOG_TROUBLE)]
    return {
        "exit_code": server.proc.returncode,
        "worker_boots": text.count("Booting worker"),
        "trouble": trouble,
        "stray_workers_killed": stray,
    }


def http_get(port: int, path: str, timeout: float = 30) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def boot(data: Data, cfg: Config, config: str, procs: Processes, attempt: int) -> tuple[Server, dict[str, Any]]:
    """Start gunicorn and time it until every worker has answered ``/pid?sleep=0.02``.

    2 x workers client threads each send one request at a time; a request holds its worker
    for 20 ms, so that concurrent requests spread over every worker that is up. A refused
    connection (the master has not bound the socket yet: with --preload it loads the app
    first) is retried after 5 ms.
    """
    seen: dict[int, float] = {}
    bad: list[str] = []
    lock = threading.Lock()
    finished = threading.Event()
    t0 = time.perf_counter()
    server = start_server(data, cfg, config, procs, attempt)

    def client() -> None:
        while not finished.is_set():
            try:
                status, doc = http_get(server.port, "/pid?sleep=0.02", timeout=300)
            except (OSError, http.client.HTTPException):
                time.sleep(0.005)
                continue
            now = time.perf_counter() - t0
            with lock:
                if status != 200 or "pid" not in doc:
                    bad.append(f"{status} {doc}")
                else:
                    seen.setdefault(int(doc["pid"]), now)
                if bad or len(seen) >= cfg.workers:
                    finished.set()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(2 * cfg.workers)]
    for t in threads:
        t.start()
    try:
        while not finished.wait(0.05):
            if server.proc.poll() is not None:
                raise RuntimeError(
                    f"{config}: gunicorn exited with {server.proc.returncode}:\n{server.log_path.read_text()}"
                )
            if time.perf_counter() - t0 > 600:
                raise RuntimeError(f"{config}: not every worker answered in 600 s (saw {sorted(seen)})")
    finally:
        finished.set()
        for t in threads:
            t.join(timeout=310)
    if bad:
        raise RuntimeError(f"{config}: /pid answered {bad[0]}")
    workers = server.workers()
    procs.saw_workers(workers)
    if set(seen) != set(workers):
        raise RuntimeError(f"{config}: answers came from {sorted(seen)}, the master's children are {workers}")
    return server, {"all_s": max(seen.values()), "first_s": min(seen.values())}


def check_answers(port: int, data: Data, config: str, expect: dict[int, tuple[str, int, int]]) -> None:
    """The server returns *expect*'s (title, year, version) for its keys, and 404 for a key that does not exist."""
    for key, want in expect.items():
        status, doc = http_get(port, f"/movie/{key}")
        got = (doc.get("title"), doc.get("year"), doc.get("version"))
        if status != 200 or got != want:
            raise RuntimeError(f"{config}: /movie/{key} answered {status} {doc}, expected {want}")
    status, _ = http_get(port, f"/movie/{len(data.records)}")
    if status != 404:
        raise RuntimeError(f"{config}: a missing id answered {status}, not 404")


def sample_keys(data: Data, k: int, seed: int) -> list[int]:
    return random.Random(seed).sample(range(len(data.records)), k)


# --- wrk --------------------------------------------------------------------------------


def wrk_cmd(cfg: Config, port: int, seconds: int) -> list[str]:
    return [
        "wrk",
        "-t",
        str(cfg.threads),
        "-c",
        str(cfg.connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA_SCRIPT),
        f"http://127.0.0.1:{port}/",
        "--",
        str(cfg.records),
        str(cfg.seed),
    ]


def start_wrk(cfg: Config, port: int, seconds: int, procs: Processes) -> subprocess.Popen[str]:
    return procs.popen(wrk_cmd(cfg, port, seconds), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_wrk(p: subprocess.Popen[str], *, interrupt: bool = False) -> dict[str, Any]:
    """Wait for wrk (after a SIGINT if *interrupt*: wrk then stops and reports); its JSON line, parsed."""
    if interrupt:
        p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=900)
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            raw: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
            return raw
    raise RuntimeError(f"wrk printed no results (exit {p.returncode}):\n{out}\n{err}")


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Requests, rate, failures and latency percentiles (ms) of one or more wrk runs taken together.

    Each run gives its latency at fixed percentile levels; the run's requests between two
    levels are counted at the upper level's value, and the percentiles of all runs together
    are read off the merged list (exact at the levels for one run; for several, within 0.1 %
    of rank).
    """
    requests = sum(r["requests"] for r in runs)
    seconds = sum(r["duration_us"] for r in runs) / 1e6
    errors = {k: sum(r["errors"][k] for r in runs) for k in runs[0]["errors"]}
    points: list[tuple[float, float]] = []
    for r in runs:
        lat = r["latency_us"]
        prev = 0.0
        for level, value in zip(lat["levels"], lat["values"], strict=True):
            points.append((value, r["requests"] * (level - prev) / 100))
            prev = level
    points.sort()
    total = sum(w for _, w in points)

    def at(q: float) -> float:
        target = q / 100 * total * (1 - 1e-9)
        cum = 0.0
        for value, weight in points:
            cum += weight
            if cum >= target:
                return value / 1e3
        return points[-1][0] / 1e3 if points else 0.0

    return {
        "requests": requests,
        "seconds": seconds,
        "rps": requests / seconds if seconds else 0.0,
        "failed": sum(errors.values()),
        "errors": errors,
        "p50_ms": at(50),
        "p90_ms": at(90),
        "p99_ms": at(99),
        "p999_ms": at(99.9),
        "max_ms": max(r["latency_us"]["max"] for r in runs) / 1e3,
        "mean_ms": sum(r["latency_us"]["mean"] * r["requests"] for r in runs) / max(1, requests) / 1e3,
        "windows": len(runs),
    }


def run_wrk(cfg: Config, port: int, seconds: int, procs: Processes) -> dict[str, Any]:
    return finish_wrk(start_wrk(cfg, port, seconds, procs))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of *pid* so far (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / CLK_TCK, sum(values) / CLK_TCK


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def load_window(cfg: Config, server: Server, seconds: int, procs: Processes, redis_pid: int | None) -> dict[str, Any]:
    """One wrk window on *server*, with the CPU seconds its workers, master, wrk and redis-server used meanwhile."""
    workers = server.workers()
    watched = {"workers": workers, "master": [server.master], "redis": [redis_pid] if redis_pid else []}
    before = {name: sum(cpu_seconds(p) for p in pids) for name, pids in watched.items()}
    busy0, total0 = machine_cpu()
    reaped0 = children_cpu()
    raw = run_wrk(cfg, server.port, seconds, procs)
    reaped = children_cpu() - reaped0  # wrk: the only child reaped meanwhile
    busy1, total1 = machine_cpu()
    after = {name: sum(cpu_seconds(p) for p in pids) for name, pids in watched.items()}
    if server.workers() != workers:
        raise RuntimeError(f"{server.config}: workers changed during the load: {workers} -> {server.workers()}")
    cpu = {name: after[name] - before[name] for name in watched}
    cpu["wrk"] = reaped
    return {"wrk": raw, "cpu_s": cpu, "machine_busy_s": busy1 - busy0, "machine_total_s": total1 - total0}


def measure_loads(data: Data, cfg: Config, servers: dict[str, Server], procs: Processes) -> dict[str, dict[str, Any]]:
    """cfg.duration s of wrk per configuration, in cfg.rounds rounds in which every configuration takes a turn.

    Interleaved (the order rotates each round) so that a slow spell of the machine lands on
    every configuration alike rather than on one; the servers not under load sit idle.
    """
    seconds = max(1, cfg.duration // cfg.rounds)
    windows: dict[str, list[dict[str, Any]]] = {c: [] for c in servers}
    order = list(servers)
    for c in order:  # untimed: the first requests of fresh workers are slower (page faults, first attach)
        log(f"warm-up: {cfg.warmup} s of wrk on {c}")
        run_wrk(cfg, servers[c].port, cfg.warmup, procs)
    for r in range(cfg.rounds):
        log(f"load round {r + 1} of {cfg.rounds}: {seconds} s of wrk -t{cfg.threads} -c{cfg.connections} each")
        for c in order[r % len(order) :] + order[: r % len(order)]:
            redis_pid = data.redis_proc.pid if c == "redis" and data.redis_proc else None
            w = load_window(cfg, servers[c], seconds, procs, redis_pid)
            windows[c].append(w)
            s = summarize([w["wrk"]])
            log(f"  {c}: {s['rps']:,.0f} req/s, p99 {s['p99_ms']:.1f} ms, {s['failed']} failed")
    out = {}
    for c, ws in windows.items():
        res = summarize([w["wrk"] for w in ws])
        per = max(1, res["requests"])
        res["cpu_us_per_request"] = {name: sum(w["cpu_s"][name] for w in ws) / per * 1e6 for name in ws[0]["cpu_s"]}
        res["machine_busy"] = sum(w["machine_busy_s"] for w in ws) / max(1e-9, sum(w["machine_total_s"] for w in ws))
        res["rps_by_window"] = [summarize([w["wrk"]])["rps"] for w in ws]
        res["raw_windows"] = ws
        out[c] = res
    return out


# --- memory --------------------------------------------------------------------------------


def mapped_shm(pids: Sequence[int]) -> set[Path]:
    """Files in /dev/shm that any of *pids* maps (/proc/<pid>/maps)."""
    out = set()
    for pid in pids:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].startswith("/dev/shm/"):
                    out.add(Path(parts[5].rstrip("\n").removesuffix(" (deleted)")))
    return out


def _bell_pid(name: str) -> int:
    """The PID in a doorbell's name (``sem.hollow.<root id>.<namespace>.<pid>.<n>``), or 0."""
    try:
        return int(name.split(".")[-2])
    except (IndexError, ValueError):
        return 0


def measure_memory(data: Data, config: str, server: Server, version: int) -> dict[str, Any]:
    """PSS of the workers and the master, plus the /dev/shm files they share, every page counted once.

    As in core.py: total = sum PSS - the part of it that is pages of /dev/shm files they map
    (``Pss_Shmem``) + the space those files occupy in /dev/shm (a tmpfs file costs its whole
    size in RAM, mapped or not). The shm files are those the processes map (hollowd's state
    file), their doorbell semaphores (found by name) and, for hollowd, the served version's lockfile and the
    announcement. The pickle file is not counted (not needed once loaded), nor are hollowd's
    producer (in production: the daemon, one per machine) and the older versions it retains.
    """
    workers = server.workers()
    rollups = {pid: smaps_rollup(pid) for pid in [*workers, server.master]}
    shm = mapped_shm(list(rollups))
    # glibc's sem_open maps a temporary name it then renames: /proc/<pid>/maps shows "sem.XXXXXX (deleted)", so
    # the doorbells are found by name instead (sem.<prefix><pid>.<n>)
    bells = "sem." + doorbell.prefix(data.hollow_root, NAMESPACE)
    shm |= {e for e in Path("/dev/shm").iterdir() if e.name.startswith(bells) and _bell_pid(e.name) in rollups}
    if BACKENDS[config] == "hollow":
        shm |= {
            data.ns_dir / str(version),
            lease.lock_path(data.ns_dir, version),
            layout.announcement_path(data.ns_dir),
        }
    shm = {p for p in shm if p.exists()}
    pss_workers = sum(rollups[p]["Pss"] for p in workers)
    pss_master = rollups[server.master]["Pss"]
    pss_shmem = sum(r.get("Pss_Shmem", 0) for r in rollups.values())
    shm_bytes = allocated_bytes(sorted(shm))
    out: dict[str, Any] = {
        "workers": len(workers),
        "pss_workers_bytes": pss_workers,
        "pss_master_bytes": pss_master,
        "pss_shmem_bytes": pss_shmem,
        "shm_file_bytes": shm_bytes,
        "shm_files": sorted(str(p) for p in shm),
        "server_pss_bytes": 0,
        "total_bytes": pss_workers + pss_master - pss_shmem + shm_bytes,
        "private_per_worker_bytes": (pss_workers - sum(rollups[p].get("Pss_Shmem", 0) for p in workers))
        / max(1, len(workers)),
        "rss_workers_bytes": sum(rollups[p]["Rss"] for p in workers),
    }
    if config == "redis" and data.redis_proc is not None:
        r = smaps_rollup(data.redis_proc.pid)
        client = redis.Redis(port=data.redis_port)
        try:
            info = client.info("memory")
        finally:
            client.close()
        out["server_pss_bytes"] = r["Pss"]
        out["server_rss_bytes"] = r["Rss"]
        out["server_used_memory_bytes"] = info["used_memory"]
        out["total_bytes"] += r["Pss"]
    return out


# --- switch under load ------------------------------------------------------------------------


class LeaseWatch(threading.Thread):
    """Polls /proc/locks: when has every worker a lease on version v (or a later one)?

    One read of /proc/locks per poll (every 2 ms) for all the versions' lockfiles at once; a
    version whose lockfile does not exist yet (live publishing) is looked for at every poll.
    ``reached[v]`` is the wall clock (ns) of the first poll at which every worker held a
    lease on v or later; ``held`` is every (worker, version) pair ever seen.
    """

    def __init__(self, ns_dir: Path, versions: Sequence[int], workers: Sequence[int]) -> None:
        super().__init__(name="lease-watch", daemon=True)
        self.ns_dir = ns_dir
        self.versions = sorted(versions)
        self.workers = list(workers)
        self.files: dict[tuple[int, int, int], int] = {}
        self.reached: dict[int, int] = {}
        self.held: set[tuple[int, int]] = set()
        self.changed = threading.Condition()
        self.stopping = threading.Event()
        self.polls = 0

    def find_lockfiles(self) -> None:
        known = set(self.files.values())
        for v in self.versions:
            if v not in known:
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(lease.lock_path(self.ns_dir, v))
                    self.files[(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)] = v

    def read(self) -> dict[int, set[int]]:
        """Worker PID -> versions it holds a lease on."""
        out: dict[int, set[int]] = {}
        with open("/proc/locks") as f:
            lines = f.readlines()
        for line in lines:
            parts = line.split()
            if "->" in parts or len(parts) < 6:
                continue
            try:
                major, minor, inode = parts[5].split(":")
                v = self.files.get((int(major, 16), int(minor, 16), int(inode)))
            except ValueError:
                continue
            if v is not None:
                out.setdefault(int(parts[4]), set()).add(v)
        return out

    def run(self) -> None:
        while not self.stopping.is_set():
            if len(self.files) < len(self.versions):
                self.find_lockfiles()
            held = self.read()
            now = time.time_ns()
            low = min((max(held.get(w, {0})) for w in self.workers), default=0)
            with self.changed:
                self.held |= {(w, v) for w, vs in held.items() for v in vs}
                self.polls += 1
                for v in self.versions:
                    if v <= low and v not in self.reached:
                        self.reached[v] = now
                self.changed.notify_all()
            time.sleep(0.002)

    def wait_for(self, version: int, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: version in self.reached, timeout)

    def wait_polled(self, timeout: float = 10) -> bool:
        """Wait until the first poll has been made (what the workers hold before the burst is seen)."""
        with self.changed:
            return self.changed.wait_for(lambda: self.polls > 0, timeout)

    def stop(self) -> None:
        self.stopping.set()
        self.join()


def revision(data: Data, keys: Sequence[int], k: int, titles: dict[int, str]) -> list[dict[str, Any]]:
    """Records *keys* with the title of revision *k* (updates *titles*, id -> title now served)."""
    out = []
    for key in keys:
        titles[key] = f"{data.records[key]['title']} (rev {k})"
        out.append({**data.records[key], "title": titles[key]})
    return out


def announced_at(data: Data, version: int) -> int:
    """When the announcement of *version* was made (its announced_at_ns, wall clock)."""
    announcement = layout.read_announcement(data.ns_dir)
    if announcement is None or announcement.version != version:
        raise RuntimeError(f"announced {announcement}, expected version {version}")
    return announcement.announced_at_ns


def publish_revision(data: Data, changed: list[dict[str, Any]]) -> tuple[int, dict[str, float]]:
    """One incremental cycle; returns (version, seconds: whole call and the producer's stages)."""
    t0 = time.perf_counter()
    v = data.producer.run_incremental(lambda delta: [delta.upsert(TYPE, r) for r in changed])
    return v, {"total": time.perf_counter() - t0, **data.producer.last_timings}


def measure_switch(data: Data, cfg: Config, server: Server, procs: Processes) -> dict[str, Any]:
    """A burst of cfg.versions announcements while wrk runs, between two steady windows.

    prebuilt (default): the versions are published before the load by ``run_incremental``
    (each changes cfg.changes titles) while ``pin`` keeps the workers on the first version;
    the burst announces them back to back (``pin`` of each, ``unpin`` for the last), each
    as soon as every worker holds a lease on the one before. live: ``run_incremental``
    back to back under load, each announcing its version as it is published.
    """
    workers = server.workers()
    rng = random.Random(cfg.seed + 3)
    titles: dict[int, str] = {}
    plan = [rng.sample(range(len(data.records)), cfg.changes) for _ in range(cfg.versions)]
    builds: list[dict[str, float]] = []
    announce_ns: dict[int, int] = {}
    announce_call_ms: list[float] = []
    out: dict[str, Any] = {"mode": cfg.publish, "workers": workers}
    first = data.version
    if cfg.publish == "prebuilt":
        data.producer.pin(first)
        versions = []
        for k, keys in enumerate(plan, 1):
            v, took = publish_revision(data, revision(data, keys, k, titles))
            versions.append(v)
            builds.append(took)
            log(f"  switch: built version {v} ({took['total']:.2f} s)")
        still = set(lease.holders(lease.lock_path(data.ns_dir, first)))
        if not set(workers) <= still:
            raise RuntimeError(f"pinned to {first}, but only {sorted(still)} of {workers} hold it")
    else:
        versions = list(range(first + 1, first + 1 + cfg.versions))  # what the producer will mint
    out["versions"] = versions
    out["builds"] = builds

    log(f"  switch: steady window before the burst ({cfg.steady} s)")
    before = run_wrk(cfg, server.port, cfg.steady, procs)
    log(f"  switch: burst of {cfg.versions} announcements under load")
    wrk = start_wrk(cfg, server.port, 3600, procs)
    watch: LeaseWatch | None = None
    try:
        time.sleep(1.0)  # wrk's connections are up and the workers busy
        watch = LeaseWatch(data.ns_dir, [first, *versions], workers)
        watch.start()
        watch.wait_polled()
        if cfg.publish == "prebuilt":
            for i, v in enumerate(versions):
                t0 = time.perf_counter()
                if i < len(versions) - 1:
                    data.producer.pin(v)
                else:
                    data.producer.unpin()  # announces the latest, unpinned
                announce_call_ms.append((time.perf_counter() - t0) * 1e3)
                announce_ns[v] = announced_at(data, v)
                if not watch.wait_for(v, 60):
                    log(f"  switch: not every worker holds version {v} after 60 s")
        else:
            for k, keys in enumerate(plan, 1):
                v, took = publish_revision(data, revision(data, keys, k, titles))
                if v != versions[k - 1]:
                    raise RuntimeError(f"the producer minted {v}, expected {versions[k - 1]}")
                announce_ns[v] = announced_at(data, v)
                builds.append(took)
                log(f"  switch: published version {v} under load ({took['total']:.2f} s)")
            if not watch.wait_for(versions[-1], 60):
                log(f"  switch: not every worker holds version {versions[-1]} after 60 s")
        time.sleep(1.0)
    finally:
        burst = finish_wrk(wrk, interrupt=True)
        if watch is not None:
            watch.stop()
    assert watch is not None
    out["announce_to_all_leased_ms"] = {
        v: (watch.reached[v] - announce_ns[v]) / 1e6 if v in watch.reached else None for v in versions
    }
    out["announce_call_ms"] = announce_call_ms
    out["versions_seen_per_worker"] = {w: sorted(v for p, v in watch.held if p == w) for w in workers}
    log(f"  switch: steady window after the burst ({cfg.steady} s)")
    after = run_wrk(cfg, server.port, cfg.steady, procs)
    out["before"], out["burst"], out["after"] = summarize([before]), summarize([burst]), summarize([after])
    out["steady"] = summarize([before, after])
    out["raw_windows"] = {"before": before, "burst": burst, "after": after}

    last = versions[-1]
    out["last_version"] = last
    out["workers_on_last"] = set(workers) <= set(lease.holders(lease.lock_path(data.ns_dir, last)))
    out["workers_on_older"] = sorted(
        {w for v in [first, *versions[:-1]] for w in lease.holders(lease.lock_path(data.ns_dir, v)) if w in workers}
    )
    out["workers_unchanged"] = server.workers() == workers
    expect = {key: (titles[key], data.records[key]["year"], last) for key in list(titles)[:20]}
    check_answers(server.port, data, "hollow", expect)  # the changed titles, from the last version
    out["answers_checked"] = len(expect)
    return out


# --- the app without HTTP ------------------------------------------------------------------------


def time_apps(data: Data, backends: Sequence[str], keys: Sequence[int]) -> dict[str, dict[str, float]]:
    """µs per call of each backend's WSGI app itself (lookup + JSON) in this process: no HTTP, no gunicorn.

    Timed in batches of 100 calls, backends taking turns in 10 rounds (as core.py does).
    """

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        pass

    def runner(app: Any) -> Any:
        def run(batch: Sequence[int]) -> int:
            acc = 0
            for k in batch:
                body = app({"REQUEST_METHOD": "GET", "PATH_INFO": f"/movie/{k}", "QUERY_STRING": ""}, start_response)
                acc += sum(len(b) for b in body)
                close = getattr(body, "close", None)
                if close is not None:
                    close()
            return acc

        return run

    try:
        runs = {b: runner(gunicorn_app.make_app(b, data.env())) for b in backends}
        for run in runs.values():
            run(keys[:2000])  # warm up
        ns: dict[str, list[float]] = {b: [] for b in backends}
        step = -(-len(keys) // 10)
        for r in range(10):
            for b, run in runs.items():
                ns[b] += time_batches(run, keys[r * step : (r + 1) * step], 100)
    finally:
        hollow.wsgi.close_all()
    return {b: {"median_us": statistics.median(v) / 1e3, "p99_us": percentile(v, 99) / 1e3} for b, v in ns.items()}


# --- the configurations ------------------------------------------------------------------------------


def boot_config(data: Data, cfg: Config, config: str, procs: Processes, out: dict[str, Any]) -> Server:
    """cfg.boots timed boots of *config* (all but the last stopped again); returns the running server."""
    server: Server | None = None
    for attempt in range(cfg.boots):
        log(f"{config}: boot {attempt + 1} of {cfg.boots}")
        server, took = boot(data, cfg, config, procs, attempt)
        out["boots"].append(took)
        log(f"  all {cfg.workers} workers answered after {took['all_s']:.2f} s")
        if attempt < cfg.boots - 1:
            out["logs"].append(stop_server(server, procs))
            server = None
    assert server is not None
    keys = sample_keys(data, 20, cfg.seed + 4)
    expect = {k: (data.records[k]["title"], data.records[k]["year"], data.version) for k in keys}
    try:
        check_answers(server.port, data, config, expect)
    except BaseException:
        out["logs"].append(stop_server(server, procs))
        raise
    return server


def measure_all(data: Data, cfg: Config, procs: Processes) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every configuration: boots, load (interleaved), memory; then the switch on hollowd; then the app alone."""
    per: dict[str, dict[str, Any]] = {c: {"boots": [], "logs": []} for c in cfg.configs}
    servers: dict[str, Server] = {}
    try:
        for c in cfg.configs:
            servers[c] = boot_config(data, cfg, c, procs, per[c])
        loads = measure_loads(data, cfg, servers, procs)
        for c, server in servers.items():
            per[c]["load"] = loads[c]
            per[c]["memory"] = measure_memory(data, c, server, data.version)
            log(f"{c}: memory total {per[c]['memory']['total_bytes'] / MIB:,.1f} MiB")
        for c in [c for c in servers if c != "hollow"]:
            per[c]["logs"].append(stop_server(servers.pop(c), procs))
        if "hollow" in servers:
            log("hollow: switch under load")
            per["hollow"]["switch"] = measure_switch(data, cfg, servers["hollow"], procs)
    finally:
        for c in list(servers):
            per[c]["logs"].append(stop_server(servers.pop(c), procs))
    log("the WSGI app alone, in this process")
    backends = list(dict.fromkeys(BACKENDS[c] for c in cfg.configs))
    app_us = time_apps(data, backends, sample_keys(data, min(20_000, len(data.records)), cfg.seed + 5))
    return per, app_us


# --- reporting ------------------------------------------------------------------------------------


def ms(x: float) -> str:
    return f"{x:,.2f}" if x < 10 else f"{x:,.1f}"


def boot_table(res: dict[str, Any], cfg: Config) -> str:
    med = {c: statistics.median(b["all_s"] for b in res[c]["boots"]) for c in res}
    first = {c: statistics.median(b["first_s"] for b in res[c]["boots"]) for c in res}
    ref = med.get("hollow", 0.0)
    rows = [
        [
            LABELS[c],
            f"{med[c]:.2f}",
            f"{first[c]:.2f}",
            " ".join(f"{b['all_s']:.2f}" for b in res[c]["boots"]),
            ratio(med[c], ref),
            BOOT_NOTES[c],
        ]
        for c in res
    ]
    return render(
        f"BOOT: seconds from Popen of gunicorn until all {cfg.workers} workers have answered (median of "
        f"{cfg.boots}; alternative / hollowd)",
        ["configuration", "all answered", "first answer", "runs", "x hollowd", "note"],
        rows,
    )


def memory_table(res: dict[str, Any], cfg: Config) -> str:
    ref = res["hollow"]["memory"]["total_bytes"] if "hollow" in res else 0
    rows = []
    for c in res:
        m = res[c]["memory"]
        target = ""
        if c == "perworker" and ref:
            target = f"(a) >= 6x hollowd: {verdict(m['total_bytes'] >= 6 * ref)}"
        elif c == "preload" and ref:
            target = f"(b) >= 3x hollowd: {verdict(m['total_bytes'] >= 3 * ref)}"
        elif c == "redis":
            target = "total includes redis-server's PSS"
        rows.append(
            [
                LABELS[c],
                f"{m['pss_workers_bytes'] / MIB:,.1f}",
                f"{m['pss_master_bytes'] / MIB:,.1f}",
                f"{m['pss_shmem_bytes'] / MIB:,.1f}",
                f"{m['shm_file_bytes'] / MIB:,.1f}",
                f"{m['server_pss_bytes'] / MIB:,.1f}" if m["server_pss_bytes"] else "-",
                f"{m['total_bytes'] / MIB:,.1f}",
                f"{m['private_per_worker_bytes'] / MIB:,.1f}",
                ratio(m["total_bytes"], ref),
                target,
            ]
        )
    table = render(
        f"MEMORY of {cfg.workers} {cfg.worker_class} workers + master after {cfg.duration} s of random lookups, "
        f"N={cfg.records:,} "
        "(MiB; total = PSS of workers and master - shm pages they map + shm files; alternative / hollowd)",
        [
            "configuration",
            "workers PSS",
            "master PSS",
            "shm in PSS",
            "shm files",
            "server PSS",
            "total",
            "private/worker",
            "x hollowd",
            "target",
        ],
        rows,
    )
    if "redis" in res:
        m = res["redis"]["memory"]
        table += (
            f"redis-server: RSS {m['server_rss_bytes'] / MIB:,.1f} MiB, PSS {m['server_pss_bytes'] / MIB:,.1f} MiB, "
            f"used_memory {m['server_used_memory_bytes'] / MIB:,.1f} MiB (INFO memory)\n"
        )
    return table


def throughput_table(res: dict[str, Any], cfg: Config) -> str:
    ref = res["hollow"]["load"] if "hollow" in res else None
    rows = []
    for c in res:
        r = res[c]["load"]
        target = ""
        if ref and c in ("perworker", "redis"):
            want = 0.9 if c == "perworker" else 2.0
            paired = statistics.median(h / a for h, a in zip(ref["rps_by_window"], r["rps_by_window"], strict=True))
            target = f"hollowd >= {want:g}x: {verdict(ref['rps'] >= want * r['rps'])} ({ref['rps'] / r['rps']:.2f}x; "
            target += f"median of per-round ratios {paired:.2f}x)"
        rows.append(
            [
                LABELS[c],
                f"{r['rps']:,.0f}",
                f"{min(r['rps_by_window']):,.0f}-{max(r['rps_by_window']):,.0f}",
                ms(r["p50_ms"]),
                ms(r["p99_ms"]),
                ms(r["max_ms"]),
                str(r["failed"]),
                ratio(r["rps"], ref["rps"]) if ref else "-",
                ratio(r["p99_ms"], ref["p99_ms"]) if ref else "-",
                target,
            ]
        )
    return render(
        f"THROUGHPUT and LATENCY of GET /movie/<id>: wrk -t{cfg.threads} -c{cfg.connections}, "
        f"{cfg.rounds} rounds x {cfg.duration // cfg.rounds} s per configuration (taking turns), uniform random ids, "
        f"{cfg.workers} {cfg.worker_class} workers (ms; alternative / hollowd)",
        [
            "configuration",
            "req/s",
            "min-max/round",
            "p50",
            "p99",
            "max",
            "failed",
            "x hollowd req/s",
            "x hollowd p99",
            "target",
        ],
        rows,
    )


def cpu_table(res: dict[str, Any], app_us: dict[str, dict[str, float]]) -> str:
    rows = []
    for c in res:
        r = res[c]["load"]
        cpu = r["cpu_us_per_request"]
        total = sum(cpu.values())
        app = app_us.get(BACKENDS[c])
        rows.append(
            [
                LABELS[c],
                f"{cpu['workers']:,.0f}",
                f"{cpu['master']:,.1f}",
                f"{cpu['wrk']:,.0f}",
                f"{cpu['redis']:,.0f}" if c == "redis" else "-",
                f"{total:,.0f}",
                f"{r['machine_busy'] * 100:.0f}%",
                f"{app['median_us']:.1f}" if app else "-",
                "",
            ]
        )
    return render(
        f"CPU per request during the load (us of CPU time per completed request, from /proc; {os.cpu_count()} CPUs; "
        "'app alone' = median us per call of the WSGI app in the benchmark's process, no HTTP)",
        ["configuration", "workers", "master", "wrk", "redis-server", "total", "machine busy", "app alone", ""],
        rows,
    )


def switch_table(sw: dict[str, Any], cfg: Config) -> str:
    steady_p99 = sw["steady"]["p99_ms"]
    failed = sum(sw[w]["failed"] for w in ("before", "burst", "after"))
    rows = []
    windows = (("before", "steady, before"), ("burst", "burst"), ("after", "steady, after"), ("steady", "steady, both"))
    for window, label in windows:
        r = sw[window]
        target = ""
        if window == "burst":
            target = f"0 failed in all windows: {verdict(failed == 0)}; burst p99 / steady p99 = "
            target += f"{r['p99_ms'] / steady_p99:.2f}x"
        rows.append(
            [
                label,
                f"{r['seconds']:.1f}",
                f"{r['requests']:,}",
                f"{r['rps']:,.0f}",
                ms(r["p50_ms"]),
                ms(r["p99_ms"]),
                ms(r["p999_ms"]),
                ms(r["max_ms"]),
                str(r["failed"]),
                target,
            ]
        )
    how = (
        "versions built before the load, announced back to back (pin / unpin), each as soon as every worker "
        "holds the previous one"
        if sw["mode"] == "prebuilt"
        else "run_incremental back to back under load, each announcing its version"
    )
    table = render(
        f"SWITCH under load: {len(sw['versions'])} announcements while wrk -t{cfg.threads} -c{cfg.connections} runs "
        f"on hollowd ({how}; ms)",
        ["window", "seconds", "requests", "req/s", "p50", "p99", "p99.9", "max", "failed", "target"],
        rows,
    )
    lat = sw["announce_to_all_leased_ms"]
    got = [x for x in lat.values() if x is not None] or [float("nan")]
    per = ", ".join(f"{v}: {'-' if x is None else f'{x:.1f}'}" for v, x in lat.items())
    lines = [
        f"announce -> all {len(sw['workers'])} workers hold a lease on it: median {statistics.median(got):.1f} ms, "
        f"max {max(got):.1f} ms"
        + (f", NEVER for {len(lat) - len(got)} versions" if len(got) < len(lat) else "")
        + f" (by version: {per})",
    ]
    if sw["announce_call_ms"]:
        lines.append(
            f"announce call (pin / unpin: write, rename, ring doorbells): median "
            f"{statistics.median(sw['announce_call_ms']):.2f} ms"
        )
    if sw["builds"]:
        totals = [b["total"] for b in sw["builds"]]
        build = [b.get("build", 0.0) for b in sw["builds"]]
        publish = [b.get("publish", 0.0) for b in sw["builds"]]
        lines.append(
            f"each version: run_incremental of {cfg.changes:,} changed titles over N={cfg.records:,}: median "
            f"{statistics.median(totals):.2f} s (build {statistics.median(build):.2f} s, write "
            f"{statistics.median(publish):.2f} s), max {max(totals):.2f} s"
            + (" (built before the load, workers pinned to the first version)" if sw["mode"] == "prebuilt" else "")
        )
    seen = {len(v) for v in sw["versions_seen_per_worker"].values()}
    lines.append(
        f"versions each worker was seen holding during the burst: {min(seen)}-{max(seen)} of {len(sw['versions']) + 1}"
    )
    lines.append(
        f"workers end on version {sw['last_version']}: {'yes' if sw['workers_on_last'] else 'NO'}; workers still "
        f"holding older versions: {sw['workers_on_older'] or 'none'}; same workers throughout: "
        f"{'yes' if sw['workers_unchanged'] else 'NO'}; {sw['answers_checked']} changed titles answered from version "
        f"{sw['last_version']}"
    )
    return table + "\n".join(lines) + "\n"


def logs_line(res: dict[str, Any]) -> str:
    trouble = [(c, line) for c in res for lg in res[c]["logs"] for line in lg["trouble"]]
    boots = sum(lg["worker_boots"] for c in res for lg in res[c]["logs"])
    expected = sum(len(res[c]["boots"]) for c in res)
    stray = [p for c in res for lg in res[c]["logs"] for p in lg["stray_workers_killed"]]
    exits = sorted({lg["exit_code"] for c in res for lg in res[c]["logs"]})
    text = (
        f"gunicorn logs: {len(trouble)} error/warning lines; {boots} worker boots for {expected} server starts; "
        f"master exit codes {exits}; stray workers killed: {len(stray)}\n"
    )
    for c, line in trouble[:20]:
        text += f"  {c}: {line}\n"
    return text


# --- main -------------------------------------------------------------------------------------------


def warm_bytecode(data: Data) -> None:
    """Import what the servers import once, so that no boot pays for compiling it (bytecode under our root)."""
    run_dir = data.root / "run"
    run_dir.mkdir(exist_ok=True)
    env = gunicorn_env(data, "redis", run_dir)
    code = "import gunicorn.app.wsgiapp, gunicorn.workers.sync, gunicorn.workers.gthread, gunicorn.glogging, "
    code += "hollow.wsgi, hollow.gunicorn, "
    code += "redis, msgpack, bench.gunicorn_app"
    subprocess.run([sys.executable, "-c", code], cwd=run_dir, env=env, check=True)


def run(cfg: Config, root: Path, procs: Processes) -> tuple[dict[str, Any], str]:
    """Run every measurement; returns (results for JSON, the printed report)."""
    results: dict[str, Any] = {"config": cfg.__dict__}
    data = prepare(root, cfg, procs)
    try:
        results["setup_s"] = data.setup_s
        warm_bytecode(data)
        per, app_us = measure_all(data, cfg, procs)
    finally:
        data.producer.close()
    results["configs"] = per
    results["app_alone_us"] = app_us
    parts = [
        boot_table(per, cfg),
        throughput_table(per, cfg),
        cpu_table(per, app_us),
        memory_table(per, cfg),
    ]
    if "hollow" in per:
        parts.append(switch_table(per["hollow"]["switch"], cfg))
    parts.append(logs_line(per))
    return results, "\n".join(parts)


def our_shm_entries(root: Path, pids: Sequence[int]) -> list[str]:
    """Entries of /dev/shm that belong to this run: the root, our doorbells, anything named after our PIDs."""
    bells = "sem." + doorbell.prefix(root / "hollow", NAMESPACE)
    marks = [f".{p}." for p in pids]
    return sorted(
        e.name
        for e in Path("/dev/shm").iterdir()
        if e.name == root.name or e.name.startswith(bells) or any(m in e.name for m in marks)
    )


def remove_doorbells(root: Path) -> None:
    """Remove semaphores readers of our root left in /dev/shm (they unlink theirs at exit; a killed one cannot)."""
    bells = "sem." + doorbell.prefix(root / "hollow", NAMESPACE)
    for entry in Path("/dev/shm").iterdir():
        if entry.name.startswith(bells):
            entry.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark in a fresh root under /dev/shm; every process stopped, every file removed, whatever happens."""
    cfg, json_path = parse_config(argv)
    missing = [tool for tool in ("wrk", "redis-server") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"bench/gunicorn.py needs {' and '.join(missing)}: apt-get install {' '.join(missing)}")
    root = Path("/dev/shm") / f"hollow-bench-gunicorn-{os.getpid()}"
    root.mkdir()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on SIGTERM as on Ctrl-C
    procs = Processes()
    before = environment()
    try:
        results, report = run(cfg, root, procs)
    finally:
        killed = procs.close()
        remove_doorbells(root)
        hollow.wsgi.close_all()
        shutil.rmtree(root, ignore_errors=True)
        pids = [os.getpid(), *(p.pid for p in procs.procs), *procs.workers]
        left = our_shm_entries(root, pids)
        if killed or left:
            log(f"cleanup: killed stray workers {killed}; left in /dev/shm: {left}")
    after = environment()
    results["environment"] = {"before": before, "after": after, "seconds": round(time.perf_counter() - T0, 1)}
    results["cleanup"] = {"stray_workers_killed": killed, "left_in_dev_shm": left}
    print(
        f"hollowd gunicorn benchmark: N={cfg.records:,}, {cfg.workers} {cfg.worker_class} workers"
        f"{' (quick)' if cfg.quick else ''}; Python {before['python']}, {before['cpus']} CPUs, Linux "
        f"{before['kernel']}; {results['environment']['seconds']} s\n"
        f"machine: load average {before['loadavg_1_5_15']} before, {after['loadavg_1_5_15']} after; "
        f"1M-iteration Python loop {before['cpu_check_ms']} ms before, {after['cpu_check_ms']} ms after\n"
        f"wrk: -t{cfg.threads} -c{cfg.connections} --timeout 10s, {LUA_SCRIPT.name} (uniform random ids, the same "
        f"sequence for every configuration); "
        f"gunicorn: {' '.join(gunicorn_kind(cfg))} -w {cfg.workers} --backlog 2048 --timeout 120\n"
        f"setup: {', '.join(f'{k} {v:.1f} s' for k, v in results['setup_s'].items())}\n"
    )
    print(report)
    print(
        f"cleanup: every process stopped ({len(procs.procs)} started, {len(killed)} stray workers killed); "
        f"left in /dev/shm: {left or 'nothing'}"
    )
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=2, default=str))
        log(f"results written to {json_path}")


if __name__ == "__main__":
    main()

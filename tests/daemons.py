"""hollowd as a real subprocess for tests, with a NOTIFY_SOCKET the test reads, and helpers around it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hollow import layout

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"

#: A daemon serving one namespace, movies, from a file source, with Movie's primary key (``movies_config``).
MOVIES_CONFIG = """\
[daemon]
root = "{root}"
state_dir = "{state}"
control_socket = "{state}/control.sock"

[namespaces.movies]
schema = "{schema}"
source = "{source}"
type = "Movie"
debounce = {debounce}
{namespace}
[namespaces.movies.types.Movie]
primary_key = "id"
"""


def movies_config(
    tmp: Path,
    root: Path,
    source: str | Path,
    *,
    state: Path | None = None,
    schema: Path = SCHEMAS / "movies.capnp",
    debounce: float = 0.1,
    namespace: str = "",
    more: str = "",
) -> Path:
    """``tmp/hollowd.toml``: :data:`MOVIES_CONFIG` publishing *source* into *root* (state in ``tmp/state``
    unless *state*), with the lines *namespace* in the namespace's table, followed by *more* (which goes
    on in the Movie table until its first header)."""
    config = tmp / "hollowd.toml"
    state = tmp / "state" if state is None else state
    text = MOVIES_CONFIG.format(
        root=root, state=state, schema=schema, source=source, debounce=debounce, namespace=namespace
    )
    config.write_text(text + more)
    return config


class Daemon:
    """hollowd in a subprocess, with a NOTIFY_SOCKET this test reads."""

    def __init__(
        self,
        config: Path | None,
        tmp: Path,
        env: dict[str, str] | None = None,
        *,
        wrapper: tuple[str, ...] = (),
        argv: list[str] | None = None,
        user: Any = None,
        cwd: str | None = None,
        base_env: dict[str, str] | None = None,
    ) -> None:
        """hollowd with ``--config`` *config*, or the command line *argv* (an installed ``hollowd``, say),
        optionally as *user* (a ``tests.conftest.User``) from *cwd*."""
        self.notify_path = tmp / f"notify-{time.monotonic_ns()}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.notify_path))
        self.log = tmp / "daemon.log"
        env = {**(os.environ if base_env is None else base_env), **(env or {}), "NOTIFY_SOCKET": str(self.notify_path)}
        extra: dict[str, Any] = {}
        if user is not None:
            self.notify_path.chmod(0o777)
            env = user.env(env)
            extra = {"user": user.uid, "group": user.gid, "extra_groups": []}
        if argv is None:
            assert config is not None
            argv = [sys.executable, "-m", "hollowd.daemon", "--config", str(config)]
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([*wrapper, *argv], stderr=log, env=env, cwd=cwd, **extra)

    def notifications(self, until: str, timeout: float = 60) -> list[str]:
        """Messages received until one contains *until* (AssertionError on timeout or exit)."""
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.1, min(1.0, deadline - time.monotonic())))
            try:
                msg = self.sock.recv(4096).decode()
            except TimeoutError:
                if self.proc.poll() is not None:
                    raise AssertionError(f"daemon exited {self.proc.returncode}: {self.log.read_text()}") from None
                continue
            got.append(msg)
            if until in msg:
                return got
        raise AssertionError(f"no {until!r} within {timeout} s; got {got}; log: {self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the daemon, wait for it, and keep what it said on the way out in ``last_words``."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=60)
        self.sock.setblocking(False)
        self.last_words: list[str] = []
        while True:
            try:
                self.last_words.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                break
        self.sock.close()
        return rc


def run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` to completion (the CLI, or a daemon expected to refuse to start)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120, check=False
    )


def write_jsonl(path: Path, records: list[dict[str, object]], *, partial: str = "") -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records) + partial)
    os.replace(tmp, path)


def announced(root: Path) -> int:
    a = layout.read_announcement(root / "movies")
    return a.version if a else 0


def wait_until(predicate: Callable[[], object], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)

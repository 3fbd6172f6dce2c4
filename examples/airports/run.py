"""``make run``: start hollowd on the airports example and show it serving.

The daemon runs with its state and control socket under the project's own
``var/`` (no root needed), publishes into ``$HOLLOW_ROOT`` or
``/dev/shm/hollow``, and logs to ``var/hollowd.log``. Once it is ready (the
systemd notify protocol, on a socket of our own), this shows ``hollow get``
answering and four reader processes attaching, says how to reach the daemon
from another terminal, then leaves it serving in the foreground until Ctrl-C.
If the daemon exits before it is ready, this says why at once and exits with
its status. ``make clean`` removes ``var/`` and the namespace this published.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hollow import layout

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
#: Seconds to wait for READY=1 (a first build of the example takes a few).
READY_TIMEOUT = 300.0


def main() -> int:
    root = layout.root_dir()
    var = PROJECT / "var"
    var.mkdir(exist_ok=True)
    state, sock, log_path = var / "state", var / "hollowd.sock", var / "hollowd.log"
    (var / "root").write_text(f"{root}\n")  # for make clean: the namespace this run publishes
    with tempfile.TemporaryDirectory() as tmp, open(log_path, "wb") as log:
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(Path(tmp) / "notify"))
        notify.settimeout(0.5)
        env = {**os.environ, "NOTIFY_SOCKET": str(Path(tmp) / "notify"), "PYTHONPATH": str(PROJECT)}
        env["HOLLOWD_SOCKET"] = str(sock)  # for the hollow commands below
        daemon = subprocess.Popen(
            [BIN / "hollowd", "--root", str(root), "--state-dir", str(state), "--socket", str(sock)],
            env=env,
            stderr=log,
        )
        try:
            started = time.monotonic()
            if not _ready(notify, daemon, started):
                return _died(daemon, log_path)
            print(f"hollowd (pid {daemon.pid}) is ready after {time.monotonic() - started:.1f} s, serving {root}")
            print(f"its log: {_rel(log_path)}\n")
            print("$ hollow get airports Airport NZAA", flush=True)
            subprocess.run([BIN / "hollow", "--root", root, "get", "airports", "Airport", "NZAA"], check=True)
            print("\n$ hollow status airports", flush=True)
            subprocess.run([BIN / "hollow", "--root", root, "status", "airports"], check=True, env=env)
            print(flush=True)
            subprocess.run(
                [sys.executable, "-m", "examples.airports.demo", "--root", str(root), "--readers-only"],
                check=True,
                cwd=PROJECT,
            )
            exports = f"export HOLLOW_ROOT={shlex.quote(str(root))} HOLLOWD_SOCKET={shlex.quote(str(sock))}"
            print(
                f"\nhollowd keeps serving {root}; Ctrl-C stops it. From another terminal, reach it with:\n"
                f"  {exports}\n"
                f"  {_rel(BIN / 'hollow')} status\n"
                f"  {_rel(BIN / 'hollow')} pin airports 1\n"
                "make clean removes var/ and the airports namespace this published.",
                flush=True,
            )
            return daemon.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=60)
            notify.close()


def _ready(notify: socket.socket, daemon: subprocess.Popen[bytes], started: float) -> bool:
    """Wait for READY=1; False as soon as the daemon has exited (or never says it)."""
    while time.monotonic() - started < READY_TIMEOUT:
        try:
            if b"READY=1" in notify.recv(4096):
                return True
        except TimeoutError:
            pass
        if daemon.poll() is not None:
            return False
    return False


def _died(daemon: subprocess.Popen[bytes], log_path: Path) -> int:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        print(f"hollowd did not get ready within {READY_TIMEOUT:.0f} s; its log:", file=sys.stderr)
    else:
        print(f"hollowd exited with status {daemon.returncode} before it was ready:", file=sys.stderr)
    lines = log_path.read_text(errors="replace").splitlines()[-5:]
    print("\n".join(f"  {line}" for line in lines), file=sys.stderr)
    if daemon.returncode == 78 and not os.environ.get("HOLLOW_ROOT"):
        print(
            "(if the shared-memory root is another user's: HOLLOW_ROOT=/dev/shm/hollow-$USER make run)",
            file=sys.stderr,
        )
    return daemon.returncode or 1


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())

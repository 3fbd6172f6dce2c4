"""``make run``: start hollowd on the airports example and show it serving.

The daemon runs with its state under the project's own ``var/`` (no root
needed) and publishes into ``$HOLLOW_ROOT`` or ``/dev/shm/hollow``. Once it is
ready (the systemd notify protocol, on a socket of our own), this shows
``hollow get`` answering and four reader processes attaching, then leaves the
daemon serving in the foreground until Ctrl-C.
"""

from __future__ import annotations

import os
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


def main() -> int:
    root = str(layout.root_dir())
    state = PROJECT / "var" / "state"
    with tempfile.TemporaryDirectory() as tmp:
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(Path(tmp) / "notify"))
        notify.settimeout(120)
        env = {**os.environ, "NOTIFY_SOCKET": str(Path(tmp) / "notify"), "PYTHONPATH": str(PROJECT)}
        sock = PROJECT / "var" / "hollowd.sock"
        env["HOLLOWD_SOCKET"] = str(sock)  # for the hollow commands below
        daemon = subprocess.Popen(
            [BIN / "hollowd", "--root", root, "--state-dir", str(state), "--socket", str(sock)], env=env
        )
        try:
            started = time.monotonic()
            while b"READY=1" not in notify.recv(4096):
                pass
            print(f"\nhollowd (pid {daemon.pid}) is ready after {time.monotonic() - started:.1f} s, serving {root}\n")
            print("$ hollow get airports Airport NZAA", flush=True)
            subprocess.run([BIN / "hollow", "--root", root, "get", "airports", "Airport", "NZAA"], check=True)
            print("\n$ hollow status airports", flush=True)
            subprocess.run([BIN / "hollow", "--root", root, "status", "airports"], check=True, env=env)
            print(flush=True)
            subprocess.run(
                [sys.executable, "-m", "examples.airports.demo", "--root", root, "--readers-only"],
                check=True,
                cwd=PROJECT,
            )
            print(f"\nhollowd keeps serving {root}; Ctrl-C stops it.", flush=True)
            return daemon.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=60)
            notify.close()


if __name__ == "__main__":
    sys.exit(main())

"""Hostile local users (issue 9.1-9.6): every action of the issue, tried by real users, and its effect.

Run as root (it makes two users with useradd and removes them):
``.venv/bin/python bench/hostile.py``. Prints one table: the action, who did
it, and what happened to the producer, the other readers and /dev/shm.
:func:`run` returns the rows, for a larger table (bench/chaos.py).

A user's process is started as root and drops to the user once its imports are
done (the interpreter may live where other users cannot read).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hollow
from hollow import doorbell
from hollowd import Producer, control
from hollowd.errors import ConfigurationError

SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "movies.capnp"
DROP = r"""
import fcntl, json, os, struct, sys, time, hollow, hollow.dataset, hollow.watch
import watchdog.events, watchdog.observers, watchdog.observers.inotify, watchdog.observers.inotify_c
os.setgroups([])
os.setgid(int(os.environ["AS_GID"]))
os.setuid(int(os.environ["AS_UID"]))
"""
#: As a user: make /dev/shm/<argv[1]> of kind argv[2], or say why it could not.
PLANT = r"""
name, kind = sys.argv[1], sys.argv[2]
path = "/dev/shm/" + name
make = {
    "zero": lambda: os.truncate(path, 0),
    "dir": lambda: os.mkdir(path),
    "fifo": lambda: os.mkfifo(path),
    "empty": lambda: open(path, "wb").close(),
    "ff": lambda: open(path, "wb").write(b"\xff" * 32),
    "max": lambda: open(path, "wb").write(struct.pack("<QI", 0x7FFFFFFF, 128) + bytes(20)),
    "rw": lambda: os.close(os.open(path, os.O_RDWR)),
}
try:
    make[kind]()
    print("done")
except OSError as e:
    print(f"refused: {e.strerror}")
"""
FOLLOW = (
    DROP
    + r"""
ds = hollow.open("movies", root=sys.argv[1], poll_interval=3600)
ds.on_update(lambda v: os.write(1, f"{v}\n".encode()))
os.write(1, b"ready\n")
sys.stdin.read()
ds.close()
"""
)


@contextlib.contextmanager
def made_user() -> Iterator[tuple[str, int, int]]:
    name = f"hb{uuid.uuid4().hex[:10]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--user-group", name], check=True, capture_output=True)
    pw = pwd.getpwnam(name)
    try:
        yield name, pw.pw_uid, pw.pw_gid
    finally:
        for entry in os.listdir("/dev/shm"):
            path = Path("/dev/shm") / entry
            with contextlib.suppress(OSError):
                if path.lstat().st_uid == pw.pw_uid:
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        subprocess.run(["userdel", name], check=False, capture_output=True)
        subprocess.run(["groupdel", name], check=False, capture_output=True)


def as_user(user: tuple[str, int, int], code: str, *args: str, **kw: Any) -> Any:
    env = {**os.environ, "AS_UID": str(user[1]), "AS_GID": str(user[2])}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, **kw)


def run_as(user: tuple[str, int, int], code: str, *args: str) -> str:
    proc = as_user(user, DROP + code, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    return out.strip() or err.strip().splitlines()[-1]


def fill(n: int) -> Any:
    def populate(state: Any) -> None:
        for i in range(50):
            state.add("Movie", {"id": i, "title": f"v{n} {i}"})

    return populate


def run() -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    root = Path(tempfile.mkdtemp(prefix="hollow-bench-hostile-", dir="/dev/shm"))
    root.chmod(0o755)
    with made_user() as hostile, made_user() as victim:
        p = Producer("movies", schema=SCHEMA, primary_keys={"Movie": "id"}, root=root, retain=2, mode=0o644)
        version = 1
        p.run_cycle(fill(version))
        kids = [
            as_user(u, FOLLOW, str(root), stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
            for u in (victim, hostile)
        ]
        try:
            for k in kids:
                assert k.stdout is not None
                k.stdout.readline()
            prefix = "sem." + doorbell.prefix(root, "movies")
            bells = {k.pid: next(n for n in os.listdir("/dev/shm") if n.startswith(f"{prefix}{k.pid}.")) for k in kids}

            def cycles(n: int = 3) -> str:
                nonlocal version
                ok = 0
                for _ in range(n):
                    version += 1
                    try:
                        p.run_cycle(fill(version))
                        ok += 1
                    except Exception as e:
                        return f"cycle failed: {type(e).__name__}: {e}"[:90]
                victim_out = kids[0].stdout
                assert victim_out is not None
                got, deadline = 0, time.monotonic() + 30
                while got < version and select.select([victim_out], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    got = int(victim_out.readline())
                seen = "followed every one" if got == version else f"on {got}, not {version}"
                return f"{ok}/{n} cycles ok; the other reader {seen}; {len(p.versions())} versions present"

            dead = subprocess.Popen([sys.executable, "-c", "pass"])
            dead.wait()
            code = PLANT

            def plant(name: str, kind: str) -> str:
                return run_as(hostile, code, name, kind)

            plant(bells[kids[1].pid], "zero")
            rows.append(("truncate its own doorbell to 0 bytes", "reader", cycles()))
            rows.append(("open another reader's doorbell for writing", "reader", plant(bells[kids[0].pid], "rw")))
            plant(f"{prefix}{kids[0].pid}.900", "ff")
            rows.append(("32 bytes of 0xFF named like a live follower's doorbell", "reader", cycles()))
            plant(f"{prefix}{kids[1].pid}.901", "max")
            rows.append(("a semaphore at its maximum value", "reader", cycles()))
            planted = [plant(f"{prefix}{dead.pid}.{910 + i}", kind) for i, kind in enumerate(("empty", "dir", "fifo"))]
            assert planted == ["done"] * 3, planted
            left = sum(os.path.lexists(f"/dev/shm/{prefix}{dead.pid}.{910 + i}") for i in range(3))
            rows.append(("empty file, directory, FIFO under a dead PID's name", "reader", f"{cycles()}; {left}/3 left"))
            many = run_as(
                hostile,
                "for i in range(10000):\n    open(f'/dev/shm/{sys.argv[1]}{sys.argv[2]}.{5000 + i}', 'wb').close()\n"
                "print('made')",
                prefix,
                str(dead.pid),
            )
            timings = []
            for _ in range(5):
                version += 1
                p.run_cycle(fill(version))
                timings.append(p.last_timings["announce"] * 1000)
            rows.append(("10,000 fake doorbells", "reader", f"{many}: announce {max(timings):.2f} ms at most"))
            blocker = DROP + (
                "held = []\nfor n in os.listdir(sys.argv[1]):\n    if n.endswith('.lock') or n == '.producer.lock':\n"
                "        try:\n            fd = os.open(os.path.join(sys.argv[1], n), os.O_RDONLY | os.O_NONBLOCK)\n"
                "            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); held.append(n)\n"
                "        except OSError as e:\n            held.append(f'{n}: {e.strerror}')\n"
                "print(json.dumps(held), flush=True)\nsys.stdin.read()\n"
            )
            b = as_user(
                hostile, blocker, str(root / "movies"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            assert b.stdout is not None
            held = json.loads(b.stdout.readline())
            refused = [h for h in held if h.startswith(".producer.lock")]
            with hollow.open("movies", root=root, follow=False) as ds:
                opened = f"a new reader opened version {ds.version}"
            rows.append(
                ("LOCK_EX on every lockfile and .producer.lock", "reader", f"{refused[0]}; {opened}; {cycles()}")
            )
            assert b.stdin is not None
            b.stdin.close()
            b.wait()
            b.stdout.close()
            with hollow.open("movies", root=root, follow=False) as ds:
                snaps = []
                p.max_versions = 6
                for _ in range(15):
                    version += 1
                    p.run_cycle(fill(version))
                    snaps.append(ds.attach(version))
                present = len(p.versions())
                for s in snaps:
                    s.close()
            rows.append(
                ("lease every version for 15 cycles (retain 2, max_versions 6)", "reader", f"{present} present")
            )
            shared = root / "shared"
            shared.mkdir()
            os.chown(shared, hostile[1], hostile[2])
            shared.chmod(0o777)
            try:
                Producer("movies", schema=SCHEMA, primary_keys={"Movie": "id"}, root=shared).close()
                effect = "published into it"
            except ConfigurationError as e:
                effect = "refused: " + str(e).split(":")[0]
            rows.append(("make the root first, mode 0777", "other user", effect))
            rows += _control_abuse(hostile)
        finally:
            for k in kids:
                if k.stdin is not None:
                    k.stdin.close()
                k.wait()
                if k.stdout is not None:
                    k.stdout.close()
            p.close()
            shutil.rmtree(root, ignore_errors=True)
    return rows


def _control_abuse(hostile: tuple[str, int, int]) -> list[tuple[str, str, str]]:
    """A control socket of our own (mode 0666 on purpose: the peer check must decide), answered in a thread."""
    rows = []
    where = Path(tempfile.mkdtemp(prefix="hollow-bench-control-"))
    where.chmod(0o755)
    sock_path = where / "control.sock"
    served: list[dict[str, Any]] = []

    def submit(request: control.Request) -> None:
        served.append(request.doc)
        request.reply({"ok": True})

    server = control.ControlSocket(sock_path, submit, mode=0o666)
    try:
        ask = "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n"
        ask += "try:\n    s.sendall(sys.argv[2].encode() + b'\\n')\nexcept OSError:\n    pass\n"
        ask += "print(s.makefile().readline().strip())"
        answer = json.loads(run_as(hostile, ask, str(sock_path), '{"command": "cycle", "namespace": "movies"}'))
        rows.append(("pin/unpin/cycle as a reader", "reader", answer["error"][:80]))
        slow = [socket.socket(socket.AF_UNIX) for _ in range(3)]
        for s in slow:
            s.connect(str(sock_path))
            s.sendall(b'{"command": ')
        started = time.monotonic()
        pin = '{"command": "pin", "namespace": "m", "version": %s}'
        abuse = {
            "2,000-deep nested JSON": "[" * 2000 + "]" * 2000,
            "5,000-deep nested JSON": "[" * 5000 + "]" * 5000,
            "pin to Infinity": pin % "Infinity",
            "pin to 1e400": pin % "1e400",
            "pin to -Infinity": pin % "-Infinity",
            "pin to 1.5": pin % "1.5",
            'pin to "1"': pin % '"1"',
            "pin to true": pin % "true",
            "100 kB request": "x" * 100_000,
        }
        for label, body in abuse.items():
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock_path))
                with contextlib.suppress(OSError):
                    s.sendall(body.encode() + b"\n")
                got = json.loads(s.makefile().readline())
            rows.append((label, "operator", got["error"][:80]))
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(sock_path))
            s.sendall(b'{"command": "status"}\n')
            ok = json.loads(s.makefile().readline())["ok"]
        rows.append(
            (
                "3 connections that never finish their line",
                "operator",
                f"a status request answered ok={ok} after {time.monotonic() - started:.2f} s meanwhile",
            )
        )
        for s in slow:
            s.close()
    finally:
        server.close()
        shutil.rmtree(where, ignore_errors=True)
    return rows


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("bench/hostile.py makes users: run it as root")
    rows = run()
    width = max(len(a) for a, _, _ in rows)
    print(f"| {'hostile action'.ljust(width)} | by | effect |")
    print(f"|{'-' * (width + 2)}|---|---|")
    for action, who, effect in rows:
        print(f"| {action.ljust(width)} | {who} | {effect} |")


if __name__ == "__main__":
    main()

"""The control socket: how ``hollow pin``, ``unpin``, ``cycle`` and ``status`` reach the daemon.

A Unix stream socket (path, mode and group from the configuration). Each
connection carries one request and one response, each a line of JSON::

    {"command": "pin", "namespace": "movies", "version": 41}
    {"ok": true, "namespace": "movies", "announced": 41, "pinned": true}
    {"ok": false, "error": "movies version 99 does not exist ...", "code": 1}

A thread accepts connections; requests are carried out by the daemon's main
thread (which owns the producers), in order with cycles.
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hollowd.errors import Error

log = logging.getLogger("hollowd")

#: How long a client waits for the daemon's answer (a cycle may be running first).
TIMEOUT = 300.0
MAX_REQUEST = 64 * 1024


class SocketTakenError(Error):
    """Another process listens on the control socket's path (another hollowd, with another state directory)."""


class Request:
    """One request, handed from the socket thread to the main thread and answered there."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.answer: dict[str, Any] = {"ok": False, "error": "no answer", "code": 1}
        self.done = threading.Event()

    def reply(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.done.set()


class ControlSocket:
    """Listens on *path*; passes each request to *submit* (which queues it for the main thread)."""

    def __init__(self, path: Path, submit: Callable[[Request], None], *, mode: int, group: str = "") -> None:
        self.path = path
        self._submit = submit
        path.parent.mkdir(parents=True, exist_ok=True)
        if _answers(path):
            raise SocketTakenError(
                f"another process (another hollowd?) already listens on the control socket {path}; give this "
                "daemon its own with --socket or control_socket, or stop the other one"
            )
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket of a daemon that died: nothing answers on it
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.bind(str(path))
        os.chmod(path, mode)
        if group:
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
        self._sock.listen(16)
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name="hollowd-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closing:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            with conn:
                self._one(conn)

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT)
        try:
            data = b""
            while not data.endswith(b"\n") and len(data) < MAX_REQUEST:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            doc = json.loads(data)
            if not isinstance(doc, dict) or not isinstance(doc.get("command"), str):
                raise ValueError("a request is a JSON object with a command")
        except (ValueError, OSError) as e:
            self._send(conn, {"ok": False, "error": f"bad request: {e}", "code": 2})
            return
        request = Request(doc)
        self._submit(request)
        if not request.done.wait(TIMEOUT):
            request.answer = {"ok": False, "error": "the daemon did not answer in time", "code": 1}
        self._send(conn, request.answer)

    @staticmethod
    def _send(conn: socket.socket, answer: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(answer, default=str).encode() + b"\n")

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout=5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _answers(path: Path) -> bool:
    """Whether a process accepts connections on the socket at *path* (a stale one refuses them)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as probe:
        probe.settimeout(5)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def call(path: Path, request: dict[str, Any], timeout: float = TIMEOUT) -> dict[str, Any]:
    """Send one request to the daemon at *path*; its answer. OSError when no daemon listens there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data) if data else {"ok": False, "error": "the daemon closed the connection", "code": 1}
    return answer if isinstance(answer, dict) else {"ok": False, "error": "unreadable answer", "code": 1}

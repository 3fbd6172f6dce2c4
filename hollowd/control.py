"""The control socket: how ``hollow pin``, ``unpin``, ``cycle`` and ``status`` reach the daemon.

A Unix stream socket (path, mode and group from the configuration). Each
connection carries one request and one response, each a line of JSON::

    {"command": "pin", "namespace": "movies", "version": 41}
    {"ok": true, "namespace": "movies", "announced": 41, "pinned": true}
    {"ok": false, "error": "movies version 99 does not exist ...", "code": 1}

A thread accepts connections; requests are carried out by the daemon's main
thread (which owns the producers), in order with cycles.

Control is for operators only (docs/decisions.md §31): the socket is mode 0600
by default, and whatever its mode, each connection's peer credentials
(``SO_PEERCRED``, ``SO_PEERGROUPS``) must be root, the daemon's own user, or a
member of ``socket_group`` (the operator group, which then gets read and write
on the socket). Nobody else's connection is read. A connection gets
:data:`READ_TIMEOUT` seconds and :data:`MAX_REQUEST` bytes for its request, and
is served by a thread of its own (at most :data:`MAX_CLIENTS` at once), so a
slow or silent client holds only its own connection. A request is parsed
strictly (:func:`parse`): a flat JSON object with known keys of the right types;
anything else is refused with code 2 and touches nothing.
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hollowd.errors import Error

log = logging.getLogger("hollowd")

#: How long a client waits for the daemon's answer (a cycle may be running first).
TIMEOUT = 300.0
#: Seconds a client has to send its whole request line.
READ_TIMEOUT = 5.0
#: Bytes a request may have (a request is a few dozen).
MAX_REQUEST = 4096
#: Connections served at once; more are answered "busy" and closed.
MAX_CLIENTS = 8
COMMANDS = ("status", "pin", "unpin", "cycle")
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13
_VERSION_MAX = (1 << 63) - 1


class BadRequestError(ValueError):
    """A request that is not one the daemon carries out; the message says what is wrong."""


def _no_constant(name: str) -> Any:
    raise BadRequestError(f"{name} is not a value a request may hold")


def _no_float(text: str) -> Any:
    raise BadRequestError(f"{text} is not an integer (no request field is a fraction)")


def parse(data: bytes) -> dict[str, Any]:
    """The request in *data*, checked: a JSON object of ``command`` (one of :data:`COMMANDS`),
    ``namespace`` (a string; optional for status) and, for pin, ``version`` (an integer >= 1).
    Raises :class:`BadRequestError` naming the problem."""
    if len(data) > MAX_REQUEST:
        raise BadRequestError(f"request longer than {MAX_REQUEST} bytes")
    try:
        doc = json.loads(data, parse_constant=_no_constant, parse_float=_no_float)
    except RecursionError:
        raise BadRequestError("request nested too deeply") from None
    except UnicodeDecodeError as e:
        raise BadRequestError(f"request is not UTF-8 ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise BadRequestError(f"not JSON ({e.msg} at character {e.pos})") from None
    if type(doc) is not dict:
        raise BadRequestError("a request is a JSON object")
    unknown = set(doc) - {"command", "namespace", "version"}
    if unknown:
        raise BadRequestError(f"unknown field(s) {', '.join(sorted(map(repr, unknown)))}")
    command = doc.get("command")
    if type(command) is not str or command not in COMMANDS:
        raise BadRequestError(f"command must be one of {', '.join(COMMANDS)}, not {command!r}")
    namespace = doc.get("namespace")
    if namespace is None and command != "status":
        raise BadRequestError(f"{command} needs a namespace")
    if namespace is not None and type(namespace) is not str:
        raise BadRequestError(f"namespace must be a string, not {namespace!r}")
    if command == "pin":
        version = doc.get("version")
        if type(version) is not int or not 1 <= version <= _VERSION_MAX:
            raise BadRequestError(f"version must be an integer from 1 to {_VERSION_MAX}, not {version!r}")
    elif "version" in doc:
        raise BadRequestError(f"{command} takes no version")
    return doc


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
        self._gid = grp.getgrnam(group).gr_gid if group else None
        self._group = group
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
        if self._gid is not None:
            os.chown(path, -1, self._gid)
            mode |= 0o060  # the operator group may connect
        os.chmod(path, mode)
        self._sock.listen(16)
        self._closing = False
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self._clients: set[threading.Thread] = set()
        self._thread = threading.Thread(target=self._serve, name="hollowd-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closing:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            refusal = self._refusal(conn)
            if refusal is None and not self._slots.acquire(blocking=False):
                refusal = {"ok": False, "error": f"busy: {MAX_CLIENTS} requests in flight; try again", "code": 1}
            if refusal is not None:
                conn.settimeout(1.0)
                self._send(conn, refusal)
                conn.close()
                continue
            client = threading.Thread(target=self._client, args=(conn,), name="hollowd-control-client", daemon=True)
            self._clients.add(client)
            client.start()

    def _client(self, conn: socket.socket) -> None:
        try:
            with conn:
                self._one(conn)
        finally:
            self._slots.release()
            self._clients.discard(threading.current_thread())

    def _refusal(self, conn: socket.socket) -> dict[str, Any] | None:
        """None when the peer may use control (root, the daemon's user, the operator group), else the answer."""
        try:
            pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        except OSError as e:
            return {"ok": False, "error": f"cannot tell who is asking ({e.strerror})", "code": 2}
        if uid in (0, os.geteuid()):
            return None
        if self._gid is not None and (gid == self._gid or self._gid in _peer_groups(conn)):
            return None
        who = f"uid {uid} (PID {pid})"
        fix = (
            f"add it to the operator group {self._group!r}"
            if self._group
            else "set socket_group in [daemon] to an operator group and add it there"
        )
        log.warning("hollowd: event=control-refused peer=%r", who)
        return {"ok": False, "error": f"{who} may not use hollowd's control socket: {fix}", "code": 2}

    def _one(self, conn: socket.socket) -> None:
        deadline = time.monotonic() + READ_TIMEOUT
        data = b""
        try:
            while not data.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BadRequestError(f"no whole request line within {READ_TIMEOUT:g} s")
                conn.settimeout(left)
                try:
                    chunk = conn.recv(4096)
                except TimeoutError:
                    raise BadRequestError(f"no whole request line within {READ_TIMEOUT:g} s") from None
                if not chunk:
                    break
                data += chunk
                if len(data) > MAX_REQUEST:
                    raise BadRequestError(f"request longer than {MAX_REQUEST} bytes")
            doc = parse(data)
        except BadRequestError as e:
            self._send(conn, {"ok": False, "error": f"bad request: {e}", "code": 2})
            return
        except OSError:
            return  # the client went away
        request = Request(doc)
        self._submit(request)
        if not request.done.wait(TIMEOUT):
            request.answer = {"ok": False, "error": "the daemon did not answer in time", "code": 1}
        conn.settimeout(READ_TIMEOUT)
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
        for client in list(self._clients):
            client.join(timeout=READ_TIMEOUT + 1)
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


def _peer_groups(conn: socket.socket) -> list[int]:
    """The supplementary groups of the peer (SO_PEERGROUPS), empty when the kernel cannot say."""
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 1024)  # the most Python asks for: 256 groups
    except OSError:
        return []
    return list(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))


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

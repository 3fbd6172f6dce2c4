"""The WSGI and ASGI middlewares in one process: one snapshot per request, released however it ends."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

import hollow
import hollow.asgi
import hollow.wsgi
from hollow import lease, serving
from tests.helpers import movie, movies_producer, populate


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(serving, "RETRY_SECONDS", 0.0)
    yield
    serving.close_all()


def holds(root: Path, version: int) -> bool:
    return os.getpid() in lease.holders(lease.lock_path(root / "movies", version))


def publish(root: Path, title: str) -> None:
    with movies_producer(root) as producer:
        producer.run_cycle(populate(movie(i, title=title) for i in range(5)))


# -- WSGI ----------------------------------------------------------------


def call_wsgi(app: Any, path: str = "/") -> tuple[list[str], Any, dict[str, Any]]:
    """([status, once start_response is called], the response iterable, environ), the body left as is."""
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    status: list[str] = []
    body = app(environ, lambda line, headers: status.append(line))
    return status, body, environ


def test_wsgi_snapshot_lives_until_the_server_closes_a_streamed_body(root: Path) -> None:
    publish(root, "v1")

    def streaming(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        snap = environ["hollow.snapshot"]
        for i in range(3):
            yield snap["Movie"][i].title.encode()

    app = hollow.wsgi.Middleware(streaming, "movies", root=root)
    status, body, environ = call_wsgi(app)
    snap = environ["hollow.snapshot"]
    assert b"".join(body) == b"v1v1v1"
    assert status == ["200 OK"]
    assert holds(root, 1)  # still held: the server has not closed the response yet
    body.close()
    with pytest.raises(hollow.ClosedError):
        snap["Movie"]


def test_wsgi_snapshot_is_released_when_the_app_raises(root: Path) -> None:
    publish(root, "v1")
    seen: list[hollow.Snapshot] = []

    def broken(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        seen.append(environ["hollow.snapshot"])
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        call_wsgi(hollow.wsgi.Middleware(broken, "movies", root=root))
    with pytest.raises(hollow.ClosedError):
        seen[0]["Movie"]


def test_wsgi_answers_503_naming_the_problem_until_the_namespace_exists(root: Path) -> None:
    def ok(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        return [environ["hollow.snapshot"]["Movie"][1].title.encode()]

    app = hollow.wsgi.Middleware(ok, "movies", root=root)
    status, body, _ = call_wsgi(app)
    assert status == ["503 Service Unavailable"]
    text = b"".join(body).decode()
    assert "'movies'" in text
    assert str(root) in text
    assert "hollowd" in text  # the fix: is the daemon running, same root?
    publish(root, "v1")
    status, body, _ = call_wsgi(app)  # the next request after the retry interval attaches
    assert (status, b"".join(body)) == (["200 OK"], b"v1")
    body.close()


def test_failed_open_is_not_retried_on_every_request(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serving, "RETRY_SECONDS", 3600.0)
    with pytest.raises(hollow.NamespaceNotFoundError):
        serving.dataset("movies", root)
    publish(root, "v1")
    with pytest.raises(hollow.NamespaceNotFoundError):  # answered from memory inside the window
        serving.dataset("movies", root)
    monkeypatch.setattr(serving, "RETRY_SECONDS", 0.0)
    assert serving.dataset("movies", root).version == 1


# -- ASGI ----------------------------------------------------------------


class Client:
    """Drives an ASGI app the way a server does, recording what it sends."""

    def __init__(self, app: Any, incoming: list[dict[str, Any]] | None = None) -> None:
        self.app = app
        self.incoming = list(incoming or [{"type": "http.request", "body": b"", "more_body": False}])
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        if self.incoming:
            return self.incoming.pop(0)
        await asyncio.sleep(3600)  # a server blocks until the next event
        raise AssertionError("unreachable")

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def run(self, scope: dict[str, Any]) -> None:
        asyncio.run(self.app(scope, self.receive, self.send))

    @property
    def status(self) -> int:
        return int(next(m["status"] for m in self.sent if m["type"] == "http.response.start"))

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


HTTP = {"type": "http", "method": "GET", "path": "/", "headers": []}


def test_asgi_snapshot_spans_a_streamed_response_and_is_released_after(root: Path) -> None:
    publish(root, "v1")
    during: list[bool] = []
    seen: list[hollow.Snapshot] = []

    async def streaming(scope: dict[str, Any], receive: Any, send: Any) -> None:
        snap = scope["hollow.snapshot"]
        seen.append(snap)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(3):
            await asyncio.sleep(0)
            during.append(holds(root, snap.version))
            await send({"type": "http.response.body", "body": snap["Movie"][i].title.encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    client = Client(hollow.asgi.Middleware(streaming, "movies", root=root))
    scope = dict(HTTP)
    client.run(scope)
    assert (client.status, client.body) == (200, b"v1v1v1")
    assert during == [True, True, True]
    assert "hollow.snapshot" not in scope  # the server's scope is not changed; the app got a copy
    with pytest.raises(hollow.ClosedError):
        seen[0]["Movie"]
    assert holds(root, 1)  # the dataset itself stays attached for the next request


def test_asgi_snapshot_is_released_on_error_and_on_cancellation(root: Path) -> None:
    publish(root, "v1")
    seen: list[hollow.Snapshot] = []

    async def broken(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["hollow.snapshot"])
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        Client(hollow.asgi.Middleware(broken, "movies", root=root)).run(dict(HTTP))

    async def waits_forever(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["hollow.snapshot"])
        await asyncio.sleep(3600)

    async def cancel_it() -> None:
        client = Client(hollow.asgi.Middleware(waits_forever, "movies", root=root))
        task = asyncio.create_task(client.app(dict(HTTP), client.receive, client.send))
        await asyncio.sleep(0.01)
        task.cancel()  # what a server does when the client goes away
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_it())
    assert len(seen) == 2
    for snap in seen:
        with pytest.raises(hollow.ClosedError):
            snap["Movie"]


def test_asgi_503_until_the_namespace_exists(root: Path) -> None:
    async def ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["hollow.snapshot"]["Movie"][2].title.encode()})

    app = hollow.asgi.Middleware(ok, "movies", root=root)
    client = Client(app)
    client.run(dict(HTTP))
    assert client.status == 503
    assert b"'movies'" in client.body
    assert (b"retry-after", b"1") in next(m for m in client.sent if m["type"] == "http.response.start")["headers"]
    publish(root, "v2")
    client = Client(app)
    client.run(dict(HTTP))
    assert (client.status, client.body) == (200, b"v2")


def test_asgi_lifespan_attaches_at_startup_and_lets_go_at_shutdown(root: Path) -> None:
    publish(root, "v1")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                assert holds(root, 1), "not attached before the app's own startup ran"
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    client = Client(
        hollow.asgi.Middleware(app, "movies", root=root),
        [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}],
    )
    client.run({"type": "lifespan", "asgi": {"version": "3.0"}})
    assert [m["type"] for m in client.sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert not holds(root, 1)  # closed at shutdown: no lease, no doorbell, no thread


def test_asgi_websocket_gets_the_dataset_not_a_snapshot(root: Path) -> None:
    publish(root, "v1")
    versions: list[int] = []

    async def ws(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert "hollow.snapshot" not in scope
        ds: hollow.Dataset = scope["hollow.dataset"]
        await send({"type": "websocket.accept"})
        for _ in range(2):
            await receive()
            with ds.snapshot() as snap:  # one version per message
                versions.append(snap.version)
                await send({"type": "websocket.send", "text": snap["Movie"][0].title})
            publish(root, "v2")
            assert ds.wait_for(2, timeout=30)

    client = Client(
        hollow.asgi.Middleware(ws, "movies", root=root),
        [{"type": "websocket.receive", "text": "a"}, {"type": "websocket.receive", "text": "b"}],
    )
    client.run({"type": "websocket", "path": "/"})
    assert versions == [1, 2]
    assert [m.get("text") for m in client.sent[1:]] == ["v1", "v2"]

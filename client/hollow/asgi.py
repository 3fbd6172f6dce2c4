"""ASGI: one consistent snapshot per HTTP request, released when the response is done.

::

    import hollow.asgi
    app = hollow.asgi.Middleware(app, "airports")      # scope["hollow.snapshot"] in every request

For Starlette and FastAPI that is ``request.scope["hollow.snapshot"]``. The
snapshot is closed when the app returns, that is after the last chunk of a
streamed body and after any background task, or when it raises or is
cancelled (a client that went away).

A WebSocket lives too long to hold one version (it would keep an old version
from being reclaimed), so its scope carries the dataset instead, as
``scope["hollow.dataset"]``: take a snapshot per message.

The dataset is opened once per process (:mod:`hollow.serving`): at the ASGI
lifespan startup when the server speaks it (uvicorn does, also as gunicorn's
``uvicorn_worker.UvicornWorker``), else on the first request, and closed at
lifespan shutdown. While it cannot be opened (no daemon yet, a wrong root)
every request gets a ``503`` naming the problem.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from hollow.errors import Error
from hollow.serving import close_all, dataset, unavailable_body

__all__ = ["DATASET_KEY", "SCOPE_KEY", "Middleware"]

SCOPE_KEY = "hollow.snapshot"
DATASET_KEY = "hollow.dataset"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Middleware:
    """Wraps an ASGI app: ``scope["hollow.snapshot"]`` is one version for the whole request."""

    def __init__(
        self,
        app: ASGIApp,
        namespace: str,
        *,
        root: str | os.PathLike[str] | None = None,
        key: str = SCOPE_KEY,
        dataset_key: str = DATASET_KEY,
    ) -> None:
        self.app = app
        self.namespace = namespace
        self.root = root
        self.key = key
        self.dataset_key = dataset_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            try:
                snap = dataset(self.namespace, self.root).snapshot()
            except Error as e:
                await _unavailable(send, e)
                return
            try:
                await self.app({**scope, self.key: snap}, receive, send)
            finally:
                snap.close()
        elif kind == "websocket":
            try:
                ds = dataset(self.namespace, self.root)
            except Error:
                await send({"type": "websocket.close", "code": 1013})  # "try again later"
                return
            await self.app({**scope, self.dataset_key: ds}, receive, send)
        elif kind == "lifespan":
            await self.app(scope, self._lifespan_receive(receive), self._lifespan_send(send))
        else:
            await self.app(scope, receive, send)

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # attach before the first request; a failure is logged by hollow.serving,
                # and requests answer 503 until the namespace opens
                with contextlib.suppress(Error):
                    dataset(self.namespace, self.root)
            return message

        return wrapped

    @staticmethod
    def _lifespan_send(send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                close_all()
            await send(message)

        return wrapped


async def _unavailable(send: Send, error: Error) -> None:
    body = unavailable_body(error)
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})

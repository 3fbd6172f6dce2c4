"""WSGI: one consistent snapshot per request, released when the response is done.

::

    import hollow.wsgi
    app = hollow.wsgi.Middleware(app, "airports")      # environ["hollow.snapshot"] in every request

The dataset is opened once per process, after the fork (:mod:`hollow.serving`),
by the first request or by the gunicorn hooks (:mod:`hollow.gunicorn`). The
snapshot is closed when the server closes the response (PEP 3333 ``close()``),
after the last byte of a streamed body, or when the app raises. While the
namespace cannot be opened (no daemon yet, a wrong root) every request gets a
``503`` naming the problem, and the next request after a short wait tries again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from hollow.dataset import Snapshot
from hollow.errors import Error
from hollow.serving import close_all, dataset, unavailable_body

__all__ = ["ENVIRON_KEY", "Middleware", "close_all", "dataset"]

ENVIRON_KEY = "hollow.snapshot"


class _Response:
    """The app's response iterable, closing the snapshot when the server closes it."""

    def __init__(self, body: Iterable[bytes], snapshot: Snapshot) -> None:
        self._body = body
        self._snapshot = snapshot

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._snapshot.close()


class Middleware:
    """Wraps a WSGI app: ``environ["hollow.snapshot"]`` is one version for the whole request."""

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        namespace: str,
        *,
        root: str | os.PathLike[str] | None = None,
        key: str = ENVIRON_KEY,
    ) -> None:
        self.app = app
        self.namespace = namespace
        self.root = root
        self.key = key

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            snap = dataset(self.namespace, self.root).snapshot()
        except Error as e:
            text = unavailable_body(e)
            headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(text)))]
            start_response("503 Service Unavailable", [*headers, ("Retry-After", "1")])
            return [text]
        environ[self.key] = snap
        try:
            body = self.app(environ, start_response)
        except BaseException:
            snap.close()
            raise
        return _Response(body, snap)

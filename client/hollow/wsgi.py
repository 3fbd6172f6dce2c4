"""WSGI: one consistent snapshot per request, released when the response is done.

::

    import hollow.wsgi
    app = hollow.wsgi.Middleware(app, "airports")      # environ["hollow.snapshot"] in every request

The dataset is opened lazily, once per process, on the first request (or by
the gunicorn hooks in :mod:`hollow.gunicorn`, after the fork): a master that
imports the app with ``--preload`` holds nothing its workers would share.
The snapshot is closed when the server closes the response (PEP 3333
``close()``), after the last byte of a streamed body, or when the app raises.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from hollow.dataset import Dataset, Snapshot
from hollow.dataset import open as open_dataset

ENVIRON_KEY = "hollow.snapshot"

_datasets: dict[tuple[str, str | None], Dataset] = {}
_lock = threading.Lock()


def dataset(namespace: str, root: str | os.PathLike[str] | None = None) -> Dataset:
    """This process's following dataset for *namespace* (opened on first use)."""
    key = (namespace, None if root is None else os.fspath(root))
    ds = _datasets.get(key)
    if ds is None:
        with _lock:
            ds = _datasets.get(key)
            if ds is None:
                ds = _datasets[key] = open_dataset(namespace, root=root)
    return ds


def close_all() -> None:
    """Close every dataset this module opened (a worker on its way out)."""
    with _lock:
        for ds in _datasets.values():
            ds.close()
        _datasets.clear()


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
        snap = dataset(self.namespace, self.root).snapshot()
        environ[self.key] = snap
        try:
            body = self.app(environ, start_response)
        except BaseException:
            snap.close()
            raise
        return _Response(body, snap)

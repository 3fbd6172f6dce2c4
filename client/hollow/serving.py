"""One following dataset per namespace per process, for web servers' workers.

The WSGI and ASGI middlewares (:mod:`hollow.wsgi`, :mod:`hollow.asgi`) and the
gunicorn hooks (:mod:`hollow.gunicorn`) share this registry: whichever touches
a namespace first in a worker opens it, after the fork, so a master that
imports the app with ``--preload`` holds nothing its workers would share
(flock leases and threads do not survive fork as they should, docs/pitfalls.md 4
and 16; a forked dataset would re-arm itself anyway, but only on first use).

When the namespace cannot be opened (no daemon yet, a wrong root), the error
is remembered for :data:`RETRY_SECONDS` and raised again to every caller in
that window, so a worker under load does not retry the open on every request.
The middlewares turn it into a 503 that names the problem.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from hollow.dataset import Dataset
from hollow.dataset import open as open_dataset
from hollow.errors import Error

#: How long a failed open is answered from memory before it is tried again.
RETRY_SECONDS = 0.5

log = logging.getLogger("hollow")

_Key = tuple[str, str | None]
_datasets: dict[_Key, Dataset] = {}
_failures: dict[_Key, tuple[float, Error]] = {}
_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # a parent's thread may have held it at fork


os.register_at_fork(after_in_child=_after_fork_in_child)


def dataset(namespace: str, root: str | os.PathLike[str] | None = None) -> Dataset:
    """This process's following dataset for *namespace*, opened on first use.

    Raises :class:`hollow.Error` (say :class:`~hollow.NamespaceNotFoundError`)
    while the namespace cannot be opened; a later call tries again.
    """
    key = (namespace, None if root is None else os.fspath(root))
    ds = _datasets.get(key)
    if ds is not None:
        return ds
    with _lock:
        ds = _datasets.get(key)
        if ds is not None:
            return ds
        failed = _failures.get(key)
        if failed is not None and time.monotonic() - failed[0] < RETRY_SECONDS:
            raise type(failed[1])(*failed[1].args)  # a fresh one: threads may raise it at once
        try:
            ds = _datasets[key] = open_dataset(namespace, root=root)
        except Error as e:
            _failures[key] = (time.monotonic(), e.with_traceback(None))
            log.warning("hollow: cannot open namespace %r: %s", namespace, e)
            raise
        _failures.pop(key, None)
        return ds


def unavailable_body(error: Error) -> bytes:
    """The text of the 503 the middlewares answer while their dataset cannot be opened."""
    return f"503 Service Unavailable: hollow: {error}\n".encode()


def close_all() -> None:
    """Close every dataset opened here (a worker on its way out)."""
    with _lock:
        for ds in _datasets.values():
            ds.close()
        _datasets.clear()
        _failures.clear()

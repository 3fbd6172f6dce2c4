"""gunicorn server hooks: attach in each worker after the fork, let go when it exits.

In ``gunicorn.conf.py``, two lines::

    from hollow.gunicorn import hooks
    post_worker_init, worker_exit = hooks("airports")

Each worker opens its own following dataset after the fork (its own leases,
doorbell and thread: flock locks and threads do not survive fork as they
should, docs/pitfalls.md 4 and 16), so the first request finds the version
attached; ``worker_exit`` closes them, so a recycled worker (``max_requests``)
leaves no lease or doorbell behind. Works with and without ``--preload``, and
with sync, gthread and uvicorn workers (:mod:`hollow.wsgi`, :mod:`hollow.asgi`).

A namespace that cannot be opened yet (the daemon has not published it) does
not keep the worker from booting: the hook logs it, the middleware answers
503 until it can, and the first request after that attaches.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from hollow import serving
from hollow.errors import Error


def hooks(
    *namespaces: str, root: str | os.PathLike[str] | None = None
) -> tuple[Callable[[Any], None], Callable[[Any, Any], None]]:
    """``(post_worker_init, worker_exit)`` for gunicorn, attaching *namespaces* in every worker."""

    def post_worker_init(worker: Any) -> None:
        for namespace in namespaces:
            try:
                serving.dataset(namespace, root)
            except Error as e:
                worker.log.warning("hollow: worker %s serves 503 until %r can be opened: %s", worker.pid, namespace, e)

    def worker_exit(server: Any, worker: Any) -> None:
        serving.close_all()

    return post_worker_init, worker_exit

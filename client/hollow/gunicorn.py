"""gunicorn server hooks: attach in each worker after the fork, let go when it exits.

In ``gunicorn.conf.py``, two lines::

    from hollow.gunicorn import hooks
    post_worker_init, worker_exit = hooks("airports")

Each worker opens its own following dataset after the fork (its own leases,
doorbell and thread: flock locks and threads do not survive fork as they
should, PITFALLS.md 4 and 16), so the first request finds the version
attached; ``worker_exit`` closes them, so a recycled worker (``max_requests``)
leaves no lease or doorbell behind. Works with and without ``--preload``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from hollow import wsgi


def hooks(
    *namespaces: str, root: str | os.PathLike[str] | None = None
) -> tuple[Callable[[Any], None], Callable[[Any, Any], None]]:
    """``(post_worker_init, worker_exit)`` for gunicorn, attaching *namespaces* in every worker."""

    def post_worker_init(worker: Any) -> None:
        for namespace in namespaces:
            wsgi.dataset(namespace, root)

    def worker_exit(server: Any, worker: Any) -> None:
        wsgi.close_all()

    return post_worker_init, worker_exit

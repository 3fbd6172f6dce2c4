"""The airports service: every request reads one consistent version, shared by every worker.

    GET /airports/<ICAO>        one airport as JSON (404 when unknown)
    GET /airports?country=NZ    the airports of a country, through the secondary index
    GET /healthz                the version served and its age

The same routes as a WSGI app (``app``: gunicorn's sync or gthread workers)
and as an ASGI app (``asgi_app``: uvicorn, or gunicorn with
``-k uvicorn_worker.UvicornWorker``). Run either against ``make run``'s daemon::

    .venv/bin/gunicorn -c examples/service/gunicorn.conf.py examples.service.app:app
    .venv/bin/gunicorn -c examples/service/gunicorn.conf.py -k uvicorn_worker.UvicornWorker \
        examples.service.app:asgi_app
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import hollow.asgi
import hollow.wsgi

NAMESPACE = "airports"
FIELDS = ("icao", "iata", "name", "city", "country", "latitude", "longitude", "elevationFeet", "timezone")


def _airport(a: Any) -> dict[str, Any]:
    return {f: getattr(a, f) for f in FIELDS}


def route(snap: hollow.Snapshot, path: str, query: str) -> tuple[int, bytes]:
    """(HTTP status, JSON body) of one request, read from one snapshot."""
    status, doc = 200, None
    if path == "/healthz":
        doc = {
            "version": snap.version,
            "age_seconds": round(time.time() - snap.published_at_ns / 1e9, 3),
            "pid": os.getpid(),
        }
    elif path.startswith("/airports/"):
        a = snap["Airport"].get(path.rsplit("/", 1)[1].upper())
        status, doc = (200, _airport(a)) if a is not None else (404, {"error": "no such airport"})
    elif path == "/airports":
        country = parse_qs(query).get("country", [""])[0].upper()
        doc = {"country": country, "airports": [_airport(a) for a in snap["Airport"].find(country=country)]}
    else:
        status, doc = 404, {"error": "not found"}
    return status, json.dumps({**doc, "version": snap.version}).encode()


_REASONS = {200: "200 OK", 404: "404 Not Found"}


def service(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    snap: hollow.Snapshot = environ[hollow.wsgi.ENVIRON_KEY]
    status, body = route(snap, environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""))
    start_response(_REASONS[status], [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


async def asgi_service(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    snap: hollow.Snapshot = scope[hollow.asgi.SCOPE_KEY]
    status, body = route(snap, scope["path"], scope["query_string"].decode("latin-1"))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


app = hollow.wsgi.Middleware(service, NAMESPACE)
asgi_app = hollow.asgi.Middleware(asgi_service, NAMESPACE)

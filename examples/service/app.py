"""The airports service: every request reads one consistent version, shared by every worker.

    GET /airports/<ICAO>        one airport as JSON (404 when unknown)
    GET /airports?country=NZ    the airports of a country, through the secondary index
    GET /healthz                the version served and its age

Run it against ``make run``'s daemon::

    .venv/bin/gunicorn -c examples/service/gunicorn.conf.py examples.service.app:app
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import hollow.wsgi

NAMESPACE = "airports"
FIELDS = ("icao", "iata", "name", "city", "country", "latitude", "longitude", "elevationFeet", "timezone")


def _airport(a: Any) -> dict[str, Any]:
    return {f: getattr(a, f) for f in FIELDS}


def service(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    snap: hollow.Snapshot = environ[hollow.wsgi.ENVIRON_KEY]
    path = environ.get("PATH_INFO", "")
    status, doc = "200 OK", None
    if path == "/healthz":
        doc = {
            "version": snap.version,
            "age_seconds": round(time.time() - snap.published_at_ns / 1e9, 3),
            "pid": os.getpid(),
        }
    elif path.startswith("/airports/"):
        a = snap["Airport"].get(path.rsplit("/", 1)[1].upper())
        status, doc = ("200 OK", _airport(a)) if a is not None else ("404 Not Found", {"error": "no such airport"})
    elif path == "/airports":
        country = parse_qs(environ.get("QUERY_STRING", "")).get("country", [""])[0].upper()
        doc = {"country": country, "airports": [_airport(a) for a in snap["Airport"].find(country=country)]}
    else:
        status, doc = "404 Not Found", {"error": "not found"}
    body = json.dumps({**doc, "version": snap.version} if isinstance(doc, dict) else doc).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


app = hollow.wsgi.Middleware(service, NAMESPACE)

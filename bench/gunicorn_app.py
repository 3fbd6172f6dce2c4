"""The WSGI app that bench/gunicorn.py runs in gunicorn: one endpoint, four ways to look a movie up.

    GET /movie/<id>         {"title": ..., "year": ..., "version": ...} (404 when unknown)
    GET /pid?sleep=0.02     {"pid": ...} after sleeping that long (boot measurement: concurrent
                            requests that each hold a worker spread over every worker)

The backend comes from ``HOLLOW_BENCH_BACKEND``; the code path is the same for all of them
except the lookup:

* ``hollow``: ``hollow.wsgi.Middleware`` gives each request a snapshot (``HOLLOW_BENCH_ROOT``);
  run with the hooks of ``hollow.gunicorn`` and ``--preload``, as examples/service does;
* ``dict``: a dict id -> record dict, ``pickle.load``-ed from ``HOLLOW_BENCH_PICKLE`` when this
  module is imported: in every worker without ``--preload``, once in the master with it;
* ``redis``: one ``redis.Redis`` client per process (redis-py makes a new connection pool after
  fork) on ``HOLLOW_BENCH_REDIS`` (host:port); values are msgpack of the record.

``asgi_app`` is the same endpoint as an ASGI app, for ``-k uvicorn_worker.UvicornWorker``:
``hollow.asgi.Middleware``, the same dict, and ``redis.asyncio`` for Redis.

The bench imports this module too (``make_app``) to time the app without HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

NAMESPACE = "movies"
TYPE = "Movie"
DATA_VERSION = 1  # what the dict and Redis hold: the records of hollow's first version

Lookup = Callable[[dict[str, Any], int], "tuple[str, int, int] | None"]


def _respond(start_response: Callable[..., Any], status: str, doc: dict[str, Any]) -> list[bytes]:
    body = json.dumps(doc).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def service(lookup: Lookup) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """The WSGI app around *lookup* (environ, id) -> (title, year, version) or None."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/movie/"):
            try:
                key = int(path[7:])
            except ValueError:
                return _respond(start_response, "404 Not Found", {"error": "not a movie id"})
            found = lookup(environ, key)
            if found is None:
                return _respond(start_response, "404 Not Found", {"error": "no such movie"})
            title, year, version = found
            return _respond(start_response, "200 OK", {"title": title, "year": year, "version": version})
        if path == "/pid":
            sleep = float(parse_qs(environ.get("QUERY_STRING", "")).get("sleep", ["0"])[0])
            if sleep > 0:
                time.sleep(sleep)
            return _respond(start_response, "200 OK", {"pid": os.getpid()})
        return _respond(start_response, "404 Not Found", {"error": "not found"})

    return app


def hollow_app(root: str) -> Callable[..., Iterable[bytes]]:
    import hollow.wsgi  # noqa: PLC0415 - only the hollow backend needs it

    def lookup(environ: dict[str, Any], key: int) -> tuple[str, int, int] | None:
        snap = environ[hollow.wsgi.ENVIRON_KEY]
        m = snap[TYPE].get(key)
        return None if m is None else (m.title, m.year, snap.version)

    return hollow.wsgi.Middleware(service(lookup), NAMESPACE, root=root)


def dict_app(pickle_path: str) -> Callable[..., Iterable[bytes]]:
    with open(pickle_path, "rb") as f:
        table: dict[int, dict[str, Any]] = pickle.load(f)

    def lookup(environ: dict[str, Any], key: int) -> tuple[str, int, int] | None:
        r = table.get(key)
        return None if r is None else (r["title"], r["year"], DATA_VERSION)

    return service(lookup)


def redis_app(address: str) -> Callable[..., Iterable[bytes]]:
    import msgpack  # noqa: PLC0415 - only the redis backend needs them
    import redis  # noqa: PLC0415

    host, _, port = address.rpartition(":")
    get = redis.Redis(host=host, port=int(port)).get
    unpackb = msgpack.unpackb

    def lookup(environ: dict[str, Any], key: int) -> tuple[str, int, int] | None:
        raw = get(b"movie:%d" % key)
        if raw is None:
            return None
        r = unpackb(raw)
        return r["title"], r["year"], DATA_VERSION

    return service(lookup)


def make_app(backend: str, env: dict[str, str] | os._Environ[str] = os.environ) -> Callable[..., Iterable[bytes]]:
    """The app of *backend* (hollow, dict or redis), configured from *env*."""
    if backend == "hollow":
        return hollow_app(env["HOLLOW_BENCH_ROOT"])
    if backend == "dict":
        return dict_app(env["HOLLOW_BENCH_PICKLE"])
    if backend == "redis":
        return redis_app(env["HOLLOW_BENCH_REDIS"])
    raise ValueError(f"unknown HOLLOW_BENCH_BACKEND {backend!r} (hollow, dict or redis)")


AsyncLookup = Callable[[dict[str, Any], int], Awaitable["tuple[str, int, int] | None"]]


def asgi_service(lookup: AsyncLookup) -> Callable[..., Awaitable[None]]:
    """The ASGI app around *lookup* (scope, id) -> (title, year, version) or None, with the WSGI app's routes."""

    async def respond(send: Callable[..., Awaitable[None]], status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return None
        path = scope["path"]
        if path.startswith("/movie/"):
            try:
                key = int(path[7:])
            except ValueError:
                return await respond(send, 404, {"error": "not a movie id"})
            found = await lookup(scope, key)
            if found is None:
                return await respond(send, 404, {"error": "no such movie"})
            title, year, version = found
            return await respond(send, 200, {"title": title, "year": year, "version": version})
        if path == "/pid":
            sleep = float(parse_qs(scope["query_string"].decode()).get("sleep", ["0"])[0])
            if sleep > 0:
                await asyncio.sleep(sleep)
            return await respond(send, 200, {"pid": os.getpid()})
        return await respond(send, 404, {"error": "not found"})

    return app


def make_asgi_app(backend: str, env: dict[str, str] | os._Environ[str] = os.environ) -> Callable[..., Awaitable[None]]:
    """The ASGI app of *backend* (hollow, dict or redis), configured from *env*."""
    if backend == "hollow":
        import hollow.asgi  # noqa: PLC0415 - only the hollow backend needs it

        async def hollow_lookup(scope: dict[str, Any], key: int) -> tuple[str, int, int] | None:
            snap = scope[hollow.asgi.SCOPE_KEY]
            m = snap[TYPE].get(key)
            return None if m is None else (m.title, m.year, snap.version)

        return hollow.asgi.Middleware(asgi_service(hollow_lookup), NAMESPACE, root=env["HOLLOW_BENCH_ROOT"])
    if backend == "dict":
        with open(env["HOLLOW_BENCH_PICKLE"], "rb") as f:
            table: dict[int, dict[str, Any]] = pickle.load(f)

        async def dict_lookup(scope: dict[str, Any], key: int) -> tuple[str, int, int] | None:
            r = table.get(key)
            return None if r is None else (r["title"], r["year"], DATA_VERSION)

        return asgi_service(dict_lookup)
    if backend == "redis":
        import msgpack  # noqa: PLC0415 - only the redis backend needs them
        import redis.asyncio  # noqa: PLC0415

        host, _, port = env["HOLLOW_BENCH_REDIS"].rpartition(":")
        client = redis.asyncio.Redis(host=host, port=int(port))  # connects on first use, in the worker's loop
        unpackb = msgpack.unpackb

        async def redis_lookup(scope: dict[str, Any], key: int) -> tuple[str, int, int] | None:
            raw = await client.get(b"movie:%d" % key)
            if raw is None:
                return None
            r = unpackb(raw)
            return r["title"], r["year"], DATA_VERSION

        return asgi_service(redis_lookup)
    raise ValueError(f"unknown HOLLOW_BENCH_BACKEND {backend!r} (hollow, dict or redis)")


if os.environ.get("HOLLOW_BENCH_BACKEND"):
    if os.environ.get("HOLLOW_BENCH_ASGI"):
        asgi_app = make_asgi_app(os.environ["HOLLOW_BENCH_BACKEND"])
    else:
        app = make_app(os.environ["HOLLOW_BENCH_BACKEND"])

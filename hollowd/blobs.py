"""Blob stores: where a producer leaves each version for followers on other hosts (docs/decisions.md §50).

A store holds small objects by key under one prefix. Two implementations with
one interface: :class:`DirStore` (a directory, e.g. a shared mount or a test)
and :class:`S3Store` (any S3-compatible server, through boto3). Every blob is
framed by :func:`pack` (a magic, its kind, its length and xxh3_64 before
compression, then zstd) and checked by :func:`unpack`, so a truncated or damaged
object is refused by name, never applied.

Keys under the prefix (``hollowd.replication`` writes them)::

    announced            JSON: {"version", "pinned", "latest"} (conditional writes guard it)
    lease                JSON: which producer owns the namespace ({"owner", "since"})
    headers/<v>          JSON: the version's header (parent, schema, content hash, blobs and sizes)
    deltas/<v>-<hash>    what version v changed from its parent (hash: v's content hash)
    snapshots/<v>-<hash> version v's own file (a base, or an overlay whose base is below)
    bases/<v>-<hash>     a base file, shared by every snapshot built on it (hash: the file's)

Writes of a whole object are atomic on both (S3 PUTs are; the directory store
renames), so a reader sees an object whole or not at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import random
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import boto3
import xxhash
import zstandard
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from hollowd.errors import Error

MAGIC = b"HOLLOWB1"
_FRAME = struct.Struct("<8s16sQQ")  # magic, kind, raw length, xxh3_64 of the raw bytes
ZSTD_LEVEL = 3


class StoreError(Error):
    """The store cannot be reached or refused a request; the message names the store, the key and a fix."""


class StoreUnavailableError(StoreError):
    """The store did not answer (network, server down, 5xx) after the retries."""


class PreconditionFailedError(StoreError):
    """A conditional write was refused: someone else wrote the object first."""


class BlobCorruptError(StoreError):
    """A blob's bytes do not unpack: truncated, damaged, or not a hollowd blob."""


T = TypeVar("T")


def pack(kind: str, data: bytes | memoryview) -> bytes:
    """Frame and compress *data* as a blob of *kind* (checksummed before compression)."""
    raw = memoryview(data).cast("B")
    head = _FRAME.pack(MAGIC, kind.encode().ljust(16, b"\0"), len(raw), xxhash.xxh3_64_intdigest(raw))
    return head + zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw)


def unpack(blob: bytes, *, kind: str, what: str) -> bytes:
    """The bytes *pack* framed, checked end to end; :class:`BlobCorruptError` names *what* otherwise."""
    if len(blob) < _FRAME.size:
        raise BlobCorruptError(f"{what}: {len(blob)} bytes is too short for a hollowd blob (truncated upload?)")
    magic, got_kind, length, digest = _FRAME.unpack_from(blob)
    if magic != MAGIC:
        raise BlobCorruptError(f"{what}: not a hollowd blob (bad magic {magic!r})")
    found = got_kind.rstrip(b"\0").decode(errors="replace")
    if found != kind:
        raise BlobCorruptError(f"{what}: a {found!r} blob, not {kind!r}")
    try:
        raw = zstandard.ZstdDecompressor().decompress(blob[_FRAME.size :], max_output_size=length)
    except zstandard.ZstdError as e:
        raise BlobCorruptError(f"{what}: damaged or truncated ({e})") from None
    if len(raw) != length or xxhash.xxh3_64_intdigest(raw) != digest:
        raise BlobCorruptError(f"{what}: checksum mismatch ({len(raw)} of {length} bytes); it was damaged on the way")
    return raw


@dataclass(frozen=True)
class Got:
    """An object read from a store: its bytes and its entity tag (for a conditional read or write)."""

    data: bytes
    etag: str


class BlobStore:
    """The interface both stores implement. Keys are relative to the store's prefix."""

    url: str

    def get(self, key: str) -> Got | None:
        """The object at *key*, or None when there is none."""
        raise NotImplementedError

    def get_if_changed(self, key: str, etag: str | None) -> Got | None:
        """The object at *key* unless its entity tag is still *etag* (then None: not modified, or absent)."""
        got = self.get(key)
        return None if got is None or got.etag == etag else got

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        """Store *data* at *key*; returns its entity tag. With *if_none_match* only if no object is there,
        with *if_match* only if the object's tag is still that one; else :class:`PreconditionFailedError`."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def list(self, prefix: str) -> list[str]:
        """Keys under *prefix* (an operator's listing; the follower's normal path never lists)."""
        raise NotImplementedError

    def close(self) -> None:
        """Let go of connections."""


def _etag(data: bytes) -> str:
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


class DirStore(BlobStore):
    """A store in a directory: each object a file, written by rename; conditional writes under a flock."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.url = str(self.path)
        self.path.mkdir(parents=True, exist_ok=True)

    def _file(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise StoreError(f"{self.url}: bad key {key!r}")
        return self.path / key

    def get(self, key: str) -> Got | None:
        try:
            data = self._file(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreUnavailableError(
                f"{self.url}: cannot read {key} ({e.strerror}); is the directory mounted?"
            ) from None
        return Got(data, _etag(data))

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        path = self._file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked(if_none_match or if_match is not None):
            if if_none_match and path.exists():
                raise PreconditionFailedError(f"{self.url}: {key} exists already (written by someone else)")
            if if_match is not None:
                current = self.get(key)
                if current is None or current.etag != if_match:
                    raise PreconditionFailedError(f"{self.url}: {key} changed since it was read (another writer)")
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        return _etag(data)

    @contextlib.contextmanager
    def _locked(self, needed: bool) -> Iterator[None]:
        if not needed:
            yield
            return
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._file(key).unlink()

    def list(self, prefix: str) -> list[str]:
        base = self._file(prefix) if prefix else self.path
        if not base.exists():
            return []
        return sorted(
            str(p.relative_to(self.path)) for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")
        )


#: S3 error codes and HTTP statuses worth retrying: the server is there but busy or failing for now.
_TRANSIENT = {"500", "502", "503", "504", "SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout"}


class S3Store(BlobStore):
    """A store in an S3 bucket under a prefix, through boto3.

    The endpoint and credentials come from boto3's usual sources (``AWS_ENDPOINT_URL``,
    ``AWS_ACCESS_KEY_ID``..., ``~/.aws``), or *endpoint_url*. Requests that fail for
    want of the server are retried *retries* times with exponential backoff and full
    jitter, then raise :class:`StoreUnavailableError`.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        retries: int = 4,
        backoff: float = 0.2,
        timeout: float = 5.0,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.retries = retries
        self.backoff = backoff
        self._session = boto3.session.Session()
        self._client = self._session.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(
                connect_timeout=timeout,
                read_timeout=timeout,
                retries={"max_attempts": 1},
                s3={"addressing_style": "path"},
            ),
        )
        self.endpoint = self._client.meta.endpoint_url

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, key: str, fn: Callable[[], T]) -> T:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except ClientError as e:
                code = str(e.response.get("Error", {}).get("Code", ""))
                status = str(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
                if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in ("409", "412"):
                    raise PreconditionFailedError(
                        f"{self.url}: {what} {key}: another writer changed it first ({code})"
                    ) from None
                if code in ("NoSuchBucket",):
                    raise StoreError(
                        f"{self.url}: bucket {self.bucket!r} does not exist at {self.endpoint}: create it, "
                        "or fix the bucket in the URL"
                    ) from None
                if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                    raise StoreError(
                        f"{self.url}: {what} {key} was refused ({code}): check AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY and the bucket's policy"
                    ) from None
                if code not in _TRANSIENT and status not in _TRANSIENT:
                    raise StoreError(f"{self.url}: {what} {key} failed: {code} {e}") from None
                last: Exception = e
            except BotoCoreError as e:  # connection refused, timeouts, DNS
                last = e
            if attempt < self.retries:
                time.sleep(random.uniform(0, delay))  # noqa: S311 - jitter, not cryptography
                delay *= 2
        raise StoreUnavailableError(
            f"{self.url}: {what} {key} failed after {self.retries + 1} attempts at {self.endpoint}: {last}; "
            "is the server up and AWS_ENDPOINT_URL right?"
        )

    def get(self, key: str) -> Got | None:
        return self._get(key, None)

    def get_if_changed(self, key: str, etag: str | None) -> Got | None:
        return self._get(key, etag)

    def _get(self, key: str, etag: str | None) -> Got | None:
        def fetch() -> Got | None:
            kw: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
            if etag is not None:
                kw["IfNoneMatch"] = etag
            try:
                r = self._client.get_object(**kw)
            except ClientError as e:
                code = str(e.response.get("Error", {}).get("Code", ""))
                if code in ("NoSuchKey", "404", "304", "NotModified"):
                    return None
                raise
            body = r["Body"].read()
            length = r.get("ContentLength")
            if length is not None and len(body) != length:  # a connection cut mid-body
                raise ClientError({"Error": {"Code": "503", "Message": "short read"}}, "GetObject")
            return Got(body, r["ETag"])

        return self._call("GET", key, fetch)

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        kw: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key), "Body": data}
        if if_none_match:
            kw["IfNoneMatch"] = "*"
        if if_match is not None:
            kw["IfMatch"] = if_match
        return str(self._call("PUT", key, lambda: self._client.put_object(**kw))["ETag"])

    def delete(self, key: str) -> None:
        self._call("DELETE", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=self._key(key)))

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        token: str | None = None
        full = self._key(prefix)
        while True:
            kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full}
            if token:
                kw["ContinuationToken"] = token
            r = self._call("LIST", prefix, lambda kw=kw: self._client.list_objects_v2(**kw))  # type: ignore[misc]
            skip = len(self.prefix) + 1 if self.prefix else 0
            keys += [o["Key"][skip:] for o in r.get("Contents", [])]
            if not r.get("IsTruncated"):
                return sorted(keys)
            token = r["NextContinuationToken"]

    def create_bucket(self) -> None:
        """Create the bucket (tests and first set-up); an existing one is fine."""

        def create() -> None:
            try:
                self._client.create_bucket(Bucket=self.bucket)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

        self._call("CREATE", self.bucket, create)

    def close(self) -> None:
        self._client.close()


def open_store(url: str, **kw: Any) -> BlobStore:
    """The store a URL names: ``s3://bucket/prefix`` or a directory path (``file://`` optional)."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StoreError(f"{url}: no bucket; write s3://BUCKET/PREFIX")
        return S3Store(parsed.netloc, parsed.path, **kw)
    if parsed.scheme in ("", "file"):
        return DirStore(parsed.path if parsed.scheme else url)
    raise StoreError(f"{url}: unknown store; use s3://BUCKET/PREFIX or a directory path")

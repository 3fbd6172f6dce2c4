"""Blob stores (hollowd.blobs): a directory and a real S3 server (SeaweedFS), one interface."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from hollowd import blobs


@pytest.fixture(params=["dir", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[blobs.BlobStore]:
    url = str(tmp_path / "store") if request.param == "dir" else request.getfixturevalue("s3_url")
    s = blobs.open_store(url)
    yield s
    s.close()


def test_put_get_and_missing(store: blobs.BlobStore) -> None:
    assert store.get("headers/1") is None
    tag = store.put("headers/1", b"one")
    got = store.get("headers/1")
    assert got is not None
    assert got.data == b"one"
    assert got.etag == tag
    assert store.list("headers/") == ["headers/1"]


def test_conditional_read_says_not_modified(store: blobs.BlobStore) -> None:
    tag = store.put("announced", b"1")
    assert store.get_if_changed("announced", tag) is None
    store.put("announced", b"2")
    got = store.get_if_changed("announced", tag)
    assert got is not None
    assert got.data == b"2"


def test_conditional_writes_refuse_a_second_writer(store: blobs.BlobStore) -> None:
    """The store here (SeaweedFS 4.x) honours If-None-Match: * and If-Match on PUT; so does the directory."""
    tag = store.put("lease", b"a", if_none_match=True)
    with pytest.raises(blobs.PreconditionFailedError):
        store.put("lease", b"b", if_none_match=True)
    tag2 = store.put("lease", b"c", if_match=tag)
    with pytest.raises(blobs.PreconditionFailedError):
        store.put("lease", b"d", if_match=tag)  # stale: someone wrote since
    got = store.get("lease")
    assert got is not None
    assert got.data == b"c"
    assert got.etag == tag2


def test_blobs_are_checked_end_to_end() -> None:
    data = bytes(range(256)) * 1000
    blob = blobs.pack("delta", data)
    assert len(blob) < len(data) / 10
    assert blobs.unpack(blob, kind="delta", what="d") == data
    with pytest.raises(blobs.BlobCorruptError, match=r"too short|damaged|truncated"):
        blobs.unpack(blob[: len(blob) // 2], kind="delta", what="d")
    flipped = bytearray(blob)
    flipped[-5] ^= 0xFF
    with pytest.raises(blobs.BlobCorruptError, match="x/deltas/3"):
        blobs.unpack(bytes(flipped), kind="delta", what="x/deltas/3")
    with pytest.raises(blobs.BlobCorruptError, match="not 'snapshot'"):
        blobs.unpack(blob, kind="snapshot", what="d")


def test_unreachable_s3_names_the_store_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nobody listens there now
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    store = blobs.S3Store("nobucket", "p", endpoint_url=f"http://127.0.0.1:{port}", retries=2, backoff=0.01)
    try:
        with pytest.raises(
            blobs.StoreUnavailableError, match=r"s3://nobucket/p: GET announced failed after 3 attempts"
        ):
            store.get("announced")
    finally:
        store.close()


def test_missing_bucket_says_so(s3_url: str) -> None:
    store = blobs.open_store("s3://hollow-no-such-bucket/x")
    try:
        with pytest.raises(blobs.StoreError, match="does not exist"):
            store.get("announced")  # SeaweedFS creates a bucket on a PUT; a GET finds it missing
    finally:
        store.close()

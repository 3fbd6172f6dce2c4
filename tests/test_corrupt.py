"""Corrupt, truncated and foreign files give a named error, never a crash (DESIGN invariants 5 and 7).

Every read that could crash runs in a fresh interpreter, so a segfault or SIGBUS
fails one test instead of killing pytest; the subprocess prints which error
class it got.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hollow import layout
from hollowd import Producer
from tests.helpers import SCHEMAS, movie, movies_producer, run_python

# Opens the namespace and reads one version fully (every record of every type,
# every primary key), printing {"ok": ..} or {"error": <hollow error class>}.
# Any other exception or a crash makes the subprocess fail.
READ = r"""
import json, sys
import hollow
root, ns, which = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    with hollow.open(ns, root=root) as ds:
        snap = ds.snapshot() if which == "announced" else ds.attach(int(which))
        with snap:
            n = 0
            for t in snap.types:
                view = snap[t]
                for r in view:
                    r.to_dict()
                    n += 1
            for i in range(20):
                snap["Movie"].get(i)
            result = {"ok": True, "version": snap.version, "records": n}
except hollow.Error as e:
    result = {"error": type(e).__name__, "message": str(e)}
print(json.dumps(result))
"""


def read(root: Path, which: str | int, ns: str = "movies", timeout: float = 60) -> dict[str, Any]:
    out: dict[str, Any] = run_python(READ, str(root), ns, str(which), timeout=timeout)
    return out


def publish(root: Path, ns: str = "movies", n: int = 50) -> Path:
    """Publish version 1 of *ns* (movies, actors, roles); return the namespace directory."""

    def fill(state: Any) -> None:
        for i in range(n):
            state.add("Movie", movie(i))
            state.add("Actor", {"id": i, "name": f"Actor {i}", "bornAt": {"unixMillis": i}})
            state.add("Role", {"movieId": i, "actorId": i, "character": f"Role {i}"})

    kw: dict[str, Any] = {
        "primary_keys": {"Movie": "id", "Actor": "id", "Role": ["movieId", "actorId"]},
        "indexes": {"Movie": ["genre", "year"], "Role": ["actorId"]},
    }
    with Producer(ns, schema=SCHEMAS / "movies.capnp", root=root, **kw) as p:
        assert p.run_cycle(fill) == 1
    return root / ns


def plant(ns_dir: Path, name: str, data: bytes) -> Path:
    """Write a new file (never modify a published one: readers of a truncated mapping die of SIGBUS)."""
    path = ns_dir / name
    with open(path, "xb") as f:
        f.write(data)
    return path


def announce(ns_dir: Path, content: bytes) -> None:
    tmp = ns_dir / layout.ANNOUNCE_DIR / ".announced.test.tmp"
    tmp.write_bytes(content)
    os.rename(tmp, layout.announcement_path(ns_dir))


def good_bytes(ns_dir: Path) -> bytes:
    return (ns_dir / "1").read_bytes()


def header_of(data: bytes) -> layout.Header:
    return layout.Header.unpack(data, what="test", size=len(data))


@pytest.fixture
def ns_dir(root: Path) -> Path:
    return publish(root)


def test_good_file_reads(root: Path, ns_dir: Path) -> None:
    assert read(root, 1) == {"ok": True, "version": 1, "records": 150}
    assert read(root, "announced")["version"] == 1


# -- state files -------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.5, 0.99, 100 / 6000, 0])
def test_truncated_copy_is_corrupt(root: Path, ns_dir: Path, keep: float) -> None:
    data = good_bytes(ns_dir)
    plant(ns_dir, "2", data[: int(len(data) * keep)])
    assert read(root, 2)["error"] == "CorruptStateError"


def test_file_truncated_by_one_word_is_corrupt(root: Path, ns_dir: Path) -> None:
    data = good_bytes(ns_dir)
    plant(ns_dir, "2", data[:-8])
    out = read(root, 2)
    assert out["error"] == "CorruptStateError"
    assert "truncated" in out["message"]


def test_extended_file_is_corrupt(root: Path, ns_dir: Path) -> None:
    plant(ns_dir, "2", good_bytes(ns_dir) + bytes(64))
    assert read(root, 2)["error"] == "CorruptStateError"


def test_zero_length_file_is_corrupt(root: Path, ns_dir: Path) -> None:
    plant(ns_dir, "2", b"")
    assert read(root, 2)["error"] == "CorruptStateError"


def test_text_file_is_corrupt(root: Path, ns_dir: Path) -> None:
    plant(ns_dir, "2", b"this is not a state file\n" * 40)
    out = read(root, 2)
    assert out["error"] == "CorruptStateError"
    assert "magic" in out["message"]


def test_changed_magic_is_corrupt(root: Path, ns_dir: Path) -> None:
    data = bytearray(good_bytes(ns_dir))
    data[:8] = b"\x89HOLLOX\n"
    plant(ns_dir, "2", bytes(data))
    out = read(root, 2)
    assert out["error"] == "CorruptStateError"
    assert "magic" in out["message"]


def test_newer_format_version_is_corrupt_and_says_upgrade(root: Path, ns_dir: Path) -> None:
    data = bytearray(good_bytes(ns_dir))
    h = header_of(bytes(data))
    data[: layout.HEADER_SIZE] = dataclasses.replace(h, version=2, format_version=layout.FORMAT_VERSION + 1).pack()
    plant(ns_dir, "2", bytes(data))
    out = read(root, 2)
    assert out["error"] == "CorruptStateError"
    assert "upgrade" in out["message"]


FLIP_EVERY_HEADER_BYTE = r"""
import json, os, sys
import hollow
root, src = sys.argv[1], sys.argv[2]
data = open(src, "rb").read()
outcomes = {}
with hollow.open("movies", root=root) as ds:
    for off in range(128):
        b = bytearray(data)
        b[off] ^= 0x01
        path = os.path.join(root, "movies", "2")
        with open(path, "wb") as f:
            f.write(b)
        try:
            ds.attach(2).close()
            outcomes[off] = "ok"
        except hollow.Error as e:
            outcomes[off] = type(e).__name__
        os.unlink(path)
print(json.dumps(outcomes))
"""


def test_every_flipped_header_bit_is_corrupt(root: Path, ns_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "good"
    shutil.copyfile(ns_dir / "1", src)
    outcomes = run_python(FLIP_EVERY_HEADER_BYTE, str(root), str(src))
    assert {k: v for k, v in outcomes.items() if v != "CorruptStateError"} == {}


@pytest.mark.parametrize("fill", [0x00, 0xFF], ids=["zeroed", "ones"])
def test_overwritten_envelope_is_corrupt(root: Path, ns_dir: Path, fill: int) -> None:
    data = bytearray(good_bytes(ns_dir))
    h = header_of(bytes(data))
    data[h.envelope_offset : h.envelope_offset + h.envelope_length] = bytes([fill]) * h.envelope_length
    plant(ns_dir, "2", bytes(data))
    assert read(root, 2)["error"] == "CorruptStateError"


# For each byte of the envelope: flip it, re-sign the header with a fingerprint
# of its own (so that the damaged embedded schema is loaded afresh, exactly as
# a new reader process would) and attach. Attach must succeed or raise a hollow
# error; reading records of a damaged file that attached may raise any Python
# exception (pycapnp's readers are bounds-checked), but must not crash. The
# offset being tried is written to stderr first, so a crash names it.
FUZZ_ENVELOPE = r"""
import dataclasses, json, os, sys
import hollow
from hollow import layout
import xxhash
root, src, rehash = sys.argv[1], sys.argv[2], sys.argv[3] == "rehash"
data = open(src, "rb").read()
h = layout.Header.unpack(data, what=src, size=len(data))
bad_attach = {}
counts = {"ok": 0, "named": 0, "read_error": 0}
path = os.path.join(root, "movies", "2")
with hollow.open("movies", root=root) as ds:
    for k in range(h.envelope_length):
        b = bytearray(data)
        b[h.envelope_offset + k] ^= 0xFF
        new = dataclasses.replace(h, version=2, schema_fingerprint=h.schema_fingerprint ^ (k + 1))
        if rehash:  # a well-signed file whose envelope is malformed, not merely damaged
            env = bytes(b[h.envelope_offset : h.envelope_offset + h.envelope_length])
            new = dataclasses.replace(new, envelope_hash=xxhash.xxh3_64_intdigest(env))
        b[:layout.HEADER_SIZE] = new.pack()
        with open(path, "wb") as f:
            f.write(b)
        print(f"envelope byte {k}", file=sys.stderr, flush=True)
        try:
            snap = ds.attach(2)
            _ = snap.types, snap.schema_source
            views = [snap[t] for t in snap.types]
        except hollow.Error:
            counts["named"] += 1
            views = None
        except Exception as e:
            bad_attach[k] = f"{type(e).__name__}: {e}"[:160]
            views = None
        if views is not None:
            try:
                for view in views:
                    for r in view:
                        r.to_dict()
                counts["ok"] += 1
            except Exception:
                counts["read_error"] += 1
            snap.close()
        os.unlink(path)
print(json.dumps({"bad_attach": bad_attach, "counts": counts}))
"""


# The embedded schema's nodes are read part by part before SchemaLoader sees them (hollow.schema
# _check_node): a node hollowd never embeds, or one whose names are not UTF-8, is a named error.
# SchemaLoader itself takes both without a word, so without that check these load.
MALFORMED_NODE = r"""
import json, sys
from hollow import layout, schema, state
from hollow.errors import CorruptStateError
path, case = sys.argv[1], sys.argv[2]
data = open(path, "rb").read()
h = layout.Header.unpack(data, what=path, size=len(data))
env = schema.read_message(memoryview(data)[h.envelope_offset : h.envelope_offset + h.envelope_length])
nodes = [bytes(b) for b in env.get_root(schema.envelope().State).userSchema.nodes]
i = next(i for i, b in enumerate(nodes) if b"title" in b)
if case == "interface":
    node = schema.read_message(nodes[i]).get_root(schema.node_schema_type()).as_builder()
    node.init("interface")
    nodes[i] = node.to_bytes()
else:  # a field's name that is not UTF-8
    b = bytearray(nodes[i])
    b[b.index(b"title")] = 0xFF
    nodes[i] = bytes(b)
try:
    schema.embedded_types(h.schema_fingerprint ^ 1, nodes, what="forged")
    print(json.dumps({"loaded": True}))
except CorruptStateError as e:
    print(json.dumps({"error": str(e)}))
"""


@pytest.mark.parametrize("case", ["interface", "name"])
def test_a_malformed_embedded_schema_node_is_a_named_error(ns_dir: Path, case: str) -> None:
    out = run_python(MALFORMED_NODE, str(ns_dir / "1"), case)
    assert "error" in out, out
    assert out["error"].startswith("forged: embedded schema")


@pytest.mark.parametrize("rehash", ["damaged", "rehash"])
def test_flipped_envelope_byte_never_crashes_the_reader(root: Path, tmp_path: Path, rehash: str) -> None:
    ns_dir = publish(root, n=3)
    src = tmp_path / "good"
    shutil.copyfile(ns_dir / "1", src)
    proc = subprocess.run(
        [sys.executable, "-c", FUZZ_ENVELOPE, str(root), str(src), rehash],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    rc = proc.returncode
    last = proc.stderr.strip().splitlines()[-1:] if proc.stderr else []
    assert rc == 0, f"reader crashed (rc {rc}) at {last}"
    out = json.loads(proc.stdout)
    assert out["counts"]["named"] > 0  # the fuzzer did reach damaged files
    bad = out["bad_attach"]
    assert bad == {}, f"{len(bad)} damaged envelopes raised a non-hollow error at attach, e.g. {list(bad.items())[:5]}"


def test_file_of_another_namespace_is_corrupt(root: Path, ns_dir: Path) -> None:
    other = publish(root, ns="other")
    plant(ns_dir, "2", (other / "1").read_bytes())
    out = read(root, 2)
    assert out["error"] == "CorruptStateError"
    assert "other" in out["message"]


def test_file_under_another_versions_name_is_corrupt(root: Path, ns_dir: Path) -> None:
    # Version 1's file renamed (copied) to "3": the reader must not serve version 1 as version 3.
    plant(ns_dir, "3", good_bytes(ns_dir))
    out = read(root, 3)
    assert out.get("error") == "CorruptStateError", out


def test_symlink_as_state_file_is_not_followed(root: Path, ns_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    shutil.copyfile(ns_dir / "1", target)
    os.symlink(target, ns_dir / "2")
    assert read(root, 2)["error"] == "CorruptStateError"


def test_symlink_to_good_version_is_not_followed(root: Path, ns_dir: Path) -> None:
    os.symlink(ns_dir / "1", ns_dir / "2")
    assert read(root, 2)["error"] == "CorruptStateError"


def test_directory_as_state_file_is_corrupt(root: Path, ns_dir: Path) -> None:
    (ns_dir / "2").mkdir()
    assert read(root, 2)["error"] == "CorruptStateError"


def test_fifo_as_state_file_is_corrupt_not_a_hang(root: Path, ns_dir: Path) -> None:
    os.mkfifo(ns_dir / "2")
    # A reader that opens a FIFO without O_NONBLOCK blocks forever; the timeout only catches that hang.
    try:
        out = read(root, 2, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("opening a FIFO planted as a state file hangs the reader")
    assert out["error"] == "CorruptStateError"


def test_missing_version_is_version_not_found(root: Path, ns_dir: Path) -> None:
    assert read(root, 7)["error"] == "VersionNotFoundError"


# -- the announcement ----------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"{garbage",
        b"",
        b"[]",
        b'"1"',
        b"null",
        b"{}",
        b'{"version": -1}',
        b'{"version": 0}',
        b'{"version": "1"}',
        b'{"version": 1.5}',
        b'{"version": 1, "latest": "x"}',
        b"\xff\xfe\x00",
    ],
)
def test_garbage_announcement_is_corrupt(root: Path, ns_dir: Path, content: bytes) -> None:
    announce(ns_dir, content)
    assert read(root, "announced")["error"] == "CorruptStateError"


@pytest.mark.parametrize(
    "content",
    [
        b'{"version": 01, "pinned": false, "latest": 1, "announced_at_ns": 5}',  # not JSON: a leading zero
        b'{"version": 0, "pinned": false, "latest": 1, "announced_at_ns": 5}',
        b'{"version": 2, "pinned": False, "latest": 2, "announced_at_ns": 5}',
        b'{"version": 2, "pinned": false, "latest": 2, "announced_at_ns": 5}\x00',
    ],
)
def test_an_announcement_almost_as_a_producer_writes_it_is_corrupt(root: Path, ns_dir: Path, content: bytes) -> None:
    """Near misses of the exact pattern the reader reads without json (docs/decisions.md §110) go to json,
    which refuses them as it always did."""
    announce(ns_dir, content)
    assert read(root, "announced")["error"] == "CorruptStateError"


@pytest.mark.parametrize(
    "announcement",
    [
        layout.Announcement(1, latest=1),
        layout.Announcement(2, pinned=True, latest=7, announced_at_ns=1_796_156_906_550_752_599),
        layout.Announcement(2**63, pinned=False, latest=2**63, announced_at_ns=-1),
    ],
)
def test_an_announcement_reads_back_as_written_with_or_without_json(announcement: layout.Announcement) -> None:
    """The exact pattern and json read what :meth:`dumps` wrote alike; JSON written otherwise (other
    spacing, other key order, keys left out) is read by json as before."""
    data = announcement.dumps()
    assert layout.Announcement.loads(data, what="x") == announcement
    doc = json.loads(data)
    for other in (json.dumps(doc, indent=1), json.dumps(dict(reversed(doc.items())), separators=(",", ":"))):
        assert layout.Announcement.loads(other.encode(), what="x") == announcement
    assert layout.Announcement.loads(b'{"version": 3}', what="x") == layout.Announcement(3, latest=3)


def test_announced_version_without_file_is_version_not_found(root: Path, ns_dir: Path) -> None:
    announce(ns_dir, json.dumps({"version": 9}).encode())
    out = read(root, "announced")
    assert out["error"] == "VersionNotFoundError"
    assert "9" in out["message"]


def test_announced_corrupt_version_is_corrupt(root: Path, ns_dir: Path) -> None:
    plant(ns_dir, "2", good_bytes(ns_dir)[:1000])
    announce(ns_dir, json.dumps({"version": 2}).encode())
    assert read(root, "announced")["error"] == "CorruptStateError"


def test_symlink_as_announcement_is_not_followed(root: Path, ns_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "announced"
    target.write_text(json.dumps({"version": 1}))
    os.unlink(layout.announcement_path(ns_dir))
    os.symlink(target, layout.announcement_path(ns_dir))
    assert read(root, "announced")["error"] == "CorruptStateError"


def test_directory_as_announcement_is_corrupt(root: Path, ns_dir: Path) -> None:
    os.unlink(layout.announcement_path(ns_dir))
    (layout.announcement_path(ns_dir)).mkdir()
    assert read(root, "announced")["error"] == "CorruptStateError"


# -- a reader with a good version stays on it (invariant 5) ------------------------

# Open, read version 1, then damage what is announced (as argv[3] says), then ask
# for a snapshot again: the reader must keep serving version 1. The dataset does
# not follow in the background, so each snapshot() checks the announcement
# itself: the second one has certainly seen the damage.
STAY = r"""
import json, os, sys
import hollow
root, ns, how = sys.argv[1], sys.argv[2], sys.argv[3]
d = os.path.join(root, ns)

def announce(content):
    tmp = os.path.join(d, "announce", ".announced.test.tmp")
    with open(tmp, "wb") as f:
        f.write(content)
    os.rename(tmp, os.path.join(d, "announce", "announced"))

def plant(name, data):
    with open(os.path.join(d, name), "xb") as f:
        f.write(data)

good = open(os.path.join(d, "1"), "rb").read()
out = {}
with hollow.open(ns, root=root, follow=False) as ds:
    with ds.snapshot() as snap:
        out["before"] = [snap.version, snap["Movie"][7].title]
    if how == "garbage-announcement":
        announce(b"{garbage")
    elif how == "truncated":
        plant("2", good[: len(good) // 2])
        announce(b'{"version": 2}')
    elif how == "flipped-header":
        b = bytearray(good)
        b[40] ^= 1
        plant("2", bytes(b))
        announce(b'{"version": 2}')
    elif how == "foreign":
        plant("2", open(os.path.join(root, "other", "1"), "rb").read())
        announce(b'{"version": 2}')
    elif how == "symlink":
        os.symlink(os.path.join(d, "1"), os.path.join(d, "2"))
        announce(b'{"version": 2}')
    elif how == "symlinked-announcement":
        with open(os.path.join(root, "elsewhere"), "w") as f:
            f.write('{"version": 1}')
        os.unlink(os.path.join(d, "announce", "announced"))
        os.symlink(os.path.join(root, "elsewhere"), os.path.join(d, "announce", "announced"))
    try:
        with ds.snapshot() as snap:
            out["after"] = [snap.version, snap["Movie"][7].title]
        out["ds.version"] = ds.version
    except hollow.Error as e:
        out["after"] = type(e).__name__ + ": " + str(e)
print(json.dumps(out))
"""


@pytest.mark.parametrize(
    "how", ["garbage-announcement", "truncated", "flipped-header", "foreign", "symlink", "symlinked-announcement"]
)
def test_reader_on_good_version_stays_on_it_when_corrupt_one_is_announced(root: Path, ns_dir: Path, how: str) -> None:
    publish(root, ns="other")
    out = run_python(STAY, str(root), "movies", how)
    assert out["before"] == [1, "Movie 7"]
    assert out["after"] == [1, "Movie 7"], f"the reader did not stay on version 1: {out['after']}"
    assert out["ds.version"] == 1


MOVE_ON = r"""
import json, os, sys
import hollow
root, follow = sys.argv[1], sys.argv[2] == "follow"
d = os.path.join(root, "movies")

def announce(content):
    tmp = os.path.join(d, "announce", ".announced.test.tmp")
    with open(tmp, "wb") as f:
        f.write(content)
    os.rename(tmp, os.path.join(d, "announce", "announced"))

out = {}
with hollow.open("movies", root=root, follow=follow) as ds:
    out["before"] = ds.version
    announce(b"{garbage")
    if not follow:
        out["during"] = ds.version
    announce(json.dumps({"version": 2}).encode())
    if follow:
        out["waited"] = ds.wait_for(2, timeout=60)  # a liveness bound, not a timing assertion
    with ds.snapshot() as snap:
        out["after"] = [snap.version, snap["Movie"][7].title]
print(json.dumps(out))
"""


@pytest.mark.parametrize("follow", ["follow", "no-follow"])
def test_reader_moves_on_once_a_good_version_is_announced_after_garbage(root: Path, follow: str) -> None:
    with movies_producer(root) as p:
        p.run_cycle(lambda s: s.add("Movie", movie(7)))
        p.run_cycle(lambda s: s.add("Movie", movie(7, title="Fixed")))
        p.pin(1)
    out = run_python(MOVE_ON, str(root), follow)
    assert out["before"] == 1
    if follow == "no-follow":
        assert out["during"] == 1
    else:
        assert out["waited"] is True
    assert out["after"] == [2, "Fixed"]

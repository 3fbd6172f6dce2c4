"""The content check in O(1) for a file that is as its producer published it (docs/decisions.md §60).

The producer checks each file whole before publishing it and then sets its mtime to a stamp
derived from its header, its inode and the boot (``layout.published_mtime_ns``); a reader whose
``fstat`` shows that stamp skips the O(file) hash, and any other file is hashed whole as before.
The first tests check, on this machine's tmpfs, the kernel facts that this relies on
(docs/pitfalls.md 32); the others that damage is still caught and that a new reader of an
untouched file hashes nothing.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from hollow import layout
from hollowd.errors import PublishError
from tests.helpers import movies_producer
from tests.test_follow import version_data

STAMP = 1_700_000_000_123_456_789  # an mtime no clock would give a write: nanoseconds that are not a tick's
_libc = ctypes.CDLL(None, use_errno=True)
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


def _stamped_file(root: Path, size: int = 64 << 10) -> Path:
    path = root / "f"
    path.write_bytes(b"x" * size)
    os.utime(path, ns=(STAMP, STAMP))
    return path


def _with_fd(path: Path, flags: int, fn: Callable[[int], object]) -> None:
    fd = os.open(path, flags)
    try:
        fn(fd)
    finally:
        os.close(fd)


def _punch(fd: int) -> None:
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, ctypes.c_long(4096), ctypes.c_long(4096)):
        raise OSError(ctypes.get_errno(), "fallocate")


def _copy_range(fd: int, src: Path) -> None:
    with open(src, "rb") as f:
        os.copy_file_range(f.fileno(), fd, 100, 0, 0)


def _send(fd: int, src: Path) -> None:
    with open(src, "rb") as f:
        os.sendfile(fd, f.fileno(), 0, 100)


def _madv_remove(fd: int) -> None:
    with mmap.mmap(fd, 0) as mm:
        mm.madvise(mmap.MADV_REMOVE, 0, 4096)


def _map_and_write(fd: int) -> None:
    with mmap.mmap(fd, 0) as mm:
        mm[10:11] = b"y"  # the write itself faults the page in


# --- the kernel facts (docs/pitfalls.md 32) -------------------------------------------------------------


def test_tmpfs_keeps_an_mtime_to_the_nanosecond(root: Path) -> None:
    assert _stamped_file(root).stat().st_mtime_ns == STAMP


WRITES: dict[str, Callable[[Path, Path], None]] = {
    "pwrite of the same byte": lambda p, s: _with_fd(p, os.O_WRONLY, lambda fd: os.pwrite(fd, b"x", 10)),
    "write": lambda p, s: _with_fd(p, os.O_WRONLY, lambda fd: os.write(fd, b"y")),
    "ftruncate to the same size": lambda p, s: _with_fd(p, os.O_WRONLY, lambda fd: os.ftruncate(fd, 64 << 10)),
    "truncate shorter": lambda p, s: os.truncate(p, 4096),
    "fallocate punch hole": lambda p, s: _with_fd(p, os.O_WRONLY, _punch),
    "copy_file_range": lambda p, s: _with_fd(p, os.O_WRONLY, lambda fd: _copy_range(fd, s)),
    "sendfile": lambda p, s: _with_fd(p, os.O_WRONLY, lambda fd: _send(fd, s)),
    "madvise MADV_REMOVE": lambda p, s: _with_fd(p, os.O_RDWR, _madv_remove),
    "a write through a mapping that faults its page": lambda p, s: _with_fd(p, os.O_RDWR, _map_and_write),
}


@pytest.mark.parametrize("how", WRITES)
def test_every_write_to_a_tmpfs_file_changes_its_mtime(root: Path, how: str) -> None:
    src = root / "src"
    src.write_bytes(b"z" * 100)
    path = _stamped_file(root)
    WRITES[how](path, src)
    assert path.stat().st_mtime_ns != STAMP


def test_a_write_through_a_page_already_mapped_keeps_the_mtime(root: Path) -> None:
    """What the stamp cannot see: a shared writable mapping whose page is mapped already (by a read, or
    an earlier write) writes without a fault, and tmpfs updates the mtime only on the fault."""
    path = _stamped_file(root)
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, 0) as mm:
            assert mm[5] == ord("x")  # a read maps the page, writable
            os.utime(fd, ns=(STAMP, STAMP))
            mm[5:6] = b"q"
            mm.flush()
    finally:
        os.close(fd)
    assert path.stat().st_mtime_ns == STAMP
    assert path.read_bytes()[5:6] == b"q"


def test_cp_a_keeps_the_mtime_but_not_the_inode(root: Path, tmp_path: Path) -> None:
    path = _stamped_file(root)
    on_disk, back = tmp_path / "saved", root / "back"
    subprocess.run(["cp", "-a", str(path), str(on_disk)], check=True)
    subprocess.run(["cp", "-a", str(on_disk), str(back)], check=True)
    for copy in (on_disk, back):
        assert copy.stat().st_mtime_ns == STAMP
        assert copy.stat().st_ino != path.stat().st_ino


# --- the stamp ----------------------------------------------------------------------------------------

_FRESH = """
import json, sys, hollow, hollow.state
hashed = []
real = hollow.state.StateFile._content_hash
def counting(self):
    hashed.append(self.path.name)
    return real(self)
hollow.state.StateFile._content_hash = counting
try:
    with hollow.open("movies", root=sys.argv[1], follow=False) as ds, ds.snapshot() as snap:
        print(json.dumps({"title": snap["Movie"][0].title, "hashed": hashed}))
except hollow.Error as e:
    print(json.dumps({"error": type(e).__name__ + ": " + str(e), "hashed": hashed}))
"""


def fresh_reader(root: Path) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", _FRESH, str(root)], capture_output=True, text=True, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_a_new_reader_of_a_version_as_published_hashes_nothing(root: Path) -> None:
    with movies_producer(root) as p:
        p.run_cycle(version_data(1))
        p.run_cycle(version_data(2))  # an overlay on 1's base
        for name in ("2", "2.base"):
            st = (root / "movies" / name).stat()
            head = layout.Header.unpack((root / "movies" / name).read_bytes(), what=name, size=st.st_size)
            assert st.st_mtime_ns == layout.published_mtime_ns(head, st)
        assert fresh_reader(root) == {"title": "v2", "hashed": []}


def test_a_write_to_a_published_file_makes_new_readers_hash_it_and_refuse_it(root: Path) -> None:
    with movies_producer(root) as p:
        p.run_cycle(version_data(1))
        fd = os.open(root / "movies" / "1", os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            head = layout.Header.unpack(os.pread(fd, size, 0), what="1", size=size)
            at = head.envelope_offset - 8  # a record chunk's last word, before the envelope
            os.pwrite(fd, bytes([os.pread(fd, 1, at)[0] ^ 0x10]), at)
        finally:
            os.close(fd)
        out = fresh_reader(root)
        assert out["hashed"] == ["1"]
        assert "CorruptStateError" in str(out["error"])
        assert "damaged" in str(out["error"])


def test_a_damaged_copy_put_back_with_cp_a_is_hashed_and_refused(root: Path, tmp_path: Path) -> None:
    """Disk damage keeps the mtime, and so does ``cp -a``: the stamp copied along must not pass."""
    with movies_producer(root) as p:
        p.run_cycle(version_data(1))
        published = root / "movies" / "1"
        saved = tmp_path / "1"
        subprocess.run(["cp", "-a", str(published), str(saved)], check=True)
        data = bytearray(saved.read_bytes())
        head = layout.Header.unpack(bytes(data), what="1", size=len(data))
        data[head.envelope_offset - 8] ^= 0x10
        st = saved.stat()
        saved.chmod(0o640)
        saved.write_bytes(bytes(data))
        os.utime(saved, ns=(st.st_atime_ns, st.st_mtime_ns))  # bit rot: the bytes change, the mtime does not
        back = root / "movies" / ".1.back"
        subprocess.run(["cp", "-a", str(saved), str(back)], check=True)
        assert back.stat().st_mtime_ns == published.stat().st_mtime_ns  # the stamp came along
        os.rename(back, published)
        out = fresh_reader(root)
        assert out["hashed"] == ["1"]
        assert "CorruptStateError" in str(out["error"])


def test_a_damaged_durable_copy_is_refused_at_restore_and_nothing_is_published(root: Path, tmp_path: Path) -> None:
    with movies_producer(root) as p:
        p.run_cycle(version_data(1))
        data = bytearray((root / "movies" / "1").read_bytes())
    head = layout.Header.unpack(bytes(data), what="1", size=len(data))
    data[head.envelope_offset - 8] ^= 0x10
    saved = tmp_path / "latest.state"
    saved.write_bytes(bytes(data))
    shutil.rmtree(root / "movies")
    with movies_producer(root) as p:
        with pytest.raises(PublishError, match="damaged"):
            p.materialize(saved)
        assert p.versions() == []


def test_a_good_durable_copy_is_restored_with_its_stamp(root: Path, tmp_path: Path) -> None:
    with movies_producer(root) as p:
        p.run_cycle(version_data(1))
        p.run_cycle(version_data(2))
        saved = tmp_path / "latest.state"
        shutil.copyfile(root / "movies" / "2", saved)
        shutil.copyfile(root / "movies" / "2.base", layout.base_of(saved))
    shutil.rmtree(root / "movies")
    with movies_producer(root) as p:
        assert p.materialize(saved) == 2
    assert fresh_reader(root) == {"title": "v2", "hashed": []}


def test_a_stamp_made_for_another_inode_does_not_pass(root: Path) -> None:
    with movies_producer(root) as p:
        p.run_cycle(version_data(1))
    published = root / "movies" / "1"
    st = published.stat()
    head = layout.Header.unpack(published.read_bytes(), what="1", size=st.st_size)
    stamp = layout.published_mtime_ns(head, st)
    assert st.st_mtime_ns == stamp
    copy = root / "copy"
    shutil.copy2(published, copy)
    assert copy.stat().st_mtime_ns == stamp
    assert layout.published_mtime_ns(head, copy.stat()) != stamp

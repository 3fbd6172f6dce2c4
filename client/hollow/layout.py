"""The on-disk contract shared by the reader (`hollow`) and the writer (`hollowd`).

Everything both sides must agree on lives here and nowhere else: the names of
files under the root, the fixed header of a state file, the announcement file,
and the canonical encoding and hashing of index keys. Changing any of it is a
format change (bump :data:`FORMAT_VERSION`; the golden files in
``tests/golden`` fail otherwise).

Layout of a namespace directory (``<root>/<namespace>/``)::

    <version>         one immutable state file per live version (decimal name)
    .<version>.<pid>.tmp   a state file being written; never opened by readers
    <version>.base    a hard link to the base file the version is built on, if any
    <version>.mid     a hard link to the earlier version (on the same base) whose
                      overlays this version's are over, if any (docs/decisions.md §18)
    <version>.lock    its lockfile, on which readers hold leases (hollow.lease)
    announce/announced   JSON: the version readers should be on, and the pin

A state file is a 128-byte header (:class:`Header`), an unpacked Cap'n Proto
envelope (``hollow.capnp`` ``State``) and the sections the envelope points at,
each 8-byte aligned.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import stat
import struct
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from hollow.errors import CorruptStateError, InvalidNameError, PermissionDeniedError, UntrustedDirectoryError

FORMAT_VERSION = 5
MAGIC = b"\x89HOLLOW\n"
HEADER_SIZE = 128
DEFAULT_ROOT = "/dev/shm/hollow"  # noqa: S108 - the shared-memory root is the point
ANNOUNCED = "announced"
#: The announcement lives alone in its own directory, so that inotify on that
#: directory reports announcements and nothing else (not every publish's files).
ANNOUNCE_DIR = "announce"
NAMESPACE_MAX_BYTES = 32

M64 = (1 << 64) - 1

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# magic, format, header size, flags, version, parent, schema fingerprint,
# envelope offset, envelope length, file length, content hash, envelope hash,
# namespace, published-at ns; then the header checksum over everything before it.
_HEADER = struct.Struct("<8sHHIQQQQQQQQ32sq")
_CHECKSUM = struct.Struct("<Q")
assert _HEADER.size + _CHECKSUM.size == HEADER_SIZE


def root_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The root directory: *root*, else ``$HOLLOW_ROOT``, else ``/dev/shm/hollow``."""
    return Path(root_str(root))


def root_str(root: str | os.PathLike[str] | None = None) -> str:
    """:func:`root_dir` as a string (what the reader's attach path uses: docs/decisions.md §80)."""
    if root is not None:
        return os.fspath(root)
    return os.environ.get("HOLLOW_ROOT") or DEFAULT_ROOT


def check_namespace(name: str) -> str:
    """Return *name* if it is a valid namespace name, else raise :class:`InvalidNameError`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name.encode()) > NAMESPACE_MAX_BYTES:
        raise InvalidNameError(
            f"invalid namespace name {name!r}: use 1-{NAMESPACE_MAX_BYTES} characters "
            "from A-Z a-z 0-9 _ . -, starting with a letter or digit"
        )
    return name


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def check_trusted(
    path: str | Path, *, owners: Collection[int] | None, what: str, sticky_ok: bool = False
) -> os.stat_result:
    """*path*'s lstat if it is a directory that only its owner may write, owned by one of *owners*
    (None: anyone); :class:`UntrustedDirectoryError` naming the path, owner, mode and fix otherwise.
    FileNotFoundError when it does not exist. With *sticky_ok*, a sticky directory others may write
    (a fresh tmpfs, like /dev/shm itself) passes: no one can rename or remove what is not theirs there.

    Whoever can write the root can swap a namespace directory for a forged one, and whoever owns a
    directory can chmod it; a symlink may point anywhere. The producer and every reader check the
    root and the namespace directory before using them (docs/decisions.md §32).
    """
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UntrustedDirectoryError(
            f"{what} {path} is a symlink (to {os.readlink(path)}), which hollow does not follow: "
            "give the real path instead"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise UntrustedDirectoryError(f"{what} {path} is not a directory: remove it, or use another root")
    mode = stat.S_IMODE(st.st_mode)
    writable = bool(mode & 0o022) and not (sticky_ok and mode & stat.S_ISVTX)
    if (owners is not None and st.st_uid not in owners) or writable:
        who = " or ".join(dict.fromkeys(map(_user, owners))) if owners is not None else "its owner"
        raise UntrustedDirectoryError(
            f"{what} {path} is owned by {_user(st.st_uid)} with mode {mode:04o}: hollow trusts only a directory "
            f"of {who} that no one else may write (whoever can write it can put forged data in it). Fix: remove "
            f"it and let hollowd make it, or: chown {_user(next(iter(owners or [st.st_uid])))} {path} "
            f"&& chmod go-w {path}"
        )
    return st


def check_namespace_tree(ns_dir: str | Path) -> os.stat_result:
    """For readers: the root and *ns_dir* are real directories that no one but their owners may write,
    and the namespace's owner is the root's (or root); returns *ns_dir*'s lstat (its owner is the
    producer's user). FileNotFoundError when either is missing."""
    root = check_trusted(os.path.dirname(ns_dir), owners=None, what="root", sticky_ok=True)
    return check_trusted(ns_dir, owners={0, root.st_uid}, what="namespace directory")


def namespace_exists(ns_dir: Path) -> bool:
    """Whether *ns_dir* is a namespace directory readers may trust (:func:`check_namespace_tree`);
    :class:`PermissionDeniedError` when this process may not look, :class:`UntrustedDirectoryError`
    when it is not to be trusted."""
    try:
        check_namespace_tree(ns_dir)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except PermissionError as e:
        raise PermissionDeniedError.of(ns_dir.parent, e) from e
    return True


def namespace_dir(namespace: str, root: str | os.PathLike[str] | None = None) -> Path:
    return root_dir(root) / check_namespace(namespace)


def state_name(version: int) -> str:
    return str(version)


#: The suffix of a version's link to its base: ``<version>.base`` (and of a temporary file's).
BASE_SUFFIX = ".base"


def base_of(path: Path) -> Path:
    """The name under which the state file at *path* finds its base: ``<path>.base``."""
    return path.with_name(path.name + BASE_SUFFIX)


#: The suffix of a version's link to its mid: ``<version>.mid`` (and of a temporary file's).
MID_SUFFIX = ".mid"
#: The links a state file may have beside it, removed with it.
LINK_SUFFIXES = (BASE_SUFFIX, MID_SUFFIX)


def mid_of(path: Path) -> Path:
    """The name under which the state file at *path* finds its mid: ``<path>.mid``."""
    return path.with_name(path.name + MID_SUFFIX)


def parse_state_name(name: str) -> int | None:
    """The version a directory entry names, or None if it is not a state file."""
    if name.isdigit() and not name.startswith("0"):
        return int(name)
    return None


def list_versions(ns_dir: Path) -> list[int]:
    """Versions with a state file in *ns_dir*, ascending."""
    try:
        names = os.listdir(ns_dir)
    except FileNotFoundError:
        return []
    except PermissionError as e:
        raise PermissionDeniedError.of(ns_dir, e) from e
    return sorted(v for v in map(parse_state_name, names) if v is not None)


@dataclass(frozen=True, slots=True)
class Header:
    """The fixed header at the start of every state file."""

    version: int
    parent_version: int
    schema_fingerprint: int
    envelope_offset: int
    envelope_length: int
    file_length: int
    content_hash: int
    envelope_hash: int
    namespace: str
    published_at_ns: int
    format_version: int = FORMAT_VERSION

    def pack(self) -> bytes:
        head = _HEADER.pack(
            MAGIC,
            self.format_version,
            HEADER_SIZE,
            0,
            self.version,
            self.parent_version,
            self.schema_fingerprint,
            self.envelope_offset,
            self.envelope_length,
            self.file_length,
            self.content_hash,
            self.envelope_hash,
            self.namespace.encode(),
            self.published_at_ns,
        )
        return head + _CHECKSUM.pack(xxhash.xxh3_64_intdigest(head))

    @classmethod
    def unchecked(cls, buf: Any) -> Header:
        """The fields of the header at the start of *buf* as they are, without any check (to look at a
        damaged file; readers use :meth:`unpack`)."""
        return cls._of(_HEADER.unpack_from(bytes(buf[:HEADER_SIZE])))

    @classmethod
    def _of(cls, fields: tuple[Any, ...]) -> Header:
        return cls(
            version=fields[4],
            parent_version=fields[5],
            schema_fingerprint=fields[6],
            envelope_offset=fields[7],
            envelope_length=fields[8],
            file_length=fields[9],
            content_hash=fields[10],
            envelope_hash=fields[11],
            namespace=fields[12].rstrip(b"\0").decode(errors="replace"),
            published_at_ns=fields[13],
            format_version=fields[1],
        )

    @classmethod
    def unpack(cls, buf: Any, *, what: str, size: int) -> Header:
        """Parse and check the header at the start of *buf* in O(1).

        *what* names the file in errors; *size* is the file's actual size.
        Raises :class:`CorruptStateError` naming the first problem found.
        """
        if size < HEADER_SIZE:
            raise CorruptStateError(f"{what}: {size} bytes is too short for a hollow state file")
        raw = bytes(buf[:HEADER_SIZE])
        fields = _HEADER.unpack_from(raw)
        if fields[0] != MAGIC:
            raise CorruptStateError(f"{what}: not a hollow state file (bad magic {fields[0]!r})")
        if fields[1] > FORMAT_VERSION:
            raise CorruptStateError(
                f"{what}: state file format {fields[1]}, this reader knows format {FORMAT_VERSION}; "
                "upgrade the hollowd package of this reader"
            )
        if fields[1] != FORMAT_VERSION:
            raise CorruptStateError(
                f"{what}: state file format {fields[1]} is older than this reader's ({FORMAT_VERSION}); "
                "publish it again with the producer of this hollowd version"
            )
        (checksum,) = _CHECKSUM.unpack_from(raw, _HEADER.size)
        if checksum != xxhash.xxh3_64_intdigest(raw[: _HEADER.size]):
            raise CorruptStateError(f"{what}: header checksum mismatch")
        header = cls._of(fields)
        if header.file_length != size:
            raise CorruptStateError(
                f"{what}: truncated or extended: header says {header.file_length} bytes, file has {size}"
            )
        end = header.envelope_offset + header.envelope_length
        if header.envelope_offset < HEADER_SIZE or header.envelope_offset % 8 or end > size:
            raise CorruptStateError(f"{what}: envelope out of bounds")
        # The envelope is small (the schema and a few hundred bytes per type) and pycapnp
        # trusts schema nodes, so it is checked whole; the sections are bounds-checked by capnp.
        if xxhash.xxh3_64_intdigest(buf[header.envelope_offset : end]) != header.envelope_hash:
            raise CorruptStateError(f"{what}: envelope checksum mismatch")
        return header


def _read_boot_id() -> bytes:
    """This boot's random id (proc(5)); empty if /proc cannot say."""
    try:
        fd = os.open("/proc/sys/kernel/random/boot_id", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.read(fd, 64).strip()
    except OSError:
        return b""
    finally:
        os.close(fd)


_BOOT_ID = _read_boot_id()  # read as hollow is imported, not at the first open (about 50 µs)


def published_mtime_ns(header: Header, st: os.stat_result) -> int:
    """The mtime a producer gives a state file once it has checked the file whole against its content
    hash, as the last step before publishing it (docs/decisions.md §60).

    The seconds are the header's publishing time; the nanoseconds a hash of the header's hashes and
    version, the file's device, inode and size, and this boot's id. Any write or truncate sets the
    mtime to the clock's time (docs/pitfalls.md 32), and a copy (``cp -a``, a restore from disk,
    which keep the mtime) is another inode, or the same inode number after a reboot: none of them
    shows this stamp, so :meth:`hollow.state.StateFile.verify` hashes them whole.
    """
    tag = xxhash.xxh3_64_intdigest(
        struct.pack(
            "<QQQQQQ", header.content_hash, header.envelope_hash, header.version, st.st_dev, st.st_ino, st.st_size
        )
        + _BOOT_ID
    )
    return header.published_at_ns // 1_000_000_000 * 1_000_000_000 + tag % 1_000_000_000


def check_section(offset: int, length: int, file_length: int, *, what: str) -> None:
    """Raise :class:`CorruptStateError` unless [offset, offset+length) is an aligned range of the file."""
    if length == 0:
        return
    if offset % 8 or offset < HEADER_SIZE or offset + length > file_length:
        raise CorruptStateError(f"{what}: section [{offset}, +{length}) out of bounds")


# --- the announcement file -------------------------------------------------


#: :meth:`Announcement.dumps`'s output exactly (JSON integers: no leading zero; version positive).
_ANNOUNCEMENT = re.compile(
    rb'\{"version": ([1-9][0-9]*), "pinned": (true|false), "latest": (0|[1-9][0-9]*), '
    rb'"announced_at_ns": (-?(?:0|[1-9][0-9]*))\}'
)


@dataclass(frozen=True, slots=True)
class Announcement:
    """What ``<ns>/announce/announced`` says: the version readers should be on now."""

    version: int
    pinned: bool = False
    latest: int = 0
    announced_at_ns: int = 0

    def dumps(self) -> bytes:
        return json.dumps(
            {
                "version": self.version,
                "pinned": self.pinned,
                "latest": self.latest or self.version,
                "announced_at_ns": self.announced_at_ns,
            }
        ).encode()

    @classmethod
    def loads(cls, data: bytes, *, what: str) -> Announcement:
        # What :meth:`dumps` writes, read without json: a fresh process's first ``json.loads`` costs
        # 30-40 µs of the 1 ms its first lookup has (docs/decisions.md §110). Anything else, json.
        exact = _ANNOUNCEMENT.fullmatch(data)
        if exact is not None:
            return cls(int(exact[1]), exact[2] == b"true", int(exact[3]), int(exact[4]))
        try:
            doc = json.loads(data)
            version = doc["version"]
            if not isinstance(version, int) or version <= 0:
                raise ValueError("version must be a positive integer")
            return cls(
                version=version,
                pinned=bool(doc.get("pinned", False)),
                latest=int(doc.get("latest", version)),
                announced_at_ns=int(doc.get("announced_at_ns", 0)),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptStateError(f"{what}: unreadable announcement ({e})") from e


def announcement_path(ns_dir: Path) -> Path:
    """``<ns>/announce/announced``."""
    return ns_dir / ANNOUNCE_DIR / ANNOUNCED


def read_announcement(ns_dir: Path) -> Announcement | None:
    """The namespace's announcement, or None when nothing was announced yet.

    Neither ``announce`` nor ``announced`` is followed if it is a symlink (O_NOFOLLOW, each opened
    relative to its directory) or waited on if it is a FIFO (O_NONBLOCK): :class:`CorruptStateError`.
    """
    return read_announcement_stamped(ns_dir)[0]


def read_announcement_stamped(ns_dir: str | Path) -> tuple[Announcement | None, tuple[int, int] | None]:
    """:func:`read_announcement`, and the (inode, mtime) of the file it read, from the fstat it makes
    anyway: what a reader compares a later ``stat`` with to tell whether anything was announced since
    (None when nothing is announced)."""
    adir = f"{os.fspath(ns_dir)}/{ANNOUNCE_DIR}"  # strings, not Paths: docs/decisions.md §80
    path = f"{adir}/{ANNOUNCED}"
    try:
        dfd = os.open(adir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, None
    except PermissionError as e:
        raise PermissionDeniedError.of(path, e) from e
    except OSError as e:
        raise CorruptStateError(f"{adir}: not a directory ({e.strerror}); is it a symlink?") from e
    try:
        try:
            fd = os.open(ANNOUNCED, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
        except FileNotFoundError:
            return None, None
        except OSError as e:
            raise CorruptStateError(f"{path}: cannot open the announcement ({e.strerror}); is it a symlink?") from e
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptStateError(f"{path}: the announcement is not a regular file")
        data = os.read(fd, 4096)
    except OSError as e:
        raise CorruptStateError(f"{path}: cannot read the announcement ({e.strerror})") from e
    finally:
        os.close(fd)
    return Announcement.loads(data, what=path), (st.st_ino, st.st_mtime_ns)


# --- index keys --------------------------------------------------------------
#
# A key is hashed from canonical bytes so that the producer (which sees the
# Python values it was given) and every reader (which sees what callers pass to
# get() and find()) agree without sharing any state.

KEY_INT, KEY_TEXT, KEY_DATA, KEY_BOOL = 0, 1, 2, 3
KIND_EXACT_INT, KIND_HASHED = 0, 1


def canonical_part(key_type: int, value: Any) -> bytes:
    """The canonical bytes of one key field; TypeError when *value* does not fit *key_type*."""
    t = type(value)
    if key_type == KEY_INT and t is int:
        return int(value & M64).to_bytes(8, "little")
    if key_type == KEY_TEXT and t is str:
        return str(value).encode()
    if key_type == KEY_DATA and t in (bytes, bytearray, memoryview):
        return bytes(value)
    if key_type == KEY_BOOL and t is bool:
        return b"\1" if value else b"\0"
    raise TypeError(f"expected {KEY_TYPE_NAMES[key_type]}, got {t.__name__}")


KEY_TYPE_NAMES = {KEY_INT: "int", KEY_TEXT: "str", KEY_DATA: "bytes", KEY_BOOL: "bool"}


def key_fingerprint(kind: int, key_types: tuple[int, ...], key: Any) -> int:
    """The 64-bit value an index stores for *key* (a value, or a tuple for several fields)."""
    if kind == KIND_EXACT_INT:
        if type(key) is not int:
            raise TypeError(f"expected int, got {type(key).__name__}")
        return key & M64
    if len(key_types) == 1:
        return xxhash.xxh3_64_intdigest(canonical_part(key_types[0], key))
    if type(key) is not tuple or len(key) != len(key_types):
        raise TypeError(f"expected a tuple of {len(key_types)} values")
    parts = [canonical_part(t, v) for t, v in zip(key_types, key, strict=True)]
    return xxhash.xxh3_64_intdigest(b"".join(len(p).to_bytes(4, "little") + p for p in parts))


def slot_of(fingerprint: int, capacity: int) -> int:
    """The first slot probed for *fingerprint* in a table of *capacity* slots.

    Integer keys are their own hash (as in CPython's dict): dense ids fill a
    table without a single collision. Capacities are prime, so only keys that
    differ by a multiple of the capacity share a home slot.
    """
    return fingerprint % capacity

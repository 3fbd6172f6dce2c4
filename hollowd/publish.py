"""Writing a state file and announcing it.

Publish is write-new, verify, rename, then announce; nothing is ever modified
in place (a reader of a truncated mapping dies of SIGBUS, which Python cannot
catch: mmap(2)). In order:

1. lay out every section and the envelope, so the file's size is known;
2. create ``.<version>.<pid>.tmp`` (O_EXCL, O_NOFOLLOW) and reserve the whole
   size with posix_fallocate(3), so a full /dev/shm fails here, cleanly;
3. write the sections, the envelope and, last, the header; fsync;
4. make it read-only (0440 & mode) and attach it as a reader would (verify);
   make room for the announcement (:func:`reserve_announcement`) and the lockfile;
5. rename(2) it to ``<version>``: readers see all of it or none of it (a
   version built on a base gets its hard link ``<version>.base`` first);
6. write ``announced`` the same way (temporary name, rename).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from hollow import doorbell, layout, lease, ring
from hollow import schema as reader_schema
from hollow.errors import Error as ReaderError
from hollow.state import StateFile
from hollowd.errors import ConfigurationError, PublishError, StorageFullError
from hollowd.index import BuiltIndex
from hollowd.overlay import OVERLAY_ARRAYS, BuiltOverlay
from hollowd.schema import NamespaceSchema
from hollowd.state import BuiltType

_KIND = {layout.KIND_EXACT_INT: "exactInt", layout.KIND_HASHED: "hashed"}
_KEY_TYPE = {layout.KEY_INT: "int", layout.KEY_TEXT: "text", layout.KEY_DATA: "data", layout.KEY_BOOL: "bool"}


@dataclass
class _Piece:
    offset: int
    data: Any  # a buffer


class _Layout:
    """Sections placed one after another from the end of the header, each 8-byte aligned."""

    def __init__(self) -> None:
        self.pieces: list[_Piece] = []
        self.end = layout.HEADER_SIZE

    def add(self, *parts: Any) -> tuple[int, int]:
        """Place *parts* contiguously; returns (offset, length) of the whole section."""
        start = self.end
        for part in parts:
            mv = memoryview(part).cast("B")
            if len(mv):
                self.pieces.append(_Piece(self.end, mv))
            self.end += len(mv)
        length = self.end - start
        self.end += -self.end & 7
        return start, length


def _set_section(section: Any, where: tuple[int, int]) -> None:
    section.offset, section.length = where


def _index_message(ix: Any, built: BuiltIndex, place: _Layout) -> None:
    spec = built.spec
    ix.init("fields", len(spec.fields))
    for i, f in enumerate(spec.fields):
        ix.fields[i] = f
    ix.init("fieldTypes", len(spec.key_types))
    for i, t in enumerate(spec.key_types):
        ix.fieldTypes[i] = _KEY_TYPE[t]
    ix.kind = _KIND[spec.kind]
    ix.unique = spec.unique
    ix.capacity = built.capacity
    ix.distinct = built.distinct
    _set_section(ix.slots, place.add(built.slots))
    _set_section(ix.postings, place.add(_padded(built.postings)))


def _padded(a: Any) -> Any:
    """A uint32 array padded to a whole number of words (sections are cast by readers)."""
    if len(a) % 2:
        return np.concatenate((a, np.zeros(1, dtype=a.dtype)))
    return a


def _envelope(namespace: str, version: int, parent: int, schema: NamespaceSchema, now: int) -> Any:
    env = reader_schema.envelope()
    state = env.State.new_message()
    state.namespace = namespace
    state.version = version
    state.parentVersion = parent
    state.publishedAtNs = now
    emb = state.userSchema
    emb.fingerprint = schema.fingerprint
    emb.fileName = schema.path.name
    emb.source = schema.source
    emb.init("nodes", len(schema.node_bytes))
    for i, b in enumerate(schema.node_bytes):
        emb.nodes[i] = b
    return state


def _finish(
    state: Any, place: _Layout, *, namespace: str, version: int, parent: int, schema: NamespaceSchema, now: int
) -> tuple[int, list[_Piece]]:
    """Place the envelope last, hash the content, and put the header first: (file size, pieces)."""
    envelope = state.to_bytes()
    env_at = place.add(envelope)
    total = place.end
    content = xxhash.xxh3_64()
    at = layout.HEADER_SIZE
    for piece in place.pieces:
        if piece.offset > at:
            content.update(bytes(piece.offset - at))
        content.update(piece.data)
        at = piece.offset + len(piece.data)
    if total > at:
        content.update(bytes(total - at))
    header = layout.Header(
        version=version,
        parent_version=parent,
        schema_fingerprint=schema.fingerprint,
        envelope_offset=env_at[0],
        envelope_length=env_at[1],
        file_length=total,
        content_hash=content.intdigest(),
        envelope_hash=xxhash.xxh3_64_intdigest(envelope),
        namespace=namespace,
        published_at_ns=now,
    )
    return total, [_Piece(0, header.pack()), *place.pieces]


def _type_state(ts: Any, built: BuiltType | BuiltOverlay, place: _Layout) -> None:
    """What a base's and an overlay's ``TypeState`` both say: the type, its counts, hash and holes."""
    ts.name = built.rtype.name
    ts.typeId = built.rtype.type_id
    ts.count = built.count
    ts.ordinals = built.size
    ts.contentHash = built.content_hash
    _set_section(ts.holes, place.add(_padded(built.holes)))


def write_state_file(
    ns_dir: Path,
    namespace: str,
    version: int,
    parent: int,
    schema: NamespaceSchema,
    types: Iterable[BuiltType],
    *,
    mode: int = 0o640,
    name: str | None = None,
) -> StateFile:
    """Write, verify and rename into place a base state file of *version* (every record); return it as
    verified (attached, named by its final path: the producer's next cycle builds on it).

    *name* puts it under another name than the version's, with no lockfile: a base
    compacted in the background, waiting for the version that will link it.

    Raises :class:`StorageFullError` when the filesystem has no room (nothing is
    left behind) and :class:`PublishError` for any other failure. A file already
    at that name (the same version built on a base, being compacted) is replaced.
    """
    now = time.time_ns()
    state = _envelope(namespace, version, parent, schema, now)
    types = list(types)
    place = _Layout()
    lst = state.init("types", len(types))
    for ts, built in zip(lst, types, strict=True):
        _type_state(ts, built, place)
        _set_section(ts.records, place.add(built.table, built.segment))
        _set_section(ts.hashes, place.add(built.hashes))
        ts.merges = built.merges
        _index_message(ts.primaryKey, built.primary, place)
        ixs = ts.init("indexes", len(built.secondary))
        for ix, b in zip(ixs, built.secondary, strict=True):
            _index_message(ix, b, place)
    total, pieces = _finish(state, place, namespace=namespace, version=version, parent=parent, schema=schema, now=now)
    verified: list[StateFile] = []
    final = _install(
        ns_dir, version, total, pieces, mode, lambda tmp: verified.append(verify(tmp, namespace, version, types)),
        name=name,
    )  # fmt: skip
    verified[0].renamed(final)
    return verified[0]


def write_overlay_file(
    ns_dir: Path,
    namespace: str,
    version: int,
    parent: int,
    schema: NamespaceSchema,
    base: StateFile,
    types: Iterable[BuiltOverlay],
    *,
    mode: int = 0o640,
    mid: StateFile | None = None,
    shared: bool = False,
) -> StateFile:
    """Write and rename into place *version* as overlays over *base*, linked as ``<version>.base``,
    or over *mid* (an earlier version on *base*), linked as ``<version>.mid`` as well; return it as
    verified, named by its final path.

    *shared*: *base* and *mid* read the new version as they are (they were opened through the
    same schema), so the check attaches the new file over them instead of mapping them again
    through links beside the temporary file; they are then named by the new version's links.
    """
    now = time.time_ns()
    state = _envelope(namespace, version, parent, schema, now)
    state.baseVersion = base.version
    state.baseContentHash = base.header.content_hash
    if mid is not None:
        state.midVersion = mid.version
        state.midContentHash = mid.header.content_hash
    types = list(types)
    place = _Layout()
    lst = state.init("types", len(types))
    for ts, built in zip(lst, types, strict=True):
        _type_state(ts, built, place)
        ov = ts.overlay
        chunks = ov.init("chunks", len(built.chunks))
        for sec, chunk in zip(chunks, built.chunks, strict=True):
            _set_section(sec, place.add(chunk))
        for name in OVERLAY_ARRAYS:
            _set_section(getattr(ov, name), place.add(built.arrays[name]))
        for name, arrays in built.per_index.items():
            secs = ov.init(name, len(arrays))
            for sec, arr in zip(secs, arrays, strict=True):
                _set_section(sec, place.add(arr))
        _set_section(ov.bloom, place.add(built.bloom, bytes(-len(built.bloom) & 7)))  # readers cast whole words
        ov.bloomLength = len(built.bloom)
        _index_message(ov.keys, built.keys, place)
        for name, tables in (("added", built.added), ("skipped", built.skipped)):
            ixs = ov.init(name, len(tables))
            for ix, b in zip(ixs, tables, strict=True):
                _index_message(ix, b, place)
    total, pieces = _finish(state, place, namespace=namespace, version=version, parent=parent, schema=schema, now=now)

    verified: list[StateFile] = []

    def link_and_verify(tmp: Path) -> None:
        final = ns_dir / layout.state_name(version)
        links: dict[Callable[[Path], Path], Path] = {layout.base_of: base.path}
        if mid is not None:
            links[layout.mid_of] = mid.path
        for link_of, target in links.items():
            with contextlib.suppress(FileNotFoundError):
                link_of(final).unlink()  # debris of a crash before this version's rename
            _link(target, link_of(final))
        if shared:
            verified.append(verify_overlay(tmp, namespace, version, types, base=base, mid=mid))
            return
        at_tmp = {link_of: link_of(final) for link_of in links}
        _with_links(tmp, at_tmp, lambda: verified.append(verify_overlay(tmp, namespace, version, types)))

    final = _install(ns_dir, version, total, pieces, mode, link_and_verify)
    verified[0].renamed(final)
    return verified[0]


def copy_state_file(
    ns_dir: Path,
    version: int,
    data: bytes,
    *,
    mode: int,
    namespace: str,
    base: Path | None = None,
    mid: Path | None = None,
) -> Path:
    """Publish the bytes of an existing state file (a durable copy) as *version*: same steps as a new one.

    A version built on a base needs *base* (the copy of its base file), installed first as
    ``<version>.base``; one over a mid, *mid* as well (``<version>.mid``).
    """
    final = ns_dir / layout.state_name(version)
    links: dict[Callable[[Path], Path], Path] = {}
    for link_of, copy, kind in ((layout.base_of, base, "base"), (layout.mid_of, mid, "mid")):
        if copy is not None:
            _install_file(link_of(final), ns_dir / f".{version}.{kind}.{os.getpid()}.tmp", copy.read_bytes(), mode)
            links[link_of] = link_of(final)

    def check(tmp: Path) -> None:  # refuse to put back a file that does not read, or is damaged
        _with_links(tmp, links, lambda: _check_copy(tmp, namespace))

    return _install(ns_dir, version, len(data), [_Piece(0, data)], mode, check)


def _check_copy(tmp: Path, namespace: str) -> None:
    """A durable copy about to be put back: hashed whole (a copy from disk keeps its mtime, and disk
    damage does not change it: the stamp it carries proves nothing), then stamped anew, with its base."""
    try:
        state = StateFile(tmp, namespace=namespace)
        stamp(state)
        for linked in (state.base, state.mid):
            if linked is not None:
                stamp(linked)
    except ReaderError as e:
        raise PublishError(f"{tmp}: not put back: {e}") from e


def stamp(state: StateFile) -> None:
    """The last step before *state*'s file is published: check it whole, then set its mtime to
    :func:`hollow.layout.published_mtime_ns`, which lets every reader skip hashing it for as long as
    nothing writes or replaces it (docs/decisions.md §60). The file must not change meanwhile."""
    state.verify()
    checked = state.checked_whole
    fd = os.open(state.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if checked is None or (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != checked:
            raise PublishError(f"{state.path}: changed while it was being checked; not published")
        os.utime(fd, ns=(st.st_atime_ns, layout.published_mtime_ns(state.header, st)))
    finally:
        os.close(fd)


def _with_links(tmp: Path, links: dict[Callable[[Path], Path], Path], check: Callable[[], object]) -> None:
    """Run *check* on the temporary file *tmp* with each of *links* (``layout.base_of`` or
    ``mid_of`` → the file) linked under the temporary name, as readers find them under the final one."""
    made = []
    try:
        for link_of, target in links.items():
            tmp_link = link_of(tmp)
            with contextlib.suppress(FileNotFoundError):
                tmp_link.unlink()
            _link(target, tmp_link)
            made.append(tmp_link)
        check()
    finally:
        for tmp_link in made:
            tmp_link.unlink()


def _install_file(final: Path, tmp: Path, data: bytes, mode: int) -> None:
    _write(tmp, len(data), [_Piece(0, data)], mode)
    os.rename(tmp, final)


def _install(
    ns_dir: Path,
    version: int,
    total: int,
    pieces: list[_Piece],
    mode: int,
    check: Callable[[Path], None],
    *,
    name: str | None = None,
) -> Path:
    """Write under a temporary name, check, create the lockfile, rename into place (or leave nothing)."""
    final = ns_dir / (name or layout.state_name(version))
    tmp = ns_dir / f".{version}.{os.getpid()}.tmp"
    _write(tmp, total, pieces, mode)
    try:
        check(tmp)
        if name is None:
            reserve_announcement(ns_dir, mode)  # a version is published only if its announcement can follow
            _create_lockfile(ns_dir, version, mode)  # before the state file appears: readers lease on sight
        os.rename(tmp, final)
    except BaseException:
        if name is None:
            release_announcement(ns_dir)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if not final.exists():
            for link_of in (layout.base_of, layout.mid_of):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(link_of(ns_dir / layout.state_name(version)))
            if name is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lease.lock_path(ns_dir, version))  # no orphan lockfile (issue 9, item 13)
        raise
    return final


def _create_lockfile(ns_dir: Path, version: int, mode: int) -> None:
    """The version's lockfile (hollow.lease): readable by whoever may read the state file, writable by
    the producer only (an OFD write lock needs write access, so no reader can block a lease)."""
    path = lease.lock_path(ns_dir, version)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO planted under its name: replace it
            os.close(fd)
            os.unlink(path)
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno in _FULL:
            raise _storage_full(path, 0) from e
        raise
    try:
        os.fchmod(fd, 0o600 | (mode & 0o044))
    finally:
        os.close(fd)


def _link(target: Path, link: Path) -> None:
    """A hard link (on tmpfs each link takes an inode of the mount's: docs/pitfalls.md 28)."""
    try:
        os.link(target, link)
    except OSError as e:
        if e.errno in _FULL:
            raise _storage_full(link, 0) from e
        raise


#: Bytes reserved for the announcement before a version is published: it is far smaller.
ANNOUNCE_ROOM = 4096


def reserve_announcement(ns_dir: Path, mode: int) -> None:
    """Make room for the announcement that follows a publish, before the publish (issue 9, item 11).

    Creates the announcement's temporary file (its inode) with :data:`ANNOUNCE_ROOM`
    bytes allocated, which :func:`announce` then writes into: a mount with room for the
    state file but not for the announcement fails here, before anything is published,
    instead of leaving a version published and never announced. Raises
    :class:`StorageFullError`; :func:`release_announcement` undoes it.
    """
    where = ns_dir / layout.ANNOUNCE_DIR
    tmp = _announce_tmp(where)
    try:
        dfd = _announce_dir(where, 0o755 if mode & 0o004 else 0o750)  # a planted symlink is replaced
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(tmp.name, flags, mode & 0o666, dir_fd=dfd)
            try:
                os.posix_fallocate(fd, 0, ANNOUNCE_ROOM)
            finally:
                os.close(fd)
        finally:
            os.close(dfd)
    except OSError as e:
        release_announcement(ns_dir)
        if e.errno in _FULL:
            raise _storage_full(tmp, ANNOUNCE_ROOM) from e
        raise PublishError(f"cannot make room for the announcement in {where}: {e.strerror}") from e


def release_announcement(ns_dir: Path) -> None:
    """Give back the room :func:`reserve_announcement` took (a cycle that failed after it)."""
    where = ns_dir / layout.ANNOUNCE_DIR
    try:
        dfd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return  # no directory (or something planted, which announce replaces): no room to give back
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_announce_tmp(where).name, dir_fd=dfd)
    finally:
        os.close(dfd)


def _announce_tmp(where: Path) -> Path:
    return where / f".{layout.ANNOUNCED}.{os.getpid()}.tmp"


def remove_version(ns_dir: Path, version: int, *, force: bool = False) -> bool:
    """Remove *version* if no process holds a lease on it (or anyway, with *force*); True when removed.

    Takes the lockfile's write lock and, holding it, unlinks the state file and
    then the lockfile, so a reader that wins the race sees a lockfile with no
    links and moves on (hollow.lease). With *force*, a leased version is unlinked
    all the same: its holders keep their mappings, new readers cannot attach it.
    """
    state = ns_dir / layout.state_name(version)
    lock = lease.lock_path(ns_dir, version)
    if not lock.exists():
        for path in (state, layout.base_of(state), layout.mid_of(state)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a file without a lockfile (not written by hollowd) cannot be leased
        return True
    fd = lease.try_exclusive(lock)
    if fd is None and not force:
        return False
    try:
        with contextlib.suppress(FileNotFoundError):
            state.unlink()
        for link_of in (layout.base_of, layout.mid_of):
            with contextlib.suppress(FileNotFoundError):
                link_of(state).unlink()  # the base's (the mid's) pages go with their last link
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
    finally:
        if fd is not None:
            os.close(fd)
    return True


def _write(path: Path, total: int, pieces: list[_Piece], mode: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        if e.errno in _FULL:
            raise _storage_full(path, total) from e
        raise PublishError(f"cannot create {path}: {e.strerror}") from e
    try:
        try:
            os.posix_fallocate(fd, 0, total)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise _storage_full(path, total) from e
            raise
        for piece in pieces:
            _pwrite_all(fd, piece.data, piece.offset)
        os.fsync(fd)
        os.fchmod(fd, mode & 0o444)
    except BaseException as e:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        if isinstance(e, OSError) and not isinstance(e, PublishError):
            if e.errno == errno.ENOSPC:
                raise _storage_full(path, total) from e
            raise PublishError(f"cannot write {path}: {e.strerror}") from e
        raise
    os.close(fd)


def _pwrite_all(fd: int, data: Any, offset: int) -> None:
    mv = memoryview(data).cast("B")
    while mv:
        n = os.pwrite(fd, mv, offset)
        mv = mv[n:]
        offset += n


def prepare_dirs(ns_dir: Path, mode: int) -> None:
    """Make, or check, the root and the namespace directory: a real directory of ours (or root's) that
    no one else may write (layout.check_trusted; docs/decisions.md §32). Made with exact modes, whatever
    the umask: readers in the group may enter (and others, when *mode* lets others read the files), but
    only the group may list the root's namespaces (docs/decisions.md §35).

    Raises :class:`ConfigurationError` naming the path, its owner and mode, and the fix.
    """
    world = bool(mode & 0o004)
    owners = (os.geteuid(), 0)
    for path, dmode, what in (
        (ns_dir.parent, 0o751 if world else 0o750, "root"),
        (ns_dir, 0o755 if world else 0o750, "namespace directory"),
    ):
        sticky_ok = what == "root"  # a sticky root (a fresh tmpfs) lets no one touch our namespace
        try:
            try:
                layout.check_trusted(path, owners=owners, what=what, sticky_ok=sticky_ok)
                continue
            except FileNotFoundError:
                pass
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.mkdir(path, 0o700)
                os.chmod(path, dmode, follow_symlinks=False)
            except FileExistsError:
                pass  # made meanwhile, by someone: checked below
            layout.check_trusted(path, owners=owners, what=what, sticky_ok=sticky_ok)
        except ReaderError as e:
            raise ConfigurationError(str(e)) from None
        except OSError as e:
            raise ConfigurationError(f"cannot make the {what} {path}: {e.strerror}") from None


def _announce_dir(where: Path, mode: int) -> int:
    """A fd of the announcement's directory, made anew if something else was planted under its name."""
    for _ in range(3):
        try:
            return os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            pass
        except OSError:  # a symlink, a file, a FIFO: ours to remove (only we and root write here)
            os.unlink(where)
        with contextlib.suppress(FileExistsError):
            os.mkdir(where, mode)
    raise PublishError(f"{where}: cannot make the announcement's directory")


_FULL = (errno.ENOSPC, errno.EDQUOT)


def _storage_full(path: Path, total: int) -> StorageFullError:
    where = path.parent
    while not where.is_dir() and where != where.parent:
        where = where.parent  # (the announce directory itself may be what could not be made)
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize
    size = st.f_blocks * st.f_frsize
    inodes = f", {st.f_favail:,} of {st.f_files:,} inodes free" if st.f_files else ""
    return StorageFullError(
        f"no room for a {total:,}-byte state file in {path.parent} ({free:,} of {size:,} bytes free{inodes}). "
        "The announced version is unchanged. Make room: fewer retained versions, or a larger /dev/shm "
        "(Docker's default is 64 MiB: run with --shm-size; Kubernetes: an emptyDir with medium: Memory)."
    )


def verify(path: Path, namespace: str, version: int, types: list[BuiltType]) -> StateFile:
    """Attach the file as a reader would and check what it says against what was built; return it."""
    try:
        state = StateFile(path, namespace=namespace)
        if state.version != version:
            raise PublishError(f"{path}: reads back as version {state.version}, not {version}")
        for built in types:
            view = state.type(built.rtype.name)
            if len(view) != built.count or len(view._records) != built.size:
                raise PublishError(f"{path}: {built.rtype.name} reads back {len(view)} records, built {built.count}")
            if built.count:
                values = built.primary.slots[:, 1]
                record = view._records[int(values[np.flatnonzero(values)[0]]) - 1]
                record.to_dict()  # walks one whole record through the embedded schema
        stamp(state)
    except ReaderError as e:
        raise PublishError(f"{path} does not read back: {e}") from e
    return state


def verify_overlay(
    path: Path,
    namespace: str,
    version: int,
    types: list[BuiltOverlay],
    *,
    base: StateFile | None = None,
    mid: StateFile | None = None,
) -> StateFile:
    """Attach a version built on a base as a reader would; check its counts and one new record of each type;
    return it. Given *base* and *mid* (already attached), it is attached over them, checked as readers
    check the files its envelope names; otherwise they are mapped from the links beside *path*."""
    try:
        state = StateFile(path, namespace=namespace, base=base, mid=mid)
        if state.version != version or state.base is None:
            raise PublishError(f"{path}: reads back as version {state.version}, not {version} on a base")
        for built in types:
            view = state.type(built.rtype.name)
            if len(view) != built.count or view.size != built.size:
                raise PublishError(f"{path}: {built.rtype.name} reads back {len(view)} records, built {built.count}")
            if built.upserted:
                overlay = view.overlay
                assert overlay is not None
                refs = built.arrays["entryRefs"]
                newest = int(np.flatnonzero((refs >> np.uint64(32)) == np.uint64(len(built.chunks) - 1))[0])
                overlay.record(newest).to_dict()  # walks one whole new record through the embedded schema
        stamp(state)
    except ReaderError as e:
        raise PublishError(f"{path} does not read back: {e}") from e
    return state


def announce(
    ns_dir: Path, announcement: layout.Announcement, *, mode: int = 0o640, ringer: ring.Ringer | None = None
) -> None:
    """Replace ``announced`` by rename, so readers see the old or the new one, never a mix.

    Whatever was planted under either name (a symlink, a FIFO, a directory) is replaced, never
    followed or opened: both are opened with O_NOFOLLOW, the file relative to its directory. The
    file is written into the room :func:`reserve_announcement` allocated (if it did), then cut to size.
    """
    dfd = _announce_dir(ns_dir / layout.ANNOUNCE_DIR, 0o755 if mode & 0o004 else 0o750)
    try:
        tmp = _announce_tmp(Path()).name
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, mode & 0o666, dir_fd=dfd)
            planted = not stat.S_ISREG(os.fstat(fd).st_mode)
            if planted:
                os.close(fd)
        except OSError as e:  # ENXIO: a FIFO no one reads; ELOOP: a symlink
            if e.errno in _FULL:
                raise
            planted = True
        if planted:  # something else under the name: ours to replace (only we and root write here)
            os.unlink(tmp, dir_fd=dfd)
            fd = os.open(tmp, flags | os.O_EXCL, mode & 0o666, dir_fd=dfd)
        try:
            data = announcement.dumps()
            _pwrite_all(fd, data, 0)
            os.ftruncate(fd, len(data))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        os.close(fd)
        try:
            os.rename(tmp, layout.ANNOUNCED, src_dir_fd=dfd, dst_dir_fd=dfd)
        except IsADirectoryError:  # a directory planted under the name
            shutil.rmtree(ns_dir / layout.ANNOUNCE_DIR / layout.ANNOUNCED)
            os.rename(tmp, layout.ANNOUNCED, src_dir_fd=dfd, dst_dir_fd=dfd)
        os.fsync(dfd)
    finally:
        os.close(dfd)
    # Ringing happens in a helper process and can neither fail nor delay the announcement
    # (hollow.ring): a follower's damaged doorbell is the follower's problem only.
    if ringer is not None:
        ringer.ring()
    else:
        ring.ring_once("sem." + doorbell.prefix(ns_dir.parent, ns_dir.name))

"""Attaching one version: open, check the header, map, ready to look up.

Attach is O(1) in the dataset's size: one open, one fstat, one mmap, a 128-byte
header check, and the envelope (a few hundred bytes per type). A version built
on a base (docs/decisions.md §18) maps its base too: ``<version>.base``, a hard
link to the base's file, so every version on one base shares its pages; and a
version whose overlays are over an earlier one (its *mid*) maps that too, as
``<version>.mid``. Nothing is
copied or deserialized; record lists and index tables are views of the mapping.
The content check (:meth:`StateFile.verify`) is O(1) too for a file that still
carries its producer's stamp (docs/decisions.md §60), O(file) once per process
for any other.

The mapping is never closed explicitly. It lives as long as anything that reads
from it (the capnp messages export its buffer; index tables are memoryviews of
it), so an escaped record reader keeps its version's pages mapped rather than
crashing the process (mmap(2): a mapping outlives the unlinked file; nothing
ever truncates a published file, so no SIGBUS).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
from pathlib import Path
from typing import Any

import capnp
import xxhash

from hollow import layout, schema
from hollow.errors import CorruptStateError, PermissionDeniedError, UnknownTypeError, VersionNotFoundError
from hollow.view import Chunks, IndexTable, IndexTables, OverlaidView, Overlay, TopView, TypeView, section

#: Files this process has checked against their content hash (StateFile.verify), oldest first.
_CHECKED: dict[tuple[int, ...], None] = {}
_CHECKED_MAX = 4096
_CHUNK = 8 << 20  # bytes hashed between two madvise calls (a multiple of the page size)


class StateFile:
    """One attached version of a namespace: its header, envelope and type views."""

    __slots__ = (
        "_base",
        "_checked",
        "_envelope",
        "_identity",
        "_mid",
        "_mm",
        "_path",
        "_stamped",
        "_structs",
        "_type_states",
        "_view",
        "_views",
        "_what",
        "header",
        "published_at_ns",
        "version",
    )

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        namespace: str,
        reader_schema: Any = None,
        structs: dict[int, Any] | None = None,
        base: StateFile | None = None,
        mid: StateFile | None = None,
    ) -> None:
        """*base* and *mid*: the files this one's envelope names, already attached (checked against
        the envelope as the files found beside *path* would be); otherwise those are mapped."""
        # A string, not a Path: a fresh process's first pathlib operations cost 5-35 µs each (§80).
        what = self._path = os.fspath(path)
        mm, st = _map(what)
        self._mm = mm
        self._checked = False
        view = memoryview(mm)
        header = layout.Header.unpack(view, what=what, size=st.st_size)
        if header.namespace != namespace:
            raise CorruptStateError(f"{what}: belongs to namespace {header.namespace!r}, not {namespace!r}")
        named = layout.parse_state_name(os.path.basename(what))
        if named is not None and named != header.version:
            raise CorruptStateError(f"{what}: holds version {header.version}, not {named}")
        self.header = header
        # What the content check is remembered by: a rewrite in place changes the mtime (docs/pitfalls.md 1).
        # Not the ctime: every version built on a base adds a hard link to it, which changes its ctime,
        # and the base (the big file) would be hashed again for every version.
        self._identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, header.content_hash)
        # As its producer published it: checked whole, then stamped, and written by no one since.
        self._stamped = st.st_mtime_ns == layout.published_mtime_ns(header, st)
        self.version = header.version
        self.published_at_ns = header.published_at_ns
        start = header.envelope_offset
        self._view = view
        self._what = what
        self._views: dict[str, TypeView] = {}
        try:
            env = schema.read_message(view[start : start + header.envelope_length])
            root = env.get_root(schema.envelope().State)
            # The envelope is read through pycapnp's ``_get``, here and on the rest of the attach path:
            # the same read as an attribute, without the failed attribute lookup (and its AttributeError)
            # that comes first, about 2 µs a read in a fresh process (docs/decisions.md §110).
            get = root._get
            if get("version") != header.version:
                raise CorruptStateError(f"{what}: envelope says version {get('version')}, header {header.version}")
            self._type_states = {ts._get("name"): ts for ts in get("types")}
            self._structs = structs if structs is not None else self._schema_of(root, reader_schema)
            self._envelope = root
            base_version, mid_version = get("baseVersion"), get("midVersion")
            self._base = self._open_base(root, base_version, namespace, base) if base_version else None
            self._mid = self._open_mid(root, mid_version, namespace, mid) if mid_version else None
        except capnp.KjException as e:
            raise CorruptStateError(f"{what}: damaged envelope ({e.description})") from e
        except (UnicodeDecodeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
            # pycapnp's ways of saying a pointer or a name in the envelope makes no sense
            raise CorruptStateError(f"{what}: malformed envelope ({type(e).__name__}: {e})") from e

    def _schema_of(self, root: Any, reader_schema: Any) -> dict[int, Any]:
        """The struct schemas records are read through: the embedded ones, or the reader's (checked now,
        so that a mismatch is an attach error, not a surprise at first use). A base is read through
        the schema of the version built on it."""
        if reader_schema is None:
            return schema.embedded_types(
                self.header.schema_fingerprint, root._get("userSchema")._get("nodes"), what=self._what
            )
        return {
            ts.typeId: schema.user_struct(reader_schema, name, ts.typeId, what=self._what)
            for name, ts in self._type_states.items()
        }

    def _open_base(self, root: Any, version: int, namespace: str, given: StateFile | None) -> StateFile:
        path = self._path + layout.BASE_SUFFIX if given is None else given._path  # layout.base_of
        try:
            base = given or StateFile(path, namespace=namespace, structs=self._structs)
        except VersionNotFoundError as e:
            raise CorruptStateError(f"{self._what}: its base {path} is missing ({e})") from None
        if base.version != version or base.header.content_hash != root._get("baseContentHash"):
            raise CorruptStateError(f"{self._what}: {path} is not its base (version {base.version}, wanted {version})")
        if base._base is not None:
            raise CorruptStateError(f"{self._what}: its base {path} has a base of its own")
        return base

    def _open_mid(self, root: Any, version: int, namespace: str, given: StateFile | None) -> StateFile:
        """The version this file's overlays are over: ``<version>.mid``, on the same base, with no mid."""
        path = self._path + layout.MID_SUFFIX if given is None else given._path  # layout.mid_of
        if self._base is None:
            raise CorruptStateError(f"{self._what}: names a mid version but no base")
        try:
            mid = given or StateFile(path, namespace=namespace, structs=self._structs, base=self._base)
        except VersionNotFoundError as e:
            raise CorruptStateError(f"{self._what}: its mid {path} is missing ({e})") from None
        if mid.version != version or mid.header.content_hash != root._get("midContentHash"):
            raise CorruptStateError(f"{self._what}: {path} is not its mid (version {mid.version}, wanted {version})")
        if (
            mid._base is not self._base
            or mid._mid is not None
            or mid._envelope._get("baseVersion") != root._get("baseVersion")
        ):
            raise CorruptStateError(f"{self._what}: its mid {path} is not an overlay on the same base")
        return mid

    @property
    def path(self) -> Path:
        """The file this version was attached from."""
        return Path(self._path)

    def renamed(self, path: Path) -> None:
        """This file was renamed to *path* (by the producer, which attached it under a temporary name to
        check it): it, and its base and mid, are named from now on by *path* and the links beside it.
        Views already attached keep the old name in their messages."""
        self._path = self._what = os.fspath(path)
        for linked, link_of in ((self._base, layout.base_of), (self._mid, layout.mid_of)):
            if linked is not None:
                linked._path = linked._what = os.fspath(link_of(path))

    def verify(self) -> None:
        """Check every byte of this file, and of its base, against the header's content hash.

        O(1) for a file its producer checked whole and stamped (its mtime is
        :func:`hollow.layout.published_mtime_ns`) that nothing has written or replaced since:
        any write, truncate or copy loses the stamp (docs/decisions.md §60). Any other file is
        hashed, O(the file's size) the first time a process sees it (about 4 GB/s: 25 ms for a
        1M-record base), then O(1): a published file never changes, so each is checked once
        per process (remembered by inode, size and times), and the versions built on one base
        pay only for their own overlay's bytes. Records are never read from a file that has
        not passed (:meth:`type` calls this first), so a damaged file is a
        :class:`CorruptStateError`, never a wrong answer, a stray exception or a probe
        that does not end (docs/decisions.md §40).
        """
        if self._checked:
            return
        if not self._stamped and self._identity not in _CHECKED:
            if self._content_hash() != self.header.content_hash:
                raise CorruptStateError(
                    f"{self._what}: damaged: its content does not match the hash it was published with "
                    "(changed or damaged after publishing; the producer publishes a good version at its next cycle)"
                )
            _CHECKED[self._identity] = None
            while len(_CHECKED) > _CHECKED_MAX:
                with contextlib.suppress(KeyError, RuntimeError, StopIteration):  # another thread evicting too
                    del _CHECKED[next(iter(_CHECKED))]
        if self._base is not None:
            self._base.verify()
        if self._mid is not None:
            self._mid.verify()
        self._checked = True

    def _content_hash(self) -> int:
        """xxh3_64 of everything after the header, read a chunk at a time; each chunk's pages are
        dropped from this process's page tables once hashed (they stay in the shared page cache),
        so that checking a file does not make it resident in every reader (docs/pitfalls.md 29)."""
        h = xxhash.xxh3_64()
        size, at = self.header.file_length, layout.HEADER_SIZE
        while at < size:
            end = min(size, (at // _CHUNK + 1) * _CHUNK)
            h.update(self._view[at:end])
            start = at - at % mmap.PAGESIZE
            with contextlib.suppress(OSError, ValueError):
                self._mm.madvise(mmap.MADV_DONTNEED, start, end - start)
            at = end
        return h.intdigest()

    @property
    def checked_whole(self) -> tuple[int, ...] | None:
        """(device, inode, size, mtime) of this file as :meth:`verify` found it, once it passed; None before."""
        return self._identity[:4] if self._checked else None

    @property
    def base(self) -> StateFile | None:
        """The base this version's overlays are read over (None when this file holds every record)."""
        return self._base

    @property
    def mid(self) -> StateFile | None:
        """The earlier version this file's overlays are over (None when they are over the base)."""
        return self._mid

    def type_state(self, name: str) -> Any:
        """The envelope's ``TypeState`` of *name* (for the producer, which reads sections itself)."""
        self.type(name)  # checks it exists and is sound
        return self._type_states[name]

    def array(self, sec: Any, fmt: str, *, what: str) -> memoryview:
        """A bounds-checked typed view of one section of this file."""
        return section(self._view, sec, self.header.file_length, fmt, what=f"{self._what}: {what}")

    def file_bytes(self) -> memoryview:
        """The whole file, as it is mapped (to copy it elsewhere: a snapshot in a blob store)."""
        return self._view[: self.header.file_length]

    def decode_records(self, name: str, data: bytes) -> Any:
        """The records of a Records message (an overlay chunk, e.g. from a delta) as type *name* of this file."""
        struct = self._structs.get(self._type_states[name].typeId)
        if struct is None:
            raise CorruptStateError(f"{self._what}: type {name} missing from the embedded schema")
        msg = schema.read_message(memoryview(data))
        return msg.get_root(schema.envelope().Records).list.as_list(capnp._ListSchema(struct))

    def raw(self, sec: Any, *, what: str) -> memoryview:
        """The bytes of one bounds-checked section of this file."""
        layout.check_section(sec.offset, sec.length, self.header.file_length, what=f"{self._what}: {what}")
        return self._view[sec.offset : sec.offset + sec.length]

    @property
    def schema_file(self) -> str:
        """The name of the schema file the producer used."""
        return str(self._envelope.userSchema.fileName)

    @property
    def schema_source(self) -> str:
        """The text of the schema the producer used (read on demand: it can be long)."""
        return str(self._envelope.userSchema.source)

    @property
    def type_names(self) -> list[str]:
        return sorted(self._type_states)

    @property
    def declared_type_names(self) -> list[str]:
        """The types in the order the producer declared them (its schema fingerprint depends on it)."""
        return list(self._type_states)

    def type(self, name: str) -> TypeView:
        """The view of one record type, set up on first use (attach itself stays O(1) in types too)."""
        view = self._views.get(name)
        if view is None:
            ts = self._type_states.get(name)
            if ts is None:
                raise UnknownTypeError(
                    f"version {self.version} has no record type {name!r}; it has: {', '.join(self.type_names)}"
                )
            self.verify()
            try:
                view = self._views[name] = self._attach_type(ts)
            except capnp.KjException as e:
                raise CorruptStateError(f"{self._what}: {name}: damaged ({e.description})") from e
            except (UnicodeDecodeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
                raise CorruptStateError(f"{self._what}: {name}: malformed ({type(e).__name__}: {e})") from e
        return view

    def _attach_type(self, ts: Any) -> TypeView:
        get = ts._get  # (not attributes: see __init__)
        what, name, type_id = self._what, get("name"), get("typeId")
        struct = self._structs.get(type_id)
        if struct is None:
            raise CorruptStateError(f"{what}: type {name} ({type_id:#x}) missing from the embedded schema")
        if self._mid is not None:
            return self._attach_top(ts, struct)
        if self._base is not None:
            return self._attach_overlaid(ts, struct)
        view, size = self._view, self.header.file_length
        records = self._records(get("records"), capnp._ListSchema(struct), f"{name} records")
        count, ordinals = get("count"), get("ordinals")
        if len(records) != ordinals:
            raise CorruptStateError(f"{what}: {name} has {len(records)} ordinals, envelope says {ordinals}")
        holes = lambda: self._holes(ts)  # noqa: E731 - read on first use (TypeView.holes)
        primary = IndexTable.attach(get("primaryKey"), view, size, what=f"{what}: {name} primary key")
        secondary = IndexTables(get("indexes"), view, size, what=f"{what}: {name} index")
        return TypeView(
            name, records, count, holes, primary, secondary, content_hash=get("contentHash"), schema=struct, what=what
        )

    def _records(self, sec: Any, list_schema: Any, what: str) -> Any:
        """The list of records of one Records message section (a base's records, or an overlay chunk)."""
        offset, length = sec._get("offset"), sec._get("length")
        layout.check_section(offset, length, self.header.file_length, what=f"{self._what}: {what}")
        msg = schema.read_message(self._view[offset : offset + length])
        return msg.get_root(schema.envelope().Records)._get("list").as_list(list_schema)

    def _chunk(self, sec: Any, list_schema: Any, what: str) -> Any:
        """One overlay chunk's records, read on first use (:class:`hollow.view.Chunks`)."""
        try:
            return self._records(sec, list_schema, what)
        except capnp.KjException as e:
            raise CorruptStateError(f"{self._what}: {what}: damaged ({e.description})") from e
        except (UnicodeDecodeError, ValueError, RuntimeError, AttributeError) as e:
            raise CorruptStateError(f"{self._what}: {what}: malformed ({type(e).__name__}: {e})") from e

    def _holes(self, ts: Any) -> memoryview:
        """A type's holes: exactly (ordinals - count) of them (the section is padded to a whole word).
        Read on first use (iteration, ``holes``): a lookup needs none (docs/decisions.md §80)."""
        count, ordinals, what = ts.count, ts.ordinals, f"{self._what}: {ts.name} holes"
        holes = section(self._view, ts.holes, self.header.file_length, "I", what=what)[: ordinals - count]
        if count > ordinals or len(holes) != ordinals - count:
            raise CorruptStateError(f"{self._what}: {ts.name} holes do not match its counts")
        return holes

    def _attach_overlaid(self, ts: Any, struct: Any) -> TypeView:
        """The type's view: the base's records and indexes under this file's overlay."""
        assert self._base is not None
        get = ts._get
        name = get("name")
        if name not in self._base._type_states:
            raise CorruptStateError(f"{self._what}: type {name} is missing from its base")
        base = self._base.type(name)
        return OverlaidView(
            name,
            base._records,
            get("count"),
            lambda: self._holes(ts),
            base.primary,
            base.indexes,
            content_hash=get("contentHash"),
            schema=struct,
            what=self._what,
            overlay=self._overlay(ts, struct, len(base.indexes)),
            size=get("ordinals"),
        )

    def _attach_top(self, ts: Any, struct: Any) -> TypeView:
        """The type's view: its mid's view under this file's (small) overlay."""
        assert self._mid is not None
        get = ts._get
        name = get("name")
        if name not in self._mid._type_states:
            raise CorruptStateError(f"{self._what}: type {name} is missing from its mid")
        mid = self._mid.type(name)
        overlay = self._overlay(ts, struct, len(mid.indexes))
        holes = lambda: self._holes(ts)  # noqa: E731 - read on first use (TypeView.holes)
        return TopView(
            mid, overlay, get("count"), holes, get("ordinals"), content_hash=get("contentHash"), what=self._what
        )

    def _overlay(self, ts: Any, struct: Any, n_indexes: int) -> Overlay:
        """This file's overlay of one type: its bloom array and its first entry's record checked now
        (so that a forged chunk fails the type's first use, which sends a following dataset back,
        docs/decisions.md §40); its other chunks as they are read (each bounds-checked), its entry
        ordinals and key table on first use (:meth:`_entries`)."""
        what, view, size, name = self._what, self._view, self.header.file_length, ts._get("name")
        ov = ts._get("overlay")
        get = ov._get
        secs, list_schema = get("chunks"), capnp._ListSchema(struct)
        chunks = Chunks(len(secs), lambda i: self._chunk(secs[i], list_schema, f"{name} chunk {i}"))
        refs = section(view, get("entryRefs"), size, "Q", what=f"{what}: {name} overlay refs")
        for ref in refs[:1]:  # each record access is bounds-checked by capnp; check the first here
            if ref >> 32 >= len(chunks) or ref & 0xFFFFFFFF >= len(chunks[ref >> 32]):
                raise CorruptStateError(f"{what}: {name} overlay refers past its chunks")
        bloom = section(view, get("bloom"), size, "B", what=f"{what}: {name} overlay bloom")[: get("bloomLength")]
        if not len(bloom):
            raise CorruptStateError(f"{what}: {name} overlay has no bloom array")
        added = IndexTables(get("added"), view, size, what=f"{what}: {name} overlay index")
        skipped = IndexTables(get("skipped"), view, size, what=f"{what}: {name} overlay index")
        if len(added) != n_indexes or len(skipped) != n_indexes:
            raise CorruptStateError(f"{what}: {name} overlay indexes do not match its base's")
        return Overlay(chunks, refs, lambda: self._entries(ov, len(refs), name), bloom, added, skipped)

    def _entries(self, ov: Any, n: int, name: str) -> tuple[memoryview, IndexTable]:
        """An overlay's entry ordinals and key table, bounds-checked, read on the overlay's first use:
        a lookup its bloom array rules out needs neither. Only a forged file fails here (its content
        hash passed), with a :class:`CorruptStateError` of that use (docs/decisions.md §80)."""
        what, view, size = self._what, self._view, self.header.file_length
        try:
            ordinals = section(view, ov.entryOrdinals, size, "Q", what=f"{what}: {name} overlay ordinals")
            if len(ordinals) != n:
                raise CorruptStateError(f"{what}: {name} overlay arrays differ in length")
            keys = IndexTable.attach(ov.keys, view, size, what=f"{what}: {name} overlay keys")
        except capnp.KjException as e:
            raise CorruptStateError(f"{what}: {name} overlay: damaged ({e.description})") from e
        except (UnicodeDecodeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
            raise CorruptStateError(f"{what}: {name} overlay: malformed ({type(e).__name__}: {e})") from e
        return ordinals, keys


def _map(path: str) -> tuple[mmap.mmap, os.stat_result]:
    """*path* mapped read-only, and its fstat: a regular file at least a header long, or a named error."""
    what = path
    try:
        # O_NONBLOCK: a FIFO planted under a version's name must not hang the reader.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError as e:
        raise VersionNotFoundError(f"{what}: no such version (never published, or reclaimed)") from e
    except PermissionError as e:
        raise PermissionDeniedError.of(path, e) from e
    except OSError as e:
        raise CorruptStateError(f"{what}: cannot open ({e.strerror}); is it a symlink?") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptStateError(f"{what}: not a regular file")
        if st.st_size < layout.HEADER_SIZE:
            raise CorruptStateError(f"{what}: {st.st_size} bytes is too short for a hollow state file")
        return mmap.mmap(fd, 0, prot=mmap.PROT_READ), st
    finally:
        os.close(fd)

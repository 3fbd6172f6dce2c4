"""Attaching one version: open, check the header, map, ready to look up.

Attach is O(1) in the dataset's size: one open, one fstat, one mmap, a 128-byte
header check, and the envelope (a few hundred bytes per type). Nothing is
copied or deserialized; record lists and index tables are views of the mapping.

The mapping is never closed explicitly. It lives as long as anything that reads
from it (the capnp messages export its buffer; index tables are memoryviews of
it), so an escaped record reader keeps its version's pages mapped rather than
crashing the process (mmap(2): a mapping outlives the unlinked file; nothing
ever truncates a published file, so no SIGBUS).
"""

from __future__ import annotations

import mmap
import os
import stat
from pathlib import Path
from typing import Any

import capnp

from hollow import layout, schema
from hollow.errors import CorruptStateError, UnknownTypeError, VersionNotFoundError
from hollow.view import IndexTable, TypeView, section


class StateFile:
    """One attached version of a namespace: its header, envelope and type views."""

    __slots__ = (
        "_envelope",
        "_mm",
        "_structs",
        "_type_states",
        "_view",
        "_views",
        "_what",
        "header",
        "path",
        "published_at_ns",
        "version",
    )

    def __init__(self, path: Path, *, namespace: str, reader_schema: Any = None) -> None:
        self.path = path
        what = str(path)
        try:
            # O_NONBLOCK: a FIFO planted under a version's name must not hang the reader.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError as e:
            raise VersionNotFoundError(f"{what}: no such version (never published, or reclaimed)") from e
        except OSError as e:
            raise CorruptStateError(f"{what}: cannot open ({e.strerror}); is it a symlink?") from e
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CorruptStateError(f"{what}: not a regular file")
            if st.st_size < layout.HEADER_SIZE:
                raise CorruptStateError(f"{what}: {st.st_size} bytes is too short for a hollow state file")
            mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self._mm = mm
        view = memoryview(mm)
        header = layout.Header.unpack(view, what=what, size=st.st_size)
        if header.namespace != namespace:
            raise CorruptStateError(f"{what}: belongs to namespace {header.namespace!r}, not {namespace!r}")
        named = layout.parse_state_name(path.name)
        if named is not None and named != header.version:
            raise CorruptStateError(f"{what}: holds version {header.version}, not {named}")
        self.header = header
        self.version = header.version
        self.published_at_ns = header.published_at_ns
        start = header.envelope_offset
        self._view = view
        self._what = what
        self._views: dict[str, TypeView] = {}
        try:
            env = schema.read_message(view[start : start + header.envelope_length])
            root = env.get_root(schema.envelope().State)
            if root.version != header.version:
                raise CorruptStateError(f"{what}: envelope says version {root.version}, header {header.version}")
            self._type_states = {ts.name: ts for ts in root.types}
            if reader_schema is None:
                self._structs = schema.embedded_types(header.schema_fingerprint, root.userSchema.nodes, what=what)
            else:  # checked now, so a mismatch is an attach error, not a surprise at first use
                self._structs = {
                    ts.typeId: schema.user_struct(reader_schema, name, ts.typeId, what=what)
                    for name, ts in self._type_states.items()
                }
            self._envelope = root
        except capnp.KjException as e:
            raise CorruptStateError(f"{what}: damaged envelope ({e.description})") from e
        except (UnicodeDecodeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
            # pycapnp's ways of saying a pointer or a name in the envelope makes no sense
            raise CorruptStateError(f"{what}: malformed envelope ({type(e).__name__}: {e})") from e

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

    def type(self, name: str) -> TypeView:
        """The view of one record type, set up on first use (attach itself stays O(1) in types too)."""
        view = self._views.get(name)
        if view is None:
            ts = self._type_states.get(name)
            if ts is None:
                raise UnknownTypeError(
                    f"version {self.version} has no record type {name!r}; it has: {', '.join(self.type_names)}"
                )
            try:
                view = self._views[name] = self._attach_type(ts)
            except capnp.KjException as e:
                raise CorruptStateError(f"{self._what}: {name}: damaged ({e.description})") from e
            except (UnicodeDecodeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
                raise CorruptStateError(f"{self._what}: {name}: malformed ({type(e).__name__}: {e})") from e
        return view

    def _attach_type(self, ts: Any) -> TypeView:
        what, view, size, name = self._what, self._view, self.header.file_length, ts.name
        struct = self._structs.get(ts.typeId)
        if struct is None:
            raise CorruptStateError(f"{what}: type {name} ({ts.typeId:#x}) missing from the embedded schema")
        rec = ts.records
        layout.check_section(rec.offset, rec.length, size, what=f"{what}: {name} records")
        msg = schema.read_message(view[rec.offset : rec.offset + rec.length])
        records = msg.get_root(schema.envelope().Records).list.as_list(capnp._ListSchema(struct))
        count, ordinals = ts.count, ts.ordinals
        if len(records) != ordinals:
            raise CorruptStateError(f"{what}: {name} has {len(records)} ordinals, envelope says {ordinals}")
        # the section is padded to a whole word: take exactly (ordinals - count) holes
        holes = section(view, ts.holes, size, "I", what=f"{what}: {name} holes")[: ordinals - count]
        if count > ordinals or len(holes) != ordinals - count:
            raise CorruptStateError(f"{what}: {name} holes do not match its counts")
        primary = IndexTable.attach(ts.primaryKey, view, size, what=f"{what}: {name} primary key")
        secondary = [IndexTable.attach(ix, view, size, what=f"{what}: {name} index") for ix in ts.indexes]
        return TypeView(
            name, records, count, holes, primary, secondary, content_hash=ts.contentHash, schema=struct, what=what
        )

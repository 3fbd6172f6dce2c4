"""Dataset and Snapshot: the reader's two nouns.

A :class:`Dataset` is a namespace opened by one process. ``ds.snapshot()``
hands out the announced version as a :class:`Snapshot`, which stays on that
one version for the whole ``with`` block, across every record type.

Versions are attached once per process and shared by all snapshots of that
version; an attached version is dropped when the announcement has moved on
and no snapshot holds it.
"""

from __future__ import annotations

import logging
import os
import threading
from types import TracebackType
from typing import Any

from hollow import layout, schema
from hollow.errors import ClosedError, CorruptStateError, Error, NamespaceNotFoundError, VersionNotFoundError
from hollow.state import StateFile
from hollow.view import TypeView

_RACE_RETRIES = 5
log = logging.getLogger("hollow")


class Snapshot:
    """One version of a dataset, held for the span of a block.

    ``snap["Movie"]`` is a :class:`~hollow.view.TypeView`; ``snap.version`` the
    version number. Use as a context manager; after ``close()`` it raises
    :class:`~hollow.ClosedError`.
    """

    __slots__ = ("_state", "version")

    def __init__(self, state: StateFile) -> None:
        self._state: StateFile | None = state
        self.version = state.version

    def __getitem__(self, type_name: str) -> TypeView:
        state = self._state
        if state is None:
            raise ClosedError(f"snapshot of version {self.version} is closed")
        return state.type(type_name)

    @property
    def types(self) -> list[str]:
        """Names of the record types in this version."""
        return sorted(self._live().types)

    @property
    def published_at_ns(self) -> int:
        return self._live().published_at_ns

    @property
    def schema_source(self) -> str:
        """The text of the schema the producer published this version with."""
        return str(self._live().schema_source)

    def _live(self) -> StateFile:
        if self._state is None:
            raise ClosedError(f"snapshot of version {self.version} is closed")
        return self._state

    def close(self) -> None:
        self._state = None

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._state is None else "open"
        return f"<Snapshot version {self.version} ({state})>"


class Dataset:
    """A namespace opened for reading. Create it with :func:`hollow.open`."""

    def __init__(
        self,
        namespace: str,
        *,
        root: str | os.PathLike[str] | None = None,
        schema: str | os.PathLike[str] | Any = None,
    ) -> None:
        self.namespace = layout.check_namespace(namespace)
        self.root = layout.root_dir(root)
        self.dir = self.root / namespace
        self._reader_schema = _reader_schema(schema)
        self._lock = threading.Lock()
        self._current: StateFile | None = None
        self._announce_stamp: tuple[int, int] | None = None
        self._closed = False
        #: The error that kept this process from following the last announcement, if any.
        self.last_error: Error | None = None
        if not self.dir.is_dir():
            raise NamespaceNotFoundError(
                f"namespace {namespace!r} does not exist under {self.root} "
                "(is hollowd running, and is HOLLOW_ROOT or root= the same for both?)"
            )
        self._refresh()

    @property
    def version(self) -> int:
        """The version the next snapshot would get."""
        return self._refresh().version

    def snapshot(self) -> Snapshot:
        """The announced version, held until the snapshot's block ends."""
        return Snapshot(self._refresh())

    def attach(self, version: int) -> Snapshot:
        """A snapshot of one given version, announced or not (it must still exist)."""
        self._check_open()
        return Snapshot(self._attach(version))

    def close(self) -> None:
        """Drop this process's hold on the namespace. Snapshots still open keep their version."""
        with self._lock:
            self._closed = True
            self._current = None

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        cur = self._current
        return f"<Dataset {self.namespace} at {self.root}, version {cur.version if cur else None}>"

    # -- internals ----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"dataset {self.namespace!r} is closed")

    def _refresh(self) -> StateFile:
        """The attached announced version; re-reads the announcement only when its file changed.

        A version that cannot be attached (corrupt, truncated, foreign) is not
        fatal once this process has a good one: it stays on that one, logs the
        error, keeps it in :attr:`last_error`, and tries again only when the
        announcement changes (DESIGN.md invariant 5).
        """
        self._check_open()
        try:
            st = os.stat(self.dir / layout.ANNOUNCED)
            stamp: tuple[int, int] | None = (st.st_ino, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        current = self._current
        if current is not None and stamp == self._announce_stamp:
            return current
        with self._lock:
            try:
                current = self._follow_announcement(current)
            except (CorruptStateError, VersionNotFoundError) as e:
                if self._current is None:
                    raise
                self.last_error = e
                log.error("hollow: %s; staying on version %d", e, self._current.version)
                current = self._current
            else:
                self.last_error = None
            self._announce_stamp = stamp
            return current

    def _follow_announcement(self, current: StateFile | None) -> StateFile:
        for attempt in range(_RACE_RETRIES):
            announcement = layout.read_announcement(self.dir)
            if announcement is None:
                raise NamespaceNotFoundError(f"namespace {self.namespace!r} has nothing announced yet")
            if current is not None and current.version == announcement.version:
                return current
            try:
                self._current = self._attach(announcement.version)
                return self._current
            except VersionNotFoundError:
                # Reclaimed between reading the announcement and opening it:
                # the announcement has moved on since; read it again.
                if attempt == _RACE_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _attach(self, version: int) -> StateFile:
        path = self.dir / layout.state_name(version)
        try:
            return StateFile(path, namespace=self.namespace, reader_schema=self._reader_schema)
        except VersionNotFoundError:
            raise VersionNotFoundError(f"{self.namespace} version {version} does not exist at {path}") from None


def _reader_schema(schema_arg: Any) -> Any:
    if schema_arg is None:
        return None
    if isinstance(schema_arg, (str, os.PathLike)):
        return schema.load_schema_file(schema_arg)
    return schema_arg  # a module pycapnp already compiled


def open(  # noqa: A001 - hollow.open mirrors lmdb.open
    namespace: str,
    *,
    root: str | os.PathLike[str] | None = None,
    schema: str | os.PathLike[str] | Any = None,
) -> Dataset:
    """Open *namespace* for reading.

    *root* defaults to ``$HOLLOW_ROOT`` or ``/dev/shm/hollow``. *schema* is
    optional: the data's own schema travels in every state file; pass your
    own ``.capnp`` (path or compiled module), older or newer, to read through
    it under Cap'n Proto's evolution rules.
    """
    return Dataset(namespace, root=root, schema=schema)

"""The durable side of a namespace in the daemon's state directory (``state_dir/NAME/``).

Its last good state file (``latest.state``, with ``latest.state.base`` and ``.mid`` when it is
built on them), the version counter, the operator's pin, the producer's id in a blob store, and a
change source's cursor (``cursor``, and ``cursor.pending`` while a version may hold more changes
than the cursor says). Every write is write, fsync, rename, fsync the directory: after any crash a
file holds its old content or its new (docs/decisions.md §19 and §100).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any

import orjson

from hollow import layout
from hollowd.sources import SourceError


def _head(path: Path) -> bytes | None:
    """The first bytes of a state file (its header), or None when there is none."""
    try:
        with open(path, "rb") as f:
            return f.read(layout.HEADER_SIZE)
    except FileNotFoundError:
        return None


class StateStore:
    """The durable side of a namespace: its last good state file, version counter and pin, and
    a change source's cursor (``cursor``, and ``cursor.pending`` while a version may hold more)."""

    def __init__(self, state_dir: Path, namespace: str) -> None:
        self.dir = state_dir / namespace
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.saved = self.dir / "latest.state"
        self._staged: dict[str, Any] | None = None  # {"cursor": ...} of the changes being applied

    @property
    def cursor(self) -> Any:
        """Where a change source's applied changes end (None before its first)."""
        doc = self._read_json("cursor", ("cursor",))
        return None if doc is None else doc["cursor"]

    @property
    def pending(self) -> dict[str, Any] | None:
        """``{"version", "cursor"}``: the cursor of changes that *version* holds, if it was written."""
        doc = self._read_json("cursor.pending", ("version", "cursor"))
        if doc is not None and type(doc["version"]) is not int:
            raise SourceError(f"{self.dir / 'cursor.pending'}: damaged (version {doc['version']!r})")
        return doc

    def stage(self, cursor: Any, changes: int) -> None:
        """*changes* changes ending at *cursor* are being applied: a version reserved now holds them."""
        self._staged = {"cursor": cursor, "changes": changes}

    def unstage(self) -> None:
        self._staged = None

    def reserve(self, version: int) -> None:
        """``Producer(reserve=...)``, before *version* is written: the staged cursor, or else the counter.

        ``cursor.pending`` names *version*, so it keeps the number reserved as the counter file
        would (:attr:`counter` reads both, and ``cursor`` carries it on): one durable write on the
        way to a reader, not two (docs/decisions.md §100)."""
        if self._staged is not None:
            self._replace(self.dir / "cursor.pending", orjson.dumps({"version": version, **self._staged}))
        else:
            self.save_counter(version)

    def commit_cursor(self, cursor: Any) -> None:
        """The changes up to *cursor* are applied (in a version saved, or in none, changing nothing)."""
        self._replace(self.dir / "cursor", orjson.dumps({"cursor": cursor, "version": self.counter}))
        self._unlink_pending()

    def drop_pending(self) -> None:
        """Forget a pending cursor whose version was not written (its changes are read again); its
        version's number stays used: the counter is made durable first."""
        pending = self.pending
        if pending is not None:
            self.save_counter(pending["version"])
        self._unlink_pending()

    def _unlink_pending(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "cursor.pending").unlink()

    def _read_json(self, name: str, fields: tuple[str, ...]) -> dict[str, Any] | None:
        path = self.dir / name
        try:
            doc = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as e:
            raise SourceError(f"{path}: cannot be read ({e})") from e
        if type(doc) is not dict or not all(f in doc for f in fields):
            raise SourceError(f"{path}: damaged (expected an object with {', '.join(fields)})")
        return doc

    @property
    def counter(self) -> int:
        """The highest version reserved: the counter file's, or a change source's (``cursor.pending``,
        then ``cursor``), whichever is higher."""
        return max(self._counter_file, *(self._version_in(name) for name in ("cursor.pending", "cursor")))

    @property
    def _counter_file(self) -> int:
        try:
            return int((self.dir / "counter").read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def _version_in(self, name: str) -> int:
        try:
            doc = orjson.loads((self.dir / name).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return 0
        version = doc.get("version") if type(doc) is dict else None
        return version if type(version) is int else 0

    @property
    def producer_id(self) -> str:
        """This state directory's name for its producer in a blob store's lease, made once: a daemon started
        again on it (only one runs on a state directory at a time: its lock) is the same producer, and
        takes its lease back at once after a crash instead of waiting for it to expire."""
        path = self.dir / "producer-id"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            made = uuid.uuid4().hex[:12]
            self._replace(path, f"{made}\n".encode())
            return made

    @property
    def pin(self) -> int | None:
        try:
            return int((self.dir / "pin").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def save(self, state_file: Path) -> None:
        """Keep a copy of the latest good *state_file* (write, fsync, rename: never half a copy).

        A version built on a base needs its base too: ``latest.state.base``, copied
        only when the base changed (a compaction), before the version that needs it;
        and one over a mid its mid, ``latest.state.mid``, copied when the mid changed.
        """
        for link_of in (layout.base_of, layout.mid_of):
            try:
                with open(link_of(state_file), "rb") as f:
                    head = f.read(layout.HEADER_SIZE)
                    if _head(link_of(self.saved)) != head:  # the header names the file: its content hash
                        self._replace(link_of(self.saved), head + f.read())
            except FileNotFoundError:
                pass
        self._replace(self.saved, state_file.read_bytes())

    def save_counter(self, version: int) -> None:
        """Make *version* durable before it is published: after any crash, numbering goes on above it."""
        if version > self._counter_file:
            self._replace(self.dir / "counter", f"{version}\n".encode())

    def save_pin(self, version: int | None) -> None:
        if version is None:
            with contextlib.suppress(FileNotFoundError):
                (self.dir / "pin").unlink()
        else:
            self._replace(self.dir / "pin", f"{version}\n".encode())

    @staticmethod
    def _replace(path: Path, data: bytes) -> None:
        """Write, fsync, rename, fsync the directory (fsync(2)): the old content or the new, after any crash."""
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

"""Sources: where a namespace's records come from.

* :class:`FileSource`: a JSON, JSON Lines or CSV file, or a directory of them
  (read in name order). JSON holds a list of records, or an object mapping type
  names to lists. JSON Lines and CSV files must end with a newline: one that
  ends mid-record is being written and is refused as incomplete (the daemon
  waits for the writer and tries again); half a JSON document does not parse.
  CSV cells are converted by the schema's field types; an empty cell is an
  absent field; a list or struct cell holds JSON. JSON is parsed with orjson
  (docs/decisions.md §16); errors name the file and, for JSON Lines, the line.
* :class:`CallableSource`: ``module:function``, called with the cycle's state
  (the same ``populate`` a Producer's ``run_cycle`` takes).

Sources of changes give the upserts and removals since a cursor, for
``Producer.run_incremental``; each change is ``{"upsert": record}`` or
``{"remove": key}`` (a list for a composite key), with an optional ``"type"``
(default: the source's ``type``, or the namespace's only type):

* :class:`ChangeLogSource`: a JSON Lines file of changes, appended by any tool.
* :class:`IncrementalSource`: ``module:function(cursor) -> (changes, new_cursor)``.

Their ``read(cursor)`` returns a :class:`ChangeBatch`: the changes, checked, and
the cursor once they are applied. Keeping that cursor durably, so that a change
is applied exactly once across restarts, is the daemon's part
(docs/decisions.md §19).

A source that cannot be read raises :class:`SourceError`; the cycle fails and
the announced version stays.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import xxhash

import hollow
from hollow import layout
from hollowd.errors import DuplicateKeyError, Error, MissingKeyError, ValidationError
from hollowd.schema import NamespaceSchema
from hollowd.state import Delta, WriteState
from hollowd.validators import resolve

FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


class SourceError(Error):
    """A source that cannot be read now (missing, incomplete, malformed); the message says which and where."""


def _refuse_empty(state: WriteState, what: str) -> None:
    """An empty read is refused: a truncated, half-replaced or emptied source must not wipe the
    dataset (issue 9, item 16). A namespace that may really be empty says so (``allow_empty``)."""
    given = sum(map(len, state.records.values())) + sum(len(b.lines) for bs in state.lines.values() for b in bs)
    if not given:
        raise SourceError(
            f"{what} gave no records (an empty file, blank lines only, [], a CSV header alone, or an empty "
            "directory): refused, the namespace keeps its last good version. Replace a source by writing a "
            "new file and renaming it over the old one; if the namespace may really be empty, set allow_empty = true"
        )


class CallableSource:
    """``module:function`` that populates the state."""

    def __init__(self, ref: str, *, allow_empty: bool = False) -> None:
        self.ref = ref
        self.allow_empty = allow_empty
        self.populate: Callable[[WriteState], Any] = resolve(ref)

    def __call__(self, state: WriteState) -> None:
        self.populate(state)
        if not self.allow_empty:
            _refuse_empty(state, self.ref)

    def __repr__(self) -> str:
        return f"<CallableSource {self.ref}>"


class FileSource:
    """Records from a file, or from every file of a directory."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        schema: NamespaceSchema,
        *,
        fmt: str = "auto",
        type_name: str = "",
        allow_empty: bool = False,
    ) -> None:
        self.path = Path(path)
        self.schema = schema
        self.format = fmt
        self.type_name = _only_type(schema, type_name)
        self.allow_empty = allow_empty

    def files(self) -> list[Path]:
        """The files this source reads now, in order."""
        if self.path.is_dir():
            return sorted(
                p for p in self.path.iterdir() if p.is_file() and p.suffix in FORMATS and not p.name.startswith(".")
            )
        if not self.path.exists():
            raise SourceError(f"{self.path}: no such file or directory")
        return [self.path]

    def __call__(self, state: WriteState) -> None:
        for path in self.files():
            if self._format_of(path) == "jsonl":
                lines, parse = self._jsonl_lines(path, self._read(path))
                state.add_lines(self._default_type(path), lines, parse)
                continue
            for type_name, records in self._batches(path):
                state.add_all(type_name, records)
        if not self.allow_empty:
            _refuse_empty(state, str(self.path))

    def locate(self, error: ValidationError) -> ValidationError:
        """*error*, led by where its record is: ``FILE:LINE`` (from 1) for JSON Lines and CSV,
        ``FILE[INDEX]`` for a JSON list (``FILE[TYPE][INDEX]`` in an object of types).

        Found only when a cycle failed, by reading the files again and looking for
        the record the error names (by its key; for a missing key, the first
        record without one), so that a good cycle pays nothing for it. An error
        that names no record of these files is returned as it is.
        """
        if error.type_name is None:
            return error
        rtype = self.schema.types.get(error.type_name)
        if rtype is None:
            return error
        missing = isinstance(error, MissingKeyError)
        found: list[str] = []
        try:
            for where, record in self._located(error.type_name):
                key = rtype.key_of(record)
                none = key is None or (isinstance(key, tuple) and None in key)
                if none if missing else (not none and key == error.key):
                    found.append(where)
                    if missing or len(found) == 2:
                        break
        except (Error, OSError, ValueError, RecursionError):
            return error  # the files changed meanwhile, or do not parse: say what we know
        if not found:
            return error
        if not isinstance(error, DuplicateKeyError):
            found = found[-1:] if not missing else found[:1]
        message = _POSITION.sub("", str(error))
        return type(error)(
            f"{' and '.join(found)}: {message}", type_name=error.type_name, key=error.key, field=error.field
        )

    def _located(self, type_name: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every record of *type_name* in these files, with where it is, in order."""
        for path in self.files():
            fmt = self._format_of(path)
            if fmt == "json":
                doc = orjson.loads(self._read(path))
                if isinstance(doc, list) and type_name == self.type_name:
                    yield from ((f"{path}[{i}]", r) for i, r in enumerate(doc) if type(r) is dict)
                elif isinstance(doc, dict) and isinstance(doc.get(type_name), list):
                    yield from (
                        (f"{path}[{type_name!r}][{i}]", r) for i, r in enumerate(doc[type_name]) if type(r) is dict
                    )
            elif type_name == self.type_name and fmt == "jsonl":
                for n, line in enumerate(self._read(path).split(b"\n"), 1):
                    if line.strip():
                        doc = orjson.loads(line)
                        if type(doc) is dict:
                            yield f"{path}:{n}", doc
            elif type_name == self.type_name and fmt == "csv":
                yield from ((f"{path}:{n}", r) for n, r in enumerate(self._csv(path, self._read(path)), 2))

    def _format_of(self, path: Path) -> str | None:
        return self.format if self.format != "auto" else FORMATS.get(path.suffix)

    @staticmethod
    def _read(path: Path) -> bytes:
        """The whole file; a FIFO or device planted at the path is refused, never waited on (O_NONBLOCK)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise SourceError(f"{path}: cannot read ({e.strerror})") from e
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise SourceError(f"{path}: not a regular file; a source is a file (or a directory of files)")
            with os.fdopen(os.dup(fd), "rb") as f:
                return f.read()
        except OSError as e:
            raise SourceError(f"{path}: cannot read ({e.strerror})") from e
        finally:
            os.close(fd)

    def _jsonl_lines(self, path: Path, data: bytes) -> tuple[list[bytes], Any]:
        """The file's non-blank lines, and how to parse some of them (a cycle parses only lines it has
        not seen; the first build parses all)."""
        if data and not data.endswith(b"\n"):
            raise SourceError(f"{path}: ends mid-record (no final newline): still being written; retrying later")
        lines = data.split(b"\n")[:-1]
        numbers: list[int] | None = None  # the file's line number of each kept line, when blanks were dropped
        if _may_be_blank(lines):
            numbers = [n for n, line in enumerate(lines, 1) if line.strip()]
            lines = [lines[n - 1] for n in numbers]

        def parse(indexes: list[int]) -> list[dict[str, Any]]:
            docs = json_lines(
                path, [lines[i] for i in indexes], numbers=[numbers[i] if numbers else i + 1 for i in indexes]
            )
            for i, doc in zip(indexes, docs, strict=True):
                if type(doc) is not dict:
                    raise SourceError(
                        f"{path}:{numbers[i] if numbers else i + 1}: {_kind(doc)}, not a record (an object)"
                    )
            return docs

        return lines, parse

    def _batches(self, path: Path) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        fmt = self.format if self.format != "auto" else FORMATS.get(path.suffix)
        if fmt is None:
            raise SourceError(f"{path}: unknown format; name it .json, .jsonl or .csv, or set format")
        data = self._read(path)
        if fmt == "json":
            yield from self._json(path, data)
        elif fmt == "jsonl":
            yield self._default_type(path), self._jsonl(path, data)
        else:
            yield self._default_type(path), self._csv(path, data)

    def _default_type(self, path: Path) -> str:
        if not self.type_name:
            raise SourceError(
                f"{path}: the namespace has several types ({', '.join(sorted(self.schema.types))}); "
                "set the source's type, or give JSON as an object of type name -> records"
            )
        return self.type_name

    def _json(self, path: Path, data: bytes) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise SourceError(
                f"{path}: not valid JSON ({e}); if it is being written, the next change will retry"
            ) from e
        if isinstance(doc, list):
            yield self._default_type(path), _records(path, doc)
        elif isinstance(doc, dict):
            for type_name, recs in doc.items():
                if not isinstance(recs, list):
                    raise SourceError(f"{path}: {type_name!r} must map to a list of records")
                yield type_name, _records(path, recs)
        else:
            raise SourceError(f"{path}: expected a list of records or an object of type -> records")

    def _jsonl(self, path: Path, data: bytes) -> list[dict[str, Any]]:
        """Every line's record; a line that is not a JSON object fails the file, naming the line."""
        if data and not data.endswith(b"\n"):
            raise SourceError(f"{path}: ends mid-record (no final newline): still being written; retrying later")
        docs = json_lines(path, data.split(b"\n")[:-1])
        if set(map(type, docs)) - {dict}:
            for n, doc in enumerate(docs, 1):
                if type(doc) is not dict and doc is not BLANK:
                    raise SourceError(f"{path}:{n}: {_kind(doc)}, not a record (an object)")
            docs = [doc for doc in docs if doc is not BLANK]
        return docs

    def _csv(self, path: Path, data: bytes) -> list[dict[str, Any]]:
        if data and not data.endswith(b"\n"):  # its last row may be cut short: not a whole file yet
            raise SourceError(f"{path}: ends mid-row (no final newline): still being written; retrying later")
        type_name = self._default_type(path)
        fields = {f.proto.name: f.proto.slot.type.which() for f in self.schema.type(type_name).schema.fields_list}
        try:
            rows = list(csv.DictReader(data.decode().splitlines()))
        except (UnicodeDecodeError, csv.Error) as e:
            raise SourceError(f"{path}: not readable as UTF-8 CSV ({e})") from e
        out = []
        for n, row in enumerate(rows, 2):
            rec: dict[str, Any] = {}
            for name, cell in row.items():
                if name is None:
                    raise SourceError(f"{path}:{n}: more cells than header columns")
                if cell is None or cell == "":
                    continue
                rec[name] = _cell(path, n, name, fields.get(name), cell)
            out.append(rec)
        return out


#: How the producer's errors say where a record was in its input (0-based positions), which a
#: source that knows the file and line says better.
_POSITION = re.compile(r" (?:record )?at input positions? \d+(?: and \d+)?:?")


def _may_be_blank(lines: list[bytes]) -> bool:
    """Whether any of *lines* may be blank (empty, or ASCII whitespace alone: ``bytes.strip`` empties
    it): only if the lowest line is empty or starts with whitespace, since every blank line does. One
    ``min`` over the lines (30 ms for 1M) instead of a regular expression over the file's bytes (0.9 s
    for 124 MiB); a file with a record line led by blanks is then looked at line by line."""
    return bool(lines) and min(lines)[:1] <= b" "


#: What :func:`json_lines` gives for a blank line.
BLANK: Any = object()


def json_lines(name: object, lines: list[bytes], first: int = 1, *, numbers: list[int] | None = None) -> list[Any]:
    """The JSON value of each line (numbered from *first*, or as *numbers* says), :data:`BLANK` for a blank one.

    One ``orjson.loads`` per line, mapped in C; only when a line fails are they
    parsed one by one, to name it (``NAME:LINE``) or to let blank lines through.
    """
    try:
        return list(map(orjson.loads, lines))
    except orjson.JSONDecodeError:
        pass
    docs = []
    for n, line in zip(numbers or range(first, first + len(lines)), lines, strict=True):
        if not line.strip():
            docs.append(BLANK)
            continue
        try:
            docs.append(orjson.loads(line))
        except orjson.JSONDecodeError as e:
            raise SourceError(f"{name}:{n}: not valid JSON ({e})") from e
    return docs


def _kind(value: Any) -> str:
    """What a JSON value is, for messages."""
    names = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    return "null" if value is None else names.get(type(value), f"a {type(value).__name__}")


def _records(path: Path, recs: list[Any]) -> list[dict[str, Any]]:
    if set(map(type, recs)) - {dict}:
        bad = next(i for i, r in enumerate(recs) if type(r) is not dict)
        raise SourceError(f"{path}: record {bad} is a {type(recs[bad]).__name__}, not an object")
    return recs


_INTS = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}


def _cell(path: Path, line: int, name: str, kind: str | None, cell: str) -> Any:
    """A CSV cell as the schema's field type wants it (unknown fields are left to validation)."""
    try:
        if kind in _INTS:
            return int(cell)
        if kind in ("float32", "float64"):
            return float(cell)
        if kind == "bool":
            low = cell.strip().lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"{cell!r} is not a boolean")
            return low in ("true", "1", "yes")
        if kind in ("list", "struct"):
            return orjson.loads(cell)
        if kind == "data":
            return bytes.fromhex(cell)
    except ValueError as e:
        raise SourceError(f"{path}:{line}: column {name!r}: {e}") from e
    return cell


def _only_type(schema: NamespaceSchema, type_name: str) -> str:
    """The type of records that do not say theirs: the one named, or the namespace's only one, or none."""
    if not type_name and len(schema.types) == 1:
        return next(iter(schema.types))
    return type_name


# --- sources of changes ------------------------------------------------------------------


class Change(NamedTuple):
    """An upsert of *record*, or (*record* None) the removal of *key*, read at *where*.

    (A tuple, and *where* made only when asked for: a first read of a long log makes millions.)
    """

    type_name: str
    key: Any
    record: dict[str, Any] | None
    label: str  # "FILE:", or "module:function: change "
    number: int  # the line, or the change's position, from 1

    @property
    def where(self) -> str:
        return f"{self.label}{self.number}"


@dataclass(frozen=True)
class ChangeBatch:
    """A change source's next changes, and its cursor once they are applied.

    *notes* are what the reading found worth logging (a rotated or truncated
    file), as ``(logging level, message)``.
    """

    changes: list[Change]
    cursor: Any
    notes: list[tuple[int, str]] = field(default_factory=list)

    def apply(self, delta: Delta) -> None:
        """What ``run_incremental`` calls: every change in order, so the last one of a key wins."""
        for c in self.changes:
            if c.record is None:
                delta.remove(c.type_name, c.key)
            else:
                delta.upsert(c.type_name, c.record)

    def locate(self, error: ValidationError) -> ValidationError:
        """*error*, led by where the record it names was last upserted, when it names one of this batch."""
        for c in reversed(self.changes):
            if c.record is not None and c.type_name == error.type_name and c.key == error.key:
                return ValidationError(f"{c.where}: {error}", type_name=c.type_name, key=c.key, field=error.field)
        return error


_KEY_TYPES = {layout.KEY_INT: int, layout.KEY_TEXT: str, layout.KEY_BOOL: bool}  # Data has no JSON form
_KEY_WORDS = {
    layout.KEY_INT: "an integer",
    layout.KEY_TEXT: "a string",
    layout.KEY_BOOL: "true or false",
    layout.KEY_DATA: "Data, which JSON cannot give",
}


class _Changes:
    """Checks change documents against the schema: ``{"upsert": record}`` or ``{"remove": key}``,
    with an optional ``"type"`` (else *default_type*). A bad one raises :class:`SourceError` naming it."""

    def __init__(self, schema: NamespaceSchema, default_type: str) -> None:
        self.schema = schema
        self.default_type = default_type
        #: per type: its key fields and the Python type of each (None: none will do)
        self.keys = {
            name: (t.primary.fields, tuple(_KEY_TYPES.get(k) for k in t.primary.key_types))
            for name, t in schema.types.items()
        }

    def check_all(self, label: str, first: int, docs: list[Any]) -> list[Change]:
        """The changes of *docs*, numbered from *first* (:data:`BLANK` ones are skipped)."""
        out: list[Change] = []
        append, new = out.append, tuple.__new__  # Change(...) without its Python-level __new__
        default = self.default_type
        fields, kinds = self.keys.get(default, ((), ()))
        field0, kind0 = (fields[0], kinds[0]) if len(fields) == 1 else ("", None)
        for number, doc in enumerate(docs, first):
            # the common line, {"upsert": record} of the default type with a one-field key, in few steps
            if type(doc) is dict and len(doc) == 1 and kind0 is not None:
                record = doc.get("upsert")
                if type(record) is dict:
                    key = record.get(field0)
                    if type(key) is kind0:
                        append(new(Change, (default, key, record, label, number)))
                        continue
            if doc is not BLANK:
                append(self.check(label, number, doc))
        return out

    def check(self, label: str, number: int, doc: Any) -> Change:
        if type(doc) is not dict or not (len(doc) == 1 or (len(doc) == 2 and "type" in doc)):
            raise self._shape(label, number, doc)
        type_name = doc.get("type", self.default_type)
        spec = self.keys.get(type_name) if type(type_name) is str else None
        if spec is None:
            raise self._type(label, number, type_name)
        fields, kinds = spec
        if "upsert" in doc:
            record = doc["upsert"]
            if type(record) is not dict:
                raise SourceError(f"{label}{number}: upsert: expected a record (an object), got {_kind(record)}")
            if len(fields) == 1:
                key = record.get(fields[0])
                if type(key) is not kinds[0]:
                    self._check_key(label, number, "upsert", type_name, (key,))
            else:
                key = tuple(record.get(f) for f in fields)
                self._check_key(label, number, "upsert", type_name, key)
            return Change(type_name, key, record, label, number)
        if "remove" not in doc:
            raise self._shape(label, number, doc)
        key = doc["remove"]
        if len(fields) == 1:
            if type(key) is not kinds[0]:
                self._check_key(label, number, "remove", type_name, (key,))
        elif type(key) is list and len(key) == len(fields):
            key = tuple(key)
            self._check_key(label, number, "remove", type_name, key)
        else:
            raise SourceError(
                f"{label}{number}: remove: {type_name}'s key is ({', '.join(fields)}): "
                f"give a list of {len(fields)} values, got {_json(key)}"
            )
        return Change(type_name, key, None, label, number)

    def _check_key(self, label: str, number: int, op: str, type_name: str, values: tuple[Any, ...]) -> None:
        rtype = self.schema.types[type_name]
        for name, kind, value in zip(rtype.primary.fields, rtype.primary.key_types, values, strict=True):
            if value is None and op == "upsert":
                raise SourceError(f"{label}{number}: upsert: the {type_name} record has no primary key field {name!r}")
            if type(value) is not _KEY_TYPES.get(kind):
                raise SourceError(
                    f"{label}{number}: {op}: {type_name}.{name} is {_KEY_WORDS[kind]}, got {_json(value)}"
                )

    @staticmethod
    def _shape(label: str, number: int, doc: Any) -> SourceError:
        got = f"an object with {', '.join(map(repr, doc))}" if type(doc) is dict else _kind(doc)
        return SourceError(
            f'{label}{number}: expected {{"upsert": record}} or {{"remove": key}} (and maybe "type"), got {got}'
        )

    def _type(self, label: str, number: int, type_name: Any) -> SourceError:
        if not type_name:
            return SourceError(
                f'{label}{number}: no "type", and the namespace has several ({", ".join(sorted(self.schema.types))}); '
                'give each change its "type", or set the source\'s type'
            )
        have = ", ".join(self.schema.types)
        return SourceError(f"{label}{number}: unknown record type {_json(type_name)}; this namespace has: {have}")


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)


#: Bytes at the start of a change log, and just before its cursor's offset, that the
#: cursor fingerprints (xxh3_64): a file truncated and written again past the offset is noticed.
MARK_BYTES = 4096


class ChangeLogSource:
    """A JSON Lines file of changes, one a line, that any tool appends to.

    ``read(cursor)`` gives the complete lines after *cursor* (a final line
    without its newline is still being written: it waits for the next read) and
    the cursor at their end: the file's identity (``st_dev``, ``st_ino``), the
    offset and line reached, and a fingerprint of the bytes before the offset.

    * A file whose bytes before the offset are those the cursor fingerprinted
      goes on from the offset, even when it is a new file (a log edited with
      ``sed -i`` or an editor, to mend a bad line after the offset).
    * Any other new file at the path was rotated in: it is read from its start,
      after the rest of the old one if that can still be read: this source keeps
      the file it read open, and after a restart looks for the inode in the
      same directory (where logrotate leaves it).
    * The same file, shorter than the offset or with other bytes before it, was
      truncated or rewritten: it is read again from its start, with a warning.

    Writers should open the path for each append, or reopen it once it is
    rotated (logrotate's ``postrotate``): lines written to the old file after
    the daemon has moved on to the new one are not read.
    """

    def __init__(self, path: str | os.PathLike[str], schema: NamespaceSchema, *, type_name: str = "") -> None:
        self.path = Path(path)
        self.schema = schema
        self.type_name = _only_type(schema, type_name)
        self._changes = _Changes(schema, self.type_name)
        self._fds: dict[tuple[int, int], int] = {}  # by (st_dev, st_ino): the file at the path and the cursor's

    def read(self, cursor: Any) -> ChangeBatch:
        """The complete lines after *cursor* (None: from the start), checked; nothing is applied here."""
        was = _identity(self.path, cursor)
        fd, now = self._open_path()
        changes: list[Change] = []
        notes: list[tuple[int, str]] = []
        start = (0, 0)
        if was is not None and _continues(fd, cursor):  # the same file, or a copy of it (sed -i, an editor)
            start = (cursor["offset"], cursor["line"])
        elif was == now:
            notes.append((logging.WARNING, self._restart_note(fd, cursor)))
        elif was is not None:
            changes += self._finish(was, cursor, notes)
        got, offset, line = self._lines(fd, str(self.path), *start)
        self._close_all_but({now, was})
        cursor = {"file": str(self.path), "dev": now[0], "ino": now[1], "offset": offset, "line": line}
        return ChangeBatch(changes + got, {**cursor, "mark": _mark(fd, offset)}, notes)

    def close(self) -> None:
        """Close the files this source keeps open."""
        self._close_all_but(set())

    def __enter__(self) -> ChangeLogSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ChangeLogSource {self.path}>"

    def _open_path(self) -> tuple[int, tuple[int, int]]:
        try:  # O_NONBLOCK: a FIFO planted at the path must not hang the daemon
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise SourceError(f"{self.path}: no such file (yet); waiting for it") from None
        except OSError as e:
            raise SourceError(f"{self.path}: cannot read ({e.strerror})") from e
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise SourceError(f"{self.path}: not a regular file; a change log is one JSON Lines file")
        identity = (st.st_dev, st.st_ino)
        if identity in self._fds:
            os.close(fd)
            return self._fds[identity], identity
        self._fds[identity] = fd
        return fd, identity

    def _finish(self, was: tuple[int, int], cursor: Any, notes: list[tuple[int, str]]) -> list[Change]:
        """The rest of the file *cursor* is in, which the path no longer names, if it can still be read."""
        fd = self._fds.get(was)
        if fd is None:
            fd = self._find(was)
        if fd is None or not _continues(fd, cursor):
            notes.append(
                (
                    logging.WARNING,
                    f"event=change-log-replaced file={self.path} line={cursor['line']} (the file there is new, and "
                    "the one read up to that line is gone: lines added to it after that line, if any, are lost; "
                    "reading the new one from its start)",
                )
            )
            return []
        name = _name_of(fd, cursor["file"])
        changes, _, line = self._lines(fd, name, cursor["offset"], cursor["line"], rotated_notes=notes)
        notes.append(
            (
                logging.INFO,
                f"event=change-log-rotated file={self.path} old={name} (finished the old file at line {line}; "
                "reading the new one from its start)",
            )
        )
        return changes

    def _find(self, was: tuple[int, int]) -> int | None:
        """The file *was* names, if it is still in the log's directory (renamed by logrotate, say)."""
        try:
            entries = list(os.scandir(self.path.parent))
        except OSError:
            return None
        for entry in entries:
            if entry.inode() != was[1]:
                continue
            try:
                fd = os.open(entry.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == was and stat.S_ISREG(st.st_mode):
                self._fds[was] = fd
                return fd
            os.close(fd)
        return None

    def _restart_note(self, fd: int, cursor: Any) -> str:
        size = os.fstat(fd).st_size
        what = f"shorter ({size:,} bytes)" if size < cursor["offset"] else "rewritten before it"
        return (
            f"event=change-log-truncated file={self.path} line={cursor['line']} offset={cursor['offset']} "
            f"(the file was {what}; reading it again from its start)"
        )

    def _lines(
        self, fd: int, name: str, offset: int, line: int, rotated_notes: list[tuple[int, str]] | None = None
    ) -> tuple[list[Change], int, int]:
        """The changes of the complete lines from *offset* (line *line* + 1 there), and where they end.

        With *rotated_notes*, the file is finished (rotated away): a last line
        without its newline will never be completed, and is noted and skipped.
        """
        data = _read_from(fd, offset)
        end = data.rfind(b"\n") + 1
        lines = data[:end].split(b"\n")[:-1]
        if rotated_notes is not None and end < len(data):
            rotated_notes.append(
                (
                    logging.WARNING,
                    f"event=change-log-rotated-mid-line file={name}:{line + len(lines) + 1} "
                    "(the rotated file ends without a newline; that line is skipped)",
                )
            )
        changes = self._changes.check_all(f"{name}:", line + 1, json_lines(name, lines, line + 1))
        return changes, offset + end, line + len(lines)

    def _close_all_but(self, keep: set[tuple[int, int] | None]) -> None:
        for identity in [i for i in self._fds if i not in keep]:
            os.close(self._fds.pop(identity))


def _identity(path: Path, cursor: Any) -> tuple[int, int] | None:
    """The (st_dev, st_ino) of the file a change log's *cursor* is in; None for no cursor."""
    if cursor is None:
        return None
    numbers = ("dev", "ino", "offset", "line")
    if (
        type(cursor) is not dict
        or not isinstance(cursor.get("mark"), str)
        or {type(cursor.get(k)) for k in numbers} != {int}
    ):
        raise SourceError(
            f"{path}: the kept cursor {_json(cursor)} is not a change log's; "
            "remove the namespace's cursor file in the state directory to read the log from its start"
        )
    return cursor["dev"], cursor["ino"]


def _continues(fd: int, cursor: Any) -> bool:
    """Whether the file at *fd* still holds what *cursor* read: as long, with the same bytes before its offset."""
    offset = cursor["offset"]
    return bool(os.fstat(fd).st_size >= offset and _mark(fd, offset) == cursor["mark"])


def _mark(fd: int, offset: int) -> str:
    n = min(MARK_BYTES, offset)
    h = xxhash.xxh3_64(os.pread(fd, n, 0))
    h.update(os.pread(fd, n, offset - n))
    return h.hexdigest()


def _read_from(fd: int, offset: int) -> bytes:
    parts = []
    size = os.fstat(fd).st_size
    while offset < size:
        part = os.pread(fd, size - offset, offset)  # at most 2 GiB at a time (read(2))
        if not part:
            break
        parts.append(part)
        offset += len(part)
    return b"".join(parts)


def _name_of(fd: int, default: str) -> str:
    """The path *fd* is at now (its rotated name), for messages."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return default


class IncrementalSource:
    """``module:function(cursor) -> (changes, new_cursor)``: the changes since *cursor*.

    *cursor* is None the first time, then the ``new_cursor`` the function
    returned with the last changes that were applied (any JSON value; it is
    kept as JSON, so a tuple comes back as a list). *changes* is an iterable of
    change documents, as in a change log. Called every ``interval`` seconds.
    """

    def __init__(self, ref: str, schema: NamespaceSchema, *, type_name: str = "") -> None:
        self.ref = ref
        self.schema = schema
        self.type_name = _only_type(schema, type_name)
        self.changes_since: Callable[[Any], Any] = resolve(ref)

    def read(self, cursor: Any) -> ChangeBatch:
        """Call the function with *cursor*; check what it gives (nothing is applied here)."""
        try:
            got = self.changes_since(cursor)
            docs = list(got[0]) if type(got) is tuple and len(got) == 2 else None
        except (Error, hollow.Error):
            raise
        except Exception as e:
            raise SourceError(f"{self.ref}: raised {type(e).__name__}: {e}") from e
        if docs is None:
            raise SourceError(f"{self.ref}: must return (changes, new_cursor), got {_kind(got)}")
        try:
            new_cursor = orjson.loads(orjson.dumps(got[1]))
        except TypeError as e:
            raise SourceError(f"{self.ref}: its new cursor must be a JSON value ({e})") from e
        checked = _Changes(self.schema, self.type_name).check_all(f"{self.ref}: change ", 1, docs)
        return ChangeBatch(checked, new_cursor)

    def __repr__(self) -> str:
        return f"<IncrementalSource {self.ref}>"

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

A source that cannot be read raises :class:`SourceError`; the cycle fails and
the announced version stays.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from hollowd.errors import Error
from hollowd.schema import NamespaceSchema
from hollowd.state import WriteState
from hollowd.validators import resolve

FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


class SourceError(Error):
    """A source that cannot be read now (missing, incomplete, malformed); the message says which and where."""


class CallableSource:
    """``module:function`` that populates the state."""

    def __init__(self, ref: str) -> None:
        self.ref = ref
        self.populate: Callable[[WriteState], Any] = resolve(ref)

    def __call__(self, state: WriteState) -> None:
        self.populate(state)

    def __repr__(self) -> str:
        return f"<CallableSource {self.ref}>"


class FileSource:
    """Records from a file, or from every file of a directory."""

    def __init__(
        self, path: str | os.PathLike[str], schema: NamespaceSchema, *, fmt: str = "auto", type_name: str = ""
    ) -> None:
        self.path = Path(path)
        self.schema = schema
        self.format = fmt
        if not type_name and len(schema.types) == 1:
            type_name = next(iter(schema.types))
        self.type_name = type_name

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
            for type_name, records in self._batches(path):
                state.add_all(type_name, records)

    def _batches(self, path: Path) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        fmt = self.format if self.format != "auto" else FORMATS.get(path.suffix)
        if fmt is None:
            raise SourceError(f"{path}: unknown format; name it .json, .jsonl or .csv, or set format")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise SourceError(f"{path}: cannot read ({e.strerror})") from e
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
                    raise SourceError(f"{path}:{n}: a {_kind(doc)}, not a record (an object)")
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


#: What :func:`json_lines` gives for a blank line.
BLANK: Any = object()


def json_lines(name: object, lines: list[bytes], first: int = 1) -> list[Any]:
    """The JSON value of each line (numbered from *first*), :data:`BLANK` for a blank one.

    One ``orjson.loads`` per line, mapped in C; only when a line fails are they
    parsed one by one, to name it (``NAME:LINE``) or to let blank lines through.
    """
    try:
        return list(map(orjson.loads, lines))
    except orjson.JSONDecodeError:
        pass
    docs = []
    for n, line in enumerate(lines, first):
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
    names = {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


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

"""The producer's view of a namespace's schema: compiled types, keys, indexes.

Schemas are compiled by pycapnp's own compiler (one SchemaParser per file,
see ``hollow.schema``), never parsed here. What this module adds is what the
producer needs beyond the compiler's output: which nodes a state file must
carry so that a reader can rebuild the types, the schema's fingerprint, and the
checked key and index declarations.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import capnp
import xxhash

from hollow import layout
from hollow import schema as reader_schema
from hollow.errors import InvalidSchemaError
from hollowd.errors import SchemaError, UnsupportedSchemaError

_INT_TYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
_KEY_TYPES = {"text": layout.KEY_TEXT, "data": layout.KEY_DATA, "bool": layout.KEY_BOOL}


@dataclass(frozen=True)
class IndexSpec:
    """One index of a type: its fields, their key types, and how slots store keys."""

    fields: tuple[str, ...]
    key_types: tuple[int, ...]
    kind: int
    unique: bool

    def fingerprint(self, key: Any) -> int:
        return layout.key_fingerprint(self.kind, self.key_types, key)


@dataclass(frozen=True)
class RecordType:
    """A record type of the namespace: its compiled struct, primary key and secondary indexes."""

    name: str
    struct: Any  # the pycapnp struct module (e.g. module.Movie)
    primary: IndexSpec
    indexes: tuple[IndexSpec, ...]

    @property
    def schema(self) -> Any:
        return self.struct.schema

    @property
    def type_id(self) -> int:
        return int(self.struct.schema.node.id)

    def key_of(self, record: Mapping[str, Any]) -> Any:
        """The primary key of a record dict: a value, or a tuple for several fields."""
        fields = self.primary.fields
        if len(fields) == 1:
            return record.get(fields[0])
        return tuple(record.get(f) for f in fields)


class NamespaceSchema:
    """A compiled schema file plus the key and index declarations of its record types."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        primary_keys: Mapping[str, Sequence[str] | str],
        indexes: Mapping[str, Iterable[Sequence[str] | str]] | None = None,
    ) -> None:
        self.path = Path(path)
        try:
            self.source = self.path.read_text()
            self.module = reader_schema.load_schema_file(self.path)
        except OSError as e:
            raise SchemaError(f"schema {path}: cannot read it ({e.strerror})") from e
        except InvalidSchemaError as e:
            raise SchemaError(str(e)) from e
        except capnp.KjException as e:
            raise SchemaError(f"schema {path}: does not compile: {e.description}") from e
        if not primary_keys:
            raise SchemaError(f"schema {path}: declare at least one record type with its primary key")
        indexes = indexes or {}
        unknown = set(indexes) - set(primary_keys)
        if unknown:
            raise SchemaError(f"indexes declared for {', '.join(sorted(unknown))}, which have no primary key")
        self.types: dict[str, RecordType] = {}
        for name, pk in primary_keys.items():
            struct = self._struct(name)
            primary = _index_spec(struct.schema, name, pk, unique=True)
            secondary = tuple(_index_spec(struct.schema, name, f, unique=False) for f in indexes.get(name, ()))
            self.types[name] = RecordType(name, struct, primary, secondary)
        self.nodes = _collect_nodes([t.schema for t in self.types.values()])
        self.node_bytes = [n.as_builder().to_bytes() for n in self.nodes]
        h = xxhash.xxh3_64()
        for b in self.node_bytes:
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
        for t in self.types.values():
            h.update(repr((t.name, t.primary, t.indexes)).encode())
        self.fingerprint = h.intdigest()

    def _struct(self, name: str) -> Any:
        struct = getattr(self.module, name, None)
        if struct is None or not hasattr(struct, "schema") or not hasattr(struct.schema, "fieldnames"):
            raise SchemaError(f"schema {self.path} declares no struct {name!r}")
        return struct

    def type(self, name: str) -> RecordType:
        try:
            return self.types[name]
        except KeyError:
            raise SchemaError(
                f"unknown record type {name!r}; this namespace has: {', '.join(sorted(self.types))}"
            ) from None


def _index_spec(schema: Any, type_name: str, fields: Sequence[str] | str, *, unique: bool) -> IndexSpec:
    names = (fields,) if isinstance(fields, str) else tuple(fields)
    if not names:
        raise SchemaError(f"{type_name}: an index needs at least one field")
    by_name = {f.proto.name: f.proto for f in schema.fields_list}
    key_types = []
    for name in names:
        field = by_name.get(name)
        if field is None:
            raise SchemaError(f"{type_name} has no field {name!r} to index; it has: {', '.join(by_name)}")
        if field.which() != "slot" or field.discriminantValue != 0xFFFF:
            raise UnsupportedSchemaError(f"{type_name}.{name}: groups and union members cannot be keys")
        kind = field.slot.type.which()
        if kind in _INT_TYPES:
            key_types.append(layout.KEY_INT)
        elif kind in _KEY_TYPES:
            key_types.append(_KEY_TYPES[kind])
        else:
            raise UnsupportedSchemaError(
                f"{type_name}.{name} is {kind}; keys and indexes take integer, Text, Data or Bool fields"
            )
    exact = unique and len(names) == 1 and key_types[0] == layout.KEY_INT
    kind_ = layout.KIND_EXACT_INT if exact else layout.KIND_HASHED
    return IndexSpec(names, tuple(key_types), kind_, unique)


def _collect_nodes(roots: list[Any]) -> list[Any]:
    """The schema Nodes a reader needs for *roots*: each struct, enum and group they reach."""
    seen: dict[int, Any] = {}
    pending = list(roots)
    while pending:
        s = pending.pop()
        node = s.node
        if node.id in seen:
            continue
        seen[node.id] = node
        if node.which() != "struct":
            continue
        for field in s.fields_list:
            proto = field.proto
            if proto.which() == "group":
                pending.append(field.schema)
                continue
            pending.extend(_referenced(proto.slot.type, field))
    return [seen[k] for k in sorted(seen)]


def _referenced(typ: Any, field: Any) -> list[Any]:
    kind = typ.which()
    if kind in ("struct", "enum"):
        return [field.schema]
    if kind == "list":
        s = field.schema
        while kind == "list":
            typ = typ.list.elementType
            kind = typ.which()
            if kind not in ("struct", "enum", "list"):
                return []  # a list of primitives or Text: no schema node to carry
            s = s.elementType
        return [s]
    if kind in ("interface", "anyPointer"):
        raise UnsupportedSchemaError(f"field {field.proto.name}: {kind} fields cannot be published")
    return []

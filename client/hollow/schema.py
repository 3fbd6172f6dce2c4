"""Cap'n Proto schemas on the read path: the envelope, embedded schemas, user schemas.

Three pycapnp facts shape this module (see PITFALLS.md):

* ``capnp.load`` of two *different* files that declare the same 64-bit file id
  aborts the process (C++ ``terminate``: "Duplicate ID"), and an older and a
  newer copy of one schema do exactly that. So every schema file is compiled by
  a :class:`capnp.SchemaParser` of its own, and the schema embedded in a state
  file is loaded through a :class:`capnp.SchemaLoader` of its own, keyed by its
  fingerprint.
* ``Struct.from_bytes`` is a context manager that releases the buffer on exit;
  a record reader that escapes it then reads unmapped memory (SIGSEGV). We
  build the flat-array message reader ourselves and never release it early: the
  message holds a buffer export of the mapping, every record reader holds the
  message, so an escaped record keeps its pages mapped instead of crashing.
* The default traversal limit (64 MiB) kills long-lived readers. Our files are
  checked at attach and immutable, so the limit is lifted.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import capnp

from hollow.errors import CorruptStateError, SchemaMismatchError

#: Effectively unlimited: state files are immutable and bounds-checked by capnp itself.
TRAVERSAL_LIMIT = 1 << 62
ENVELOPE_FILE = Path(__file__).with_name("hollow.capnp")
#: Where pycapnp keeps ``capnp/schema.capnp`` and ``capnp/c++.capnp`` for ``import "/capnp/..."``.
CAPNP_IMPORT_DIR = str(Path(capnp.__file__).resolve().parent.parent)

_lock = threading.Lock()
_parsers: dict[tuple[str, int, int], tuple[Any, Any]] = {}
_embedded: dict[int, dict[int, Any]] = {}
_envelope: Any = None


def load_schema_file(path: str | os.PathLike[str], imports: Iterable[str] = ()) -> Any:
    """Compile a ``.capnp`` file with a parser of its own and return its module.

    Cached by (real path, mtime, size): the same unchanged file gives the same module.
    """
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_mtime_ns, st.st_size)
    with _lock:
        hit = _parsers.get(key)
        if hit is None:
            parser = capnp.SchemaParser()
            dirs = [os.path.dirname(real), *imports, CAPNP_IMPORT_DIR]
            module = parser.load(real, imports=dirs)
            hit = _parsers[key] = (parser, module)
    return hit[1]


def envelope() -> Any:
    """The module compiled from ``hollow.capnp`` (loaded once per process)."""
    global _envelope
    if _envelope is None:
        _envelope = load_schema_file(ENVELOPE_FILE)
    return _envelope


def _flat_reader_class() -> Any:
    # pycapnp hides _FlatArrayMessageReader (cython.internal); take it from a reader.
    env = envelope()
    msg = env.Section.new_message().to_bytes()
    with env.Section.from_bytes(msg) as root:
        return type(root._parent)


_FlatReader: Any = None


def read_message(buf: Any) -> Any:
    """A message reader over *buf* (8-byte aligned) that pins *buf* for its whole life."""
    global _FlatReader
    if _FlatReader is None:
        _FlatReader = _flat_reader_class()
    return _FlatReader(buf, traversal_limit_in_words=TRAVERSAL_LIMIT)


def node_schema_type() -> Any:
    """The struct schema of ``schema.capnp`` Node, as pycapnp compiled it."""
    return envelope().State.schema.node.schema


def embedded_types(fingerprint: int, nodes: Iterable[bytes], *, what: str) -> dict[int, Any]:
    """Struct schemas by type id, from the compiled nodes a state file carries.

    Loaded once per fingerprint per process, each set through its own SchemaLoader.
    """
    with _lock:
        hit = _embedded.get(fingerprint)
        if hit is not None:
            return hit
        loader = capnp.SchemaLoader()
        node_type = node_schema_type()
        structs: dict[int, Any] = {}
        try:
            readers = [read_message(bytes(b)).get_root(node_type) for b in nodes]
            for node in readers:
                loader.load_dynamic(node)
            for node in readers:
                if node.which() == "struct" and not node.struct.isGroup:
                    structs[node.id] = loader.get(node.id).as_struct()
        except capnp.KjException as e:
            raise CorruptStateError(f"{what}: embedded schema does not load ({e.description})") from e
        structs[-1] = loader  # keep the loader alive as long as its schemas
        _embedded[fingerprint] = structs
        return structs


def user_struct(module: Any, name: str, type_id: int, *, what: str) -> Any:
    """The struct schema named *name* in a reader-supplied schema module, checked against *type_id*."""
    struct = getattr(module, name, None)
    if struct is None or not hasattr(struct, "schema"):
        raise SchemaMismatchError(f"{what}: the schema you passed declares no struct {name!r}")
    schema = struct.schema
    if schema.node.id != type_id:
        raise SchemaMismatchError(
            f"{what}: your {name} has type id {schema.node.id:#x} but the data's {name} is "
            f"{type_id:#x}; they are different types (was the file id or the struct renamed?)"
        )
    return schema

"""Cap'n Proto schemas on the read path: the envelope, embedded schemas, user schemas.

Three pycapnp facts shape this module (docs/pitfalls.md 21, 8 and 9):

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
import re
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import capnp

from hollow.errors import CorruptStateError, InvalidSchemaError, SchemaMismatchError

#: Effectively unlimited: state files are immutable and bounds-checked by capnp itself.
TRAVERSAL_LIMIT = 1 << 62
ENVELOPE_FILE = Path(__file__).with_name("hollow.capnp")
#: Where pycapnp keeps ``capnp/schema.capnp`` and ``capnp/c++.capnp`` for ``import "/capnp/..."``.
CAPNP_IMPORT_DIR = str(Path(capnp.__file__).resolve().parent.parent)

_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # a parent's thread may have held it at fork (docs/pitfalls.md 16)


os.register_at_fork(after_in_child=_after_fork_in_child)
_parsers: dict[tuple[str, int, int], tuple[Any, Any]] = {}
_embedded: dict[int, dict[int, Any]] = {}
_envelope: Any = None


def load_schema_file(path: str | os.PathLike[str], imports: Iterable[str] = (), *, trusted: bool = False) -> Any:
    """Compile a ``.capnp`` file with a parser of its own and return its module.

    Cached by (real path, mtime, size): the same unchanged file gives the same
    module. pycapnp aborts the whole process on a compile error (C++
    ``terminate``; no Python exception), so an untrusted file is first compiled
    in a child process: a bad schema is then an :class:`InvalidSchemaError`
    carrying the compiler's message, not the end of the caller.
    """
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_mtime_ns, st.st_size)
    dirs = [os.path.dirname(real), *imports, CAPNP_IMPORT_DIR]
    with _lock:
        hit = _parsers.get(key)
        if hit is None:
            if not trusted:
                _compile_in_child(real, dirs)
            parser = capnp.SchemaParser()
            module = parser.load(real, imports=dirs)
            hit = _parsers[key] = (parser, module)
    return hit[1]


_COMPILE = "import capnp, sys; capnp.SchemaParser().load(sys.argv[1], imports=sys.argv[2:])"


def _compile_in_child(path: str, dirs: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _COMPILE, path, *dirs], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise InvalidSchemaError(f"schema {path} does not compile: {compile_errors(proc.stderr, path)}")


#: A compiler error in what pycapnp prints as it aborts: ``FILE:LINE[:COL[-COL]]: failed: MESSAGE``.
_FAILED = re.compile(r"(?P<file>[^\s:]+\.capnp):(?P<line>\d+)(?::(?P<col>\d+)(?:-\d+)?)?: failed: (?P<message>.*)")
PARSE_HINT = (
    "the parser names the line where it stopped, which can be after the mistake (a missing ';' is found "
    "at the next line, an unclosed '{' at the end of the file)"
)


def compile_errors(stderr: str, path: str) -> str:
    """The compiler's errors in *stderr*, as ``FILE:LINE: message`` without the C++ around them.

    pycapnp's SchemaParser numbers lines and columns from 0 (docs/pitfalls.md 22):
    they are given here from 1, as editors count them.
    """
    found = []
    for match in _FAILED.finditer(stderr):
        line = int(match["line"]) + 1
        col = f":{int(match['col']) + 1}" if match["col"] else ""
        message = match["message"].strip()
        if message.rstrip(".") == "Parse error":
            message = f"parse error ({PARSE_HINT})"
        found.append(f"{os.path.basename(path)}:{line}{col}: {message}")
    if found:
        return "; ".join(dict.fromkeys(found))
    tail = [ln.strip() for ln in stderr.splitlines() if ln.strip() and "terminate called" not in ln]
    return "; ".join(tail[-3:]) or "the compiler gave no message"


def envelope() -> Any:
    """The module compiled from ``hollow.capnp`` (loaded once per process)."""
    global _envelope
    if _envelope is None:
        _envelope = load_schema_file(ENVELOPE_FILE, trusted=True)
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
            # The check's own reads say which nodes are structs to read records through (not groups).
            records = [node_id for node in readers if (node_id := _check_node(node, what)) is not None]
            for node in readers:
                loader.load_dynamic(node)
            for node_id in records:
                structs[node_id] = loader.get(node_id).as_struct()
        except capnp.KjException as e:
            raise CorruptStateError(f"{what}: embedded schema does not load ({e.description})") from e
        except (UnicodeDecodeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
            raise CorruptStateError(f"{what}: embedded schema is malformed ({type(e).__name__})") from e
        structs[-1] = loader  # keep the loader alive as long as its schemas
        _embedded[fingerprint] = structs
        return structs


def _check_node(node: Any, what: str) -> int | None:
    """Read every part of an embedded node that SchemaLoader will use, so that a malformed one
    raises here. SchemaLoader crashes the process (not an exception) on some malformed nodes:
    names that are not UTF-8, lists of the wrong element size, kinds hollowd never embeds
    (found by fuzzing the envelope). ``to_dict`` is not enough: it skips a union member it
    cannot read.

    Read through pycapnp's ``_get`` and ``_which_str`` rather than attributes and ``which()``:
    the same reads (an unknown union member raises the same KjException), half the cost. A fresh
    process's first open pays this once per schema, about 90 reads for a type of six fields
    (docs/decisions.md §80).

    Returns the node's id if it is a struct that is not a group (one records can be read through),
    else None: what the caller would otherwise read again (docs/decisions.md §110)."""
    get = node._get
    node_id = get("id")
    _ = (get("displayName"), get("displayNamePrefixLength"), get("scopeId"), get("isGeneric"))
    kind = node._which_str()
    if kind == "enum":
        _ = [(e._get("name"), e._get("codeOrder")) for e in get("enum")._get("enumerants")]
        return None
    if kind != "struct":
        raise CorruptStateError(f"{what}: embedded schema holds a {kind} node")
    s = get("struct")._get
    _ = (s("dataWordCount"), s("pointerCount"), s("discriminantCount"), s("discriminantOffset"))
    is_group = s("isGroup")
    for f in s("fields"):
        field = f._get
        _ = (field("name"), field("codeOrder"), field("discriminantValue"), field("ordinal")._which_str())
        if f._which_str() == "group":
            _ = field("group")._get("typeId")
            continue
        slot = field("slot")._get
        _ = (slot("offset"), slot("hadExplicitDefault"), slot("defaultValue")._which_str())
        typ = slot("type")
        which = typ._which_str()
        while which == "list":
            typ = typ._get("list")._get("elementType")
            which = typ._which_str()
        if which in ("struct", "enum"):
            _ = typ._get(which)._get("typeId")
    return None if is_group else node_id


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


# The envelope and the flat-array reader class are the library's own, the same for every dataset:
# they are made as hollow is imported, not by a fresh process's first open (docs/decisions.md §21).
_FlatReader = _flat_reader_class()

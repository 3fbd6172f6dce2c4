"""``hollow``: the operator's and reader's command line (``hollow --help`` says the same).

The read-only commands read /dev/shm directly and need no daemon; ``pin``,
``unpin`` and ``cycle`` ask the daemon over its control socket. Human tables by
default, ``--json`` for scripts; the options shared by every command may come
before or after it. Exit status: see :data:`EXIT_STATUSES`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import hollow
from hollow import layout
from hollow import schema as reader_schema
from hollow.status import namespaces
from hollowd import control, paths

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_CORRUPT, EXIT_NO_DAEMON, EXIT_INCOMPATIBLE, EXIT_DENIED = 0, 1, 2, 3, 4, 5, 6
EXIT_STATUSES = {
    EXIT_OK: "done",
    EXIT_NOT_FOUND: "not found (namespace, version, type or record) or refused",
    EXIT_USAGE: "usage",
    EXIT_CORRUPT: "a damaged file",
    EXIT_NO_DAEMON: "no daemon answers",
    EXIT_INCOMPATIBLE: "an incompatible schema",
    EXIT_DENIED: "no permission to read the namespace's files",
}

_DESCRIPTION = """Read what hollowd publishes in shared memory, and ask the daemon to pin or cycle.

read-only, no daemon needed:
  hollow status [NS]          every namespace (or one: versions, sizes, announced/pinned/latest,
                              leases, followers, and what the daemon says)
  hollow versions NS          the versions and their sizes
  hollow get NS TYPE KEY      one record; a composite key as a JSON list: '[3, 7]'
  hollow inspect NS [VERSION] types, counts, indexes, sizes and the schema
  hollow diff NS A B          records added, removed and changed between two versions
  hollow history NS           the versions present: when, parent, record counts
  hollow schema check FILE [--namespace NS]   compiles? can it read NS's data?

through the daemon's control socket:
  hollow pin NS VERSION       every follower moves to VERSION and stays
  hollow unpin NS             followers move back to the latest version
  hollow cycle NS             run a cycle now
"""


def _epilog() -> str:
    return "exit status:\n" + "\n".join(f"  {code}  {what}" for code, what in EXIT_STATUSES.items())


def version() -> str:
    """The installed package's version."""
    try:
        return metadata.version("hollowd")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _common() -> argparse.ArgumentParser:
    """The options every command takes, before or after the command's name."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("options of every command")
    g.add_argument(
        "--root",
        type=Path,
        default=argparse.SUPPRESS,
        help="shared-memory root (default: $HOLLOW_ROOT or /dev/shm/hollow)",
    )
    g.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    g.add_argument(
        "--socket",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"the daemon's control socket (default: $HOLLOWD_SOCKET or {paths.default_socket()})",
    )
    return common


def _parser() -> argparse.ArgumentParser:
    common = _common()
    ap = argparse.ArgumentParser(
        prog="hollow",
        description=_DESCRIPTION,
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    ap.add_argument("--version", action="version", version=f"hollow {version()}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, helped: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=helped, description=helped, parents=[common])

    p = command("status", "every namespace under the root, or one namespace's versions, leases and followers")
    p.add_argument("namespace", nargs="?")
    p = command("versions", "the versions of a namespace and their sizes")
    p.add_argument("namespace")
    p = command("get", "one record by primary key")
    p.add_argument("namespace")
    p.add_argument("type")
    p.add_argument("key", help="the key: a number or text as is; a JSON list for a composite key: '[3, 7]'")
    p.add_argument("--version", type=int, help="read this version instead of the announced one")
    p = command("inspect", "types, counts, indexes, sizes and schema of a version")
    p.add_argument("namespace")
    p.add_argument("version", nargs="?", type=int)
    p = command("diff", "records added, removed and changed (field by field) between two versions")
    p.add_argument("namespace")
    p.add_argument("a", type=int)
    p.add_argument("b", type=int)
    p.add_argument("--limit", type=int, default=50, help="show at most this many records per type and kind")
    p = command("history", "the versions still present: when, from which parent, how many records")
    p.add_argument("namespace")
    p.add_argument("--store", help="list the versions in this blob store instead (s3://BUCKET/PREFIX or a directory)")
    p = command("schema", "schema tools: check FILE [--namespace NS]")
    p.add_argument("action", choices=["check"])
    p.add_argument("file", type=Path)
    p.add_argument("--namespace", help="also check that FILE can read this namespace's current data")
    p = command("pin", "(daemon) move every follower to VERSION and keep them there")
    p.add_argument("namespace")
    p.add_argument("version", type=int)
    p = command("unpin", "(daemon) move every follower back to the latest version")
    p.add_argument("namespace")
    p = command("cycle", "(daemon) run a cycle of NAMESPACE now")
    p.add_argument("namespace")
    return ap


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    args = _parser().parse_args(argv)
    args.root = getattr(args, "root", None)
    args.json = getattr(args, "json", False)
    args.socket = getattr(args, "socket", None) or paths.default_socket()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _args(argv)
    try:
        return int(_COMMANDS[args.command](args))
    except (hollow.NamespaceNotFoundError, hollow.VersionNotFoundError, hollow.UnknownTypeError) as e:
        print(f"hollow: {e}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except hollow.PermissionDeniedError as e:
        print(f"hollow: {e}", file=sys.stderr)
        return EXIT_DENIED
    except hollow.CorruptStateError as e:
        print(f"hollow: {e}", file=sys.stderr)
        return EXIT_CORRUPT
    except (hollow.InvalidNameError, hollow.InvalidSchemaError, TypeError, ValueError, OSError) as e:
        print(f"hollow: {e}", file=sys.stderr)
        return EXIT_USAGE


def _emit(args: argparse.Namespace, doc: Any, human: str) -> None:
    print(json.dumps(doc, indent=1, default=str) if args.json else human)


def _none(value: Any) -> str:
    """How the tables say "none": ``-`` (JSON says null)."""
    return "-" if value is None else str(value)


def _status(args: argparse.Namespace) -> int:
    if args.namespace is None:
        return _status_all(args)
    st = hollow.status(args.namespace, root=args.root)
    rows = [
        (
            str(v.version),
            f"{v.bytes:,}",
            " ".join(f"+ {what} {n:,}" for what, n in (("base", v.base_bytes), ("mid", v.mid_bytes)) if n) or "-",
            " ".join(f for f, on in (("announced", v.announced), ("pinned", v.pinned), ("latest", v.latest)) if on),
            ", ".join(map(str, v.leases)) or "-",
        )
        for v in st.versions
    ]
    doc = st.to_dict()
    human = (
        f"{st.namespace} at {st.root}: announced {_none(st.announced)}"
        + (f" (pinned; latest {st.latest})" if st.pinned else "")
        + f", {len(st.followers)} following process(es), {st.bytes:,} bytes in all (shared bases and mids once)\n"
        + _table(("version", "bytes", "shares", "", "leases (pids)"), rows)
    )
    answer, why = _daemon_status(args)
    daemon = (answer or {}).get(st.namespace)
    doc["daemon"] = daemon
    if daemon is not None and daemon.get("follows"):  # a namespace that follows another host's store
        human += (
            f"\nfollows {daemon['follows']}: the store is at {daemon['store_version'] or '-'}, this host at "
            f"{daemon['announced'] or '-'}, lag {daemon['lag']} version(s); {daemon['bytes_fetched']:,} bytes fetched, "
            f"{daemon['blobs_applied']} blobs applied, {daemon['failures']} failures"
        )
        if daemon.get("local_pin") is not None:
            human += f"; pinned here to {daemon['local_pin']} (hollow unpin to follow the store again)"
        if daemon.get("last_error"):
            human += f"\nthe last look at the store failed: {daemon['last_error']}"
    elif daemon is not None:
        human += f"\ndaemon: {daemon['cycles_ok']} cycles ok, {daemon['cycles_failed']} failed"
        if daemon.get("last_error"):
            human += f"; the last failed: {daemon['last_error']}"
        if daemon.get("store"):
            human += f"\npublishes to {daemon['store']}" + (
                f"; the last upload failed: {daemon['store_error']}" if daemon.get("store_error") else ""
            )
    elif answer is not None:
        human += f"\ndaemon: the hollowd at {args.socket} does not serve {st.namespace}"
    else:
        human += f"\ndaemon: {why}"
    _emit(args, doc, human)
    return EXIT_OK


def _status_all(args: argparse.Namespace) -> int:
    """Every namespace under the root, one line each (``systemctl status`` with no unit)."""
    root = layout.root_dir(args.root)
    answer, why = _daemon_status(args)
    rows: list[tuple[str, ...]] = []
    docs: list[dict[str, Any]] = []
    now = time.time_ns()
    for name in namespaces(root):
        try:
            st = hollow.status(name, root=root)
        except hollow.Error as e:
            docs.append({"namespace": name, "error": str(e)})
            rows.append((name, "-", "-", "-", "-", f"unreadable: {e}"))
            continue
        announcement = layout.read_announcement(root / name)
        age = (now - announcement.announced_at_ns) / 1e9 if announcement and announcement.announced_at_ns else None
        readers = sorted(set(st.followers).union(*(v.leases for v in st.versions)))
        daemon = (answer or {}).get(name)
        docs.append(
            {
                "namespace": name,
                "announced": st.announced,
                "pinned": st.pinned is not None,
                "bytes": st.bytes,
                "age_seconds": age,
                "readers": readers,
                "daemon": daemon,
            }
        )
        rows.append(
            (
                name,
                _none(st.announced) + (" (pinned)" if st.pinned else ""),
                f"{st.bytes:,}",
                "-" if age is None else _age(age),
                str(len(readers)),
                _daemon_word(daemon, answer is not None),
            )
        )
    human = _table(("namespace", "version", "bytes", "age", "readers", "daemon"), rows) if rows else ""
    human = (human or f"no namespaces under {root}") + ("" if answer is not None else f"\ndaemon: {why}")
    _emit(
        args,
        {"root": str(root), "namespaces": docs, "daemon": None if answer is None else {"socket": str(args.socket)}},
        human,
    )
    return EXIT_OK


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _daemon_word(view: dict[str, Any] | None, daemon_answers: bool) -> str:
    if view is None:
        return "not served" if daemon_answers else "-"
    if view.get("last_error"):
        return "last cycle failed"
    return f"ok, {view['cycles_ok']} cycles"


def _daemon_status(args: argparse.Namespace) -> tuple[dict[str, Any] | None, str]:
    """What the daemon says of its namespaces, by name; or None and why not (none answers)."""
    try:
        answer = control.call(args.socket, {"command": "status"}, timeout=10)
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        return None, f"no hollowd answers at {args.socket} ({reason}; --socket or $HOLLOWD_SOCKET)"
    views = answer.get("namespaces") if answer.get("ok") else None
    if not isinstance(views, dict):
        return None, f"the hollowd at {args.socket} said: {answer.get('error')}"
    return views, ""


def _versions(args: argparse.Namespace) -> int:
    st = hollow.status(args.namespace, root=args.root)
    doc = [{"version": v.version, "bytes": v.bytes, "announced": v.announced} for v in st.versions]
    rows = [(str(v.version), f"{v.bytes:,}", "*" if v.announced else "") for v in st.versions]
    _emit(args, doc, _table(("version", "bytes", "announced"), rows))
    return EXIT_OK


def _get(args: argparse.Namespace) -> int:
    with hollow.open(args.namespace, root=args.root, follow=False) as ds:
        snap = ds.attach(args.version) if args.version else ds.snapshot()
        with snap:
            view = snap[args.type]
            record = view.get(_key(view, args.key))
            if record is None:
                print(f"hollow: {args.type} {args.key!r} not found in version {snap.version}", file=sys.stderr)
                return EXIT_NOT_FOUND
            doc = record.to_dict()
            _emit(args, {"version": snap.version, "type": args.type, "record": doc}, _record(doc))
    return EXIT_OK


def _key(view: hollow.TypeView, text: str) -> Any:
    """The command line's key as the type's primary key wants it."""
    types = view.primary.key_types
    if len(types) > 1:
        fields = ", ".join(view.primary.fields)
        example = json.dumps(
            [_EXAMPLES[t] if t != layout.KEY_INT else (3, 7, 9, 11)[i % 4] for i, t in enumerate(types)]
        )
        try:
            parts = json.loads(text)
        except ValueError:
            parts = None
        if not isinstance(parts, list) or len(parts) != len(types):
            raise ValueError(
                f"{view.name} has a composite key of {len(types)} fields ({fields}): give them as a JSON list "
                f"in that order, quoted for the shell, e.g. '{example}'; got {text!r}"
            )
        return tuple(_one(t, p) for t, p in zip(types, parts, strict=True))
    return _one(types[0], text)


_EXAMPLES = {layout.KEY_INT: 3, layout.KEY_TEXT: "a", layout.KEY_BOOL: True, layout.KEY_DATA: "00ff"}


def _one(key_type: int, value: Any) -> Any:
    if key_type == layout.KEY_INT:
        return int(value)
    if key_type == layout.KEY_BOOL:
        return value in (True, "true", "1", 1)
    if key_type == layout.KEY_DATA:
        return bytes.fromhex(value) if isinstance(value, str) else bytes(value)
    return str(value)


def _inspect(args: argparse.Namespace) -> int:
    with hollow.open(args.namespace, root=args.root, follow=False) as ds:
        snap = ds.attach(args.version) if args.version else ds.snapshot()
        with snap:
            types: list[dict[str, Any]] = []
            for name in snap.types:
                view = snap[name]
                types.append(
                    {
                        "name": name,
                        "records": len(view),
                        "changed_since_base": len(view.overlay.ordinals) if view.overlay is not None else None,
                        "primary_key": list(view.primary.fields),
                        "indexes": [list(ix.fields) for ix in view.indexes],
                    }
                )
            path = ds.dir / layout.state_name(snap.version)
            base = snap.base
            doc = {
                "namespace": args.namespace,
                "version": snap.version,
                "bytes": path.stat().st_size,
                "base": None if base is None else {"version": base[0], "bytes": base[1]},
                "published_at_ns": snap.published_at_ns,
                "types": types,
                "schema": snap.schema_source,
            }
    rows = [
        (t["name"], f"{t['records']:,}", ", ".join(t["primary_key"]), "; ".join(", ".join(i) for i in t["indexes"]))
        for t in types
    ]
    shares = "" if base is None else f", on the base of version {base[0]} ({base[1]:,} bytes, shared)"
    human = (
        f"{args.namespace} version {doc['version']}, {doc['bytes']:,} bytes{shares}\n"
        + _table(("type", "records", "primary key", "indexes"), rows)
        + "\n\n"
        + str(doc["schema"]).rstrip()
    )
    _emit(args, doc, human)
    return EXIT_OK


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in (header, *rows)]
    return "\n".join(lines)


def _record(doc: dict[str, Any], indent: str = "") -> str:
    lines = []
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"{indent}{k}:")
            lines.append(_record(v, indent + "  "))
        else:
            lines.append(f"{indent}{k}: {v}")
    return "\n".join(lines)


def _diff(args: argparse.Namespace) -> int:
    with (
        hollow.open(args.namespace, root=args.root, follow=False) as ds,
        ds.attach(args.a) as a,
        ds.attach(args.b) as b,
    ):
        doc: dict[str, Any] = {"namespace": args.namespace, "a": args.a, "b": args.b, "types": {}}
        lines = [f"{args.namespace}: version {args.a} -> {args.b}"]
        for name in sorted(set(a.types) | set(b.types)):
            before = _by_key(a[name]) if name in a.types else {}
            after = _by_key(b[name]) if name in b.types else {}
            added = [k for k in after if k not in before]
            removed = [k for k in before if k not in after]
            changed = {k: _fields_changed(before[k], after[k]) for k in after if k in before and before[k] != after[k]}
            doc["types"][name] = {
                "added": [_jsonable(k) for k in added],
                "removed": [_jsonable(k) for k in removed],
                "changed": {json.dumps(_jsonable(k)): c for k, c in changed.items()},
            }
            lines.append(f"{name}: {len(added)} added, {len(removed)} removed, {len(changed)} changed")
            lines += [f"  + {k!r}" for k in added[: args.limit]]
            lines += [f"  - {k!r}" for k in removed[: args.limit]]
            for k, fields in list(changed.items())[: args.limit]:
                lines.append(f"  ~ {k!r}: " + "; ".join(f"{f}: {o!r} -> {n!r}" for f, (o, n) in fields.items()))
    _emit(args, doc, "\n".join(lines))
    return EXIT_OK


def _by_key(view: hollow.TypeView) -> dict[Any, dict[str, Any]]:
    fields = view.primary.fields
    out = {}
    for record in view:
        d = record.to_dict()
        out[d.get(fields[0]) if len(fields) == 1 else tuple(d.get(f) for f in fields)] = d
    return out


def _fields_changed(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {f: (old.get(f), new.get(f)) for f in sorted(set(old) | set(new)) if old.get(f) != new.get(f)}


def _jsonable(key: Any) -> Any:
    return list(key) if isinstance(key, tuple) else key


def _store_history(args: argparse.Namespace) -> int:
    """The versions a blob store holds (an operator's LIST of its headers; followers never list)."""
    from hollowd import blobs, replication  # noqa: PLC0415 - boto3 loads only for this command

    store = blobs.open_store(args.store)
    try:
        versions = sorted(int(k.rsplit("/", 1)[1]) for k in store.list("headers/") if k.rsplit("/", 1)[1].isdigit())
        current, _ = replication.read_announcement(store)
        doc, rows = [], []
        for v in versions:
            h = replication.read_header(store, v)
            if h is None:
                continue
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.published_at_ns / 1e9))
            mark = "announced" if current is not None and current.version == v else ""
            if mark and current is not None and current.pinned:
                mark += " (pinned)"
            doc.append({**h.__dict__, "announced": bool(mark)})
            sizes = ", ".join(f"{k} {b['size']:,}" for k, b in h.blobs.items())
            rows.append((str(v), when, str(h.parent or "-"), sizes, mark))
    finally:
        store.close()
    _emit(args, doc, _table(("version", "published", "parent", "blobs (bytes stored)", ""), rows))
    return EXIT_OK


def _history(args: argparse.Namespace) -> int:
    if args.store:
        return _store_history(args)
    st = hollow.status(args.namespace, root=args.root)
    rows, doc = [], []
    with hollow.open(args.namespace, root=args.root, follow=False) as ds:
        for v in st.versions:
            try:
                with ds.attach(v.version) as snap:
                    counts = {t: len(snap[t]) for t in snap.types}
                    published = snap.published_at_ns
                    parent: int | None = snap.parent_version
            except hollow.Error as e:
                doc.append({"version": v.version, "error": str(e)})
                rows.append((str(v.version), "-", "-", f"unreadable: {e}"))
                continue
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(published / 1e9))
            parent = parent or None  # a first version has none (0 in the file)
            doc.append({"version": v.version, "published_at_ns": published, "parent": parent, "records": counts})
            rows.append((str(v.version), when, _none(parent), ", ".join(f"{t} {n:,}" for t, n in counts.items())))
    _emit(args, doc, _table(("version", "published", "parent", "records"), rows))
    return EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    """Compile FILE (in a child process: a bad schema aborts pycapnp) and, with --namespace, check evolution."""
    module = reader_schema.load_schema_file(args.file)
    structs = {n: getattr(module, n) for n in dir(module) if hasattr(getattr(module, n), "schema")}
    problems: list[str] = []
    if args.namespace:
        with hollow.open(args.namespace, root=args.root, follow=False) as ds, ds.snapshot() as snap:
            for type_name in snap.types:
                problems += _evolution(type_name, snap[type_name], structs.get(type_name))
    doc = {"file": str(args.file), "structs": sorted(structs), "problems": problems}
    human = f"{args.file}: compiles; structs: {', '.join(sorted(structs)) or 'none'}"
    if args.namespace:
        human += "\n" + ("\n".join(f"  incompatible: {p}" for p in problems) or f"  can read {args.namespace}'s data")
    _emit(args, doc, human)
    return EXIT_INCOMPATIBLE if problems else EXIT_OK


def _evolution(name: str, view: hollow.TypeView, new: Any) -> list[str]:
    """Cap'n Proto's rules: a struct keeps its id; a field keeps its ordinal's type; none disappears."""
    if new is None:
        return [f"{name}: no struct of that name in the new schema"]
    old_schema = view.schema
    if old_schema.node.id != new.schema.node.id:
        return [f"{name}: type id {new.schema.node.id:#x} differs from the data's {old_schema.node.id:#x}"]
    new_fields = {f.proto.ordinal.explicit: f.proto for f in new.schema.fields_list if f.proto.which() == "slot"}
    out = []
    for f in old_schema.fields_list:
        proto = f.proto
        if proto.which() != "slot":
            continue
        ordinal = proto.ordinal.explicit
        other = new_fields.get(ordinal)
        if other is None:
            out.append(f"{name}.{proto.name} (@{ordinal}) was removed")
        elif other.slot.type.which() != proto.slot.type.which():
            out.append(
                f"{name}.{proto.name} (@{ordinal}) changes type {proto.slot.type.which()} -> {other.slot.type.which()}"
            )
    return out


def _daemon(args: argparse.Namespace) -> int:
    """pin, unpin, cycle: requests to the daemon over its control socket."""
    request: dict[str, Any] = {"command": args.command, "namespace": args.namespace}
    if args.command == "pin":
        request["version"] = args.version
    try:
        answer = control.call(args.socket, request)
    except OSError as e:
        print(
            f"hollow: no hollowd answers at {args.socket} ({e.strerror or e}); is it running? (--socket)",
            file=sys.stderr,
        )
        return EXIT_NO_DAEMON
    if not answer.get("ok"):
        print(f"hollow: {answer.get('error')}", file=sys.stderr)
        return int(answer.get("code", 1))
    human = f"{answer['namespace']}: announced {_none(answer['announced'])}" + (
        f" (pinned; latest {answer['latest']})" if answer.get("pinned") else ""
    )
    _emit(args, answer, human)
    return EXIT_OK


_COMMANDS = {
    "status": _status,
    "versions": _versions,
    "get": _get,
    "inspect": _inspect,
    "diff": _diff,
    "history": _history,
    "schema": _schema,
    "pin": _daemon,
    "unpin": _daemon,
    "cycle": _daemon,
}

if __name__ == "__main__":
    sys.exit(main())

"""Start-up and reload checks: can this configuration work? Asked before anything is created.

Every problem is a :class:`~hollowd.errors.ConfigError` (exit status 78, which
systemd's ``RestartPreventExitStatus=`` honours) that names where the value
came from (``FILE:LINE: key``, a flag, an environment variable or the default)
and how to fix it; never a traceback, and nothing is made on disk before the
whole configuration has passed (docs/decisions.md §20).

* paths: the shared-memory root, the state directory and the control socket's
  directory exist as directories this user can write, or can be made; the
  socket's path fits ``sun_path``; ``socket_group`` exists;
* per namespace: the schema compiles, every type it names is a struct there,
  every primary-key and index field is a field of it; a file source's
  directory exists; ``module:function`` sources and validators import.
"""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

from hollow import schema as reader_schema
from hollow.errors import InvalidSchemaError
from hollowd.config import Config, NamespaceConfig
from hollowd.errors import ConfigError, Error
from hollowd.schema import NamespaceSchema, _index_spec
from hollowd.validators import resolve

#: sun_path is 108 bytes on Linux, with its terminating NUL (unix(7)).
SOCKET_PATH_MAX = 107

_FIXES = {
    "root": "choose another with --root, `root` in [daemon] or $HOLLOW_ROOT (and give readers the same root)",
    "state_dir": "choose another with --state-dir or `state_dir` in [daemon]",
    "control_socket": "choose another with --socket, `control_socket` in [daemon] or $HOLLOWD_SOCKET",
}


def check(cfg: Config) -> None:
    """Raise :class:`ConfigError` for the first thing in *cfg* that cannot work."""
    check_paths(cfg)
    for ns in cfg.namespaces.values():
        check_namespace(cfg, ns)


def check_paths(cfg: Config) -> None:
    _writable_dir(cfg, "root", cfg.root)
    for ns in cfg.namespaces:
        own = cfg.root / ns
        if own.exists() and not os.access(own, os.W_OK | os.X_OK):
            raise _path_error(cfg, "root", own, _denied(own, "its namespace directory is not writable by this user"))
    _writable_dir(cfg, "state_dir", cfg.state_dir)
    sock = cfg.control_socket
    if len(os.fsencode(sock)) > SOCKET_PATH_MAX:
        raise _path_error(
            cfg,
            "control_socket",
            sock,
            f"{len(os.fsencode(sock))} bytes is longer than a socket path may be ({SOCKET_PATH_MAX})",
        )
    _writable_dir(cfg, "control_socket", sock.parent, of=sock)
    if cfg.socket_group:
        try:
            grp.getgrnam(cfg.socket_group)
        except KeyError:
            raise cfg.fail(
                "daemon.socket_group", f"no group {cfg.socket_group!r} on this host (getent group)"
            ) from None


def check_namespace(cfg: Config, ns: NamespaceConfig) -> None:
    prefix = f"namespaces.{ns.name}"
    if ns.follow:
        return  # its schema, keys and indexes come with the versions it follows (docs/decisions.md §50)
    try:
        module = reader_schema.load_schema_file(ns.schema)
    except FileNotFoundError:
        raise cfg.fail(f"{prefix}.schema", f"{ns.schema}: no such file") from None
    except OSError as e:
        raise cfg.fail(f"{prefix}.schema", f"{ns.schema}: cannot read it ({e.strerror})") from None
    except InvalidSchemaError as e:
        raise cfg.fail(f"{prefix}.schema", str(e)) from None
    structs = sorted(n for n in dir(module) if hasattr(getattr(module, n), "schema") and not n.startswith("_"))
    for t in ns.types.values():
        struct = getattr(module, t.name, None)
        if struct is None or not hasattr(getattr(struct, "schema", None), "fieldnames"):
            raise cfg.fail(
                f"{prefix}.types.{t.name}",
                f"schema {ns.schema} declares no struct {t.name!r}; it declares: {', '.join(structs) or 'none'}",
            )
        try:
            _index_spec(struct.schema, t.name, t.primary_key, unique=True)
        except Error as e:
            raise cfg.fail(f"{prefix}.types.{t.name}.primary_key", str(e)) from None
        for ix in t.indexes:
            try:
                _index_spec(struct.schema, t.name, ix, unique=False)
            except Error as e:
                raise cfg.fail(f"{prefix}.types.{t.name}.indexes", str(e)) from None
    try:
        NamespaceSchema(
            ns.schema,
            {t.name: list(t.primary_key) for t in ns.types.values()},
            {t.name: [list(ix) for ix in t.indexes] for t in ns.types.values()},
        )
    except Error as e:
        raise cfg.fail(f"{prefix}.schema", str(e)) from None
    _check_code(cfg, ns)


def _check_code(cfg: Config, ns: NamespaceConfig) -> None:
    """The source and the custom validators: a directory that exists, callables that import."""
    prefix = f"namespaces.{ns.name}"
    if ns.source_is_callable:
        try:
            resolve(ns.source)
        except Exception as e:  # noqa: BLE001 - whatever importing it raises, it cannot run
            raise cfg.fail(f"{prefix}.source", _why(e)) from None
    else:
        source = Path(ns.source)
        directory = source if source.is_dir() else source.parent
        if not directory.is_dir():
            raise cfg.fail(
                f"{prefix}.source", f"{directory}: no such directory (the source is watched there; make it first)"
            )
    for ref in ns.validators.get("custom", ()):
        try:
            resolve(ref)
        except Exception as e:  # noqa: BLE001 - whatever importing it raises, it cannot run
            raise cfg.fail(f"{prefix}.validators.custom", _why(e)) from None


def _why(e: Exception) -> str:
    return str(e) if isinstance(e, Error) else f"importing it raised {type(e).__name__}: {e}"


def _writable_dir(cfg: Config, setting: str, path: Path, *, of: Path | None = None) -> None:
    """*path* is a directory this user may write, or the nearest existing ancestor is (so it can be made).

    *of*: the file the setting names, when *path* is its directory (the control socket's).
    """
    probe = path
    while True:
        try:
            st = os.stat(probe)
        except (FileNotFoundError, NotADirectoryError):
            if probe.parent == probe:
                raise _path_error(cfg, setting, of or path, "nothing of it exists") from None
            probe = probe.parent
            continue
        except OSError as e:
            raise _path_error(cfg, setting, of or path, f"cannot look at {probe} ({e.strerror})") from None
        break
    named = path if of is None else of
    here = "" if of is None else f"its directory {path} "
    if not stat.S_ISDIR(st.st_mode):
        what = "is a file, not a directory" if probe == path else f"cannot be made: {probe} is not a directory"
        raise _path_error(cfg, setting, named, here + what)
    if os.statvfs(probe).f_flag & os.ST_RDONLY:
        why = "is" if probe == path else f"cannot be made: {probe} is"
        raise _path_error(cfg, setting, named, f"{here}{why} on a read-only filesystem")
    if not os.access(probe, os.W_OK | os.X_OK):
        why = "is not writable by this user" if probe == path else f"cannot be made: {probe} is not writable"
        raise _path_error(cfg, setting, named, here + _denied(probe, why))


def _denied(path: Path, why: str) -> str:
    st = os.stat(path)
    return f"{why} (owned by uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}; this is uid {os.geteuid()})"


def _path_error(cfg: Config, setting: str, path: Path, why: str) -> ConfigError:
    return ConfigError(f"{cfg.origin(setting)} {path}: {why}; {_FIXES[setting]}")

"""The daemon's configuration: a TOML file (stdlib ``tomllib``), each setting declared once.

Every setting is a :class:`Setting` with its name, default, check and
description; parsing, validation and the README's configuration reference all
come from those declarations (``python -m hollowd.config`` prints the
reference). A bad file fails at start with a :class:`ConfigError` that names the
file, the line (where it can be found) and the key, and says how to fix it.

Layout::

    [daemon]                      # settings of the daemon as a whole
    root = "/dev/shm/hollow"

    [namespaces.<name>]           # one table per namespace
    schema = "schemas/movies.capnp"                # relative paths are the file's
    source = "feeds.movies:populate"               # or a path to JSON, JSON Lines or CSV
    # delivers = "changes"                         # a change log, or module:function(cursor)
    [namespaces.<name>.types.<Type>]
    primary_key = ["id"]
    indexes = [["genre"]]
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hollow import layout
from hollowd import paths
from hollowd.errors import ConfigError

# --- checks ---------------------------------------------------------------------------
# Each takes the raw TOML value and returns the checked one, or raises ValueError
# with the reason (the caller adds the file, line and key).


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    return v


def _path(v: Any) -> Path:
    return Path(_text(v)).expanduser()


def _optional_path(v: Any) -> Path | None:
    return None if v == "" else _path(v)


def _positive_int(v: Any) -> int:
    if type(v) is not int or v < 1:
        raise ValueError(f"expected a whole number of at least 1, got {v!r}")
    return v


def _count(v: Any) -> int:
    if type(v) is not int or v < 0:
        raise ValueError(f"expected a whole number of at least 0, got {v!r}")
    return v


def _port(v: Any) -> int:
    if type(v) is not int or not 0 <= v <= 65535:
        raise ValueError(f"expected a TCP port 1-65535, or 0 for off, got {v!r}")
    return v


def _mode(v: Any) -> int:
    if type(v) is not int or not 0 <= v <= 0o777:
        raise ValueError(f"expected permission bits such as 0o640 (TOML octal), got {v!r}")
    return v


def _seconds(v: Any) -> float:
    if type(v) not in (int, float) or not math.isfinite(v) or v <= 0:  # TOML has nan and inf
        raise ValueError(f"expected a positive, finite number of seconds, got {v!r}")
    return float(v)


def _percent(v: Any) -> float:
    if type(v) not in (int, float) or not 0 <= v <= 100:  # (nan fails both comparisons)
        raise ValueError(f"expected a percentage 0-100, got {v!r}")
    return float(v)


_CALLABLE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def _callable_ref(v: Any) -> str:
    if not isinstance(v, str) or not _CALLABLE.fullmatch(v):
        raise ValueError(f"expected 'module:function', got {v!r}")
    return v


def _fields(v: Any) -> tuple[str, ...]:
    if isinstance(v, str) and v:
        return (v,)
    if not isinstance(v, list) or not v or not all(isinstance(f, str) for f in v):
        raise ValueError(f"expected a field name or a list of field names, got {v!r}")
    return tuple(v)


def _index_list(v: Any) -> tuple[tuple[str, ...], ...]:
    if not isinstance(v, list):
        raise ValueError(f"expected a list of indexes (each a field name or a list of names), got {v!r}")
    return tuple(_fields(ix) for ix in v)


def _per_type_number(check: Callable[[Any], Any]) -> Callable[[Any], dict[str, Any]]:
    def per_type(v: Any) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise ValueError(f"expected a table of type name = value, got {v!r}")
        return {str(k): check(x) for k, x in v.items()}

    return per_type


def _callables(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise ValueError(f"expected a list of 'module:function', got {v!r}")
    return tuple(_callable_ref(x) for x in v)


def _flag(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


def _one_of(*choices: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in choices:
            raise ValueError(f"expected one of {', '.join(map(repr, choices))}, got {v!r}")
        return str(v)

    return check


# --- declarations ------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting: where it lives, its default, how it is checked, what it means."""

    section: str  # "daemon", "namespace", "type" or "validators"
    name: str
    default: Any
    check: Callable[[Any], Any]
    help: str
    required: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "daemon",
        "root",
        None,
        _path,
        "Shared-memory directory the state files are published in (`--root`). Default: `$HOLLOW_ROOT`, "
        "else `/dev/shm/hollow`, the readers' rule.",
    ),
    Setting(
        "daemon",
        "state_dir",
        None,
        _path,
        "Durable directory for the latest good state, the version counter and any pin (survives reboots; "
        "`--state-dir`). Default: `/var/lib/hollowd` as root, else `$XDG_STATE_HOME/hollowd` "
        "(`~/.local/state/hollowd`).",
    ),
    Setting(
        "daemon",
        "control_socket",
        None,
        _path,
        "Unix socket the `hollow` CLI talks to (`--socket`). Default: `$HOLLOWD_SOCKET`, else "
        "`/run/hollowd/control.sock` as root, else `$XDG_RUNTIME_DIR/hollowd/control.sock` "
        "(`control.sock` in the state directory without `XDG_RUNTIME_DIR`).",
    ),
    Setting(
        "daemon",
        "socket_mode",
        0o600,
        _mode,
        "Permission bits of the control socket (owner only: control is for operators, not readers).",
    ),
    Setting(
        "daemon",
        "socket_group",
        "",
        _text,
        "Operator group: its members may use the control socket (pin, unpin, cycle, status), and it owns "
        "the socket with read and write; empty: only root and the daemon's user.",
    ),
    Setting("daemon", "metrics_port", 0, _port, "Prometheus metrics on this loopback port; 0 turns them off."),
    Setting(
        "daemon",
        "log_level",
        "info",
        _one_of("debug", "info", "warning", "error"),
        "Least severe log level written to stderr (journald).",
    ),
    Setting("namespace", "schema", None, _path, "The namespace's Cap'n Proto schema file.", required=True),
    Setting(
        "namespace",
        "source",
        None,
        _text,
        "Where records come from: 'module:function' (a populate callable), or a JSON, JSON Lines or CSV "
        "file or directory, watched for changes.",
        required=True,
    ),
    Setting(
        "namespace",
        "delivers",
        "records",
        _one_of("records", "changes"),
        "What the source gives each cycle: 'records' (all of them), or 'changes' since a cursor kept in the "
        'state directory: a file is then a change log (JSON Lines of {"upsert": record} and '
        "{\"remove\": key}), a callable is 'module:function(cursor) -> (changes, new_cursor)'.",
    ),
    Setting(
        "namespace",
        "format",
        "auto",
        _one_of("auto", "json", "jsonl", "csv"),
        "Format of a file source: auto (by extension), json, jsonl, csv; a change log is always jsonl.",
    ),
    Setting(
        "namespace",
        "type",
        "",
        _text,
        "Record type of the records or changes that do not name theirs (needed with several types).",
    ),
    Setting("namespace", "interval", 300.0, _seconds, "Seconds between cycles of a callable source."),
    Setting(
        "namespace",
        "debounce",
        0.5,
        _seconds,
        "Seconds a file source must stay unchanged before a cycle; a change log's first new lines after a quiet "
        "spell are applied at once, later ones at most once a debounce.",
    ),
    Setting(
        "namespace",
        "allow_empty",
        False,
        _flag,
        "Whether a records source may give no records at all (otherwise an empty read is refused and the "
        "last good version stays).",
    ),
    Setting("namespace", "retain", 5, _positive_int, "How many versions to keep besides announced, pinned and leased."),
    Setting(
        "namespace",
        "max_versions",
        20,
        _positive_int,
        "The most versions present at once, leased ones included: past it the oldest leased ones are "
        "removed anyway (their holders keep what they mapped) and the PIDs holding them are logged.",
    ),
    Setting("namespace", "mode", 0o640, _mode, "Permission bits of published files (readers need read access)."),
    Setting(
        "namespace",
        "compact_percent",
        5.0,
        _percent,
        "A version whose changes since its base pass this share of the base's records gets a new base "
        "(compacted in the background). A stream of small changes gets one sooner: once the versions since "
        "the base have rewritten about three changes a base record (docs/decisions.md §18).",
    ),
    Setting(
        "namespace",
        "compact_min",
        1024,
        _count,
        "Changes since the base below which no compaction starts, whatever their share or cost.",
    ),
    Setting(
        "namespace",
        "publish_to",
        "",
        _text,
        "A blob store (s3://BUCKET/PREFIX, or a directory) this namespace's versions are left in for followers "
        "on other hosts; a fresh host restores from it. Empty: this host only.",
    ),
    Setting(
        "namespace",
        "snapshot_every",
        16,
        _positive_int,
        "With publish_to: a snapshot blob every this many versions (and after every compaction); a delta always.",
    ),
    Setting(
        "namespace",
        "store_retain",
        100,
        _count,
        "With publish_to: the newest versions whose blobs stay in the store; older ones are deleted (checked "
        "after each snapshot), except what a follower needs to reach a kept version or the store's pin: the "
        "newest snapshot at or before it, and the chain from there. 0: keep every version for ever.",
    ),
    Setting(
        "namespace",
        "follow",
        "",
        _text,
        "Follow another host's producer through its blob store (s3://BUCKET/PREFIX, or a directory) instead "
        "of reading a source: the schema, keys and indexes come with the versions, so follow, watch_interval, "
        "retain and mode are the only settings of such a namespace.",
    ),
    Setting(
        "namespace",
        "watch_interval",
        1.0,
        _seconds,
        "With follow: seconds between looks at the store's announcement (a conditional GET).",
    ),
    Setting("type", "primary_key", None, _fields, "Field, or list of fields, that identify a record.", required=True),
    Setting("type", "indexes", (), _index_list, "Secondary hash indexes: a list of field names or lists of names."),
    Setting(
        "validators",
        "min_records",
        {},
        _per_type_number(_positive_int),
        "Per type: the fewest records a version may have.",
    ),
    Setting(
        "validators",
        "max_change_percent",
        {},
        _per_type_number(_percent),
        "Per type: the most the record count may change from one version to the next, in percent.",
    ),
    Setting("validators", "custom", (), _callables, "Your validators: 'module:function' taking the candidate state."),
)

_BY_SECTION: dict[str, dict[str, Setting]] = {}
for _s in SETTINGS:
    _BY_SECTION.setdefault(_s.section, {})[_s.name] = _s


@dataclass(frozen=True)
class TypeConfig:
    name: str
    primary_key: tuple[str, ...]
    indexes: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class NamespaceConfig:
    name: str
    schema: Path
    source: str
    types: dict[str, TypeConfig]
    delivers: str = "records"
    format: str = "auto"
    type: str = ""
    interval: float = 300.0
    debounce: float = 0.5
    retain: int = 5
    max_versions: int = 20
    mode: int = 0o640
    compact_percent: float = 5.0
    compact_min: int = 1024
    allow_empty: bool = False
    validators: dict[str, Any] = field(default_factory=dict)
    publish_to: str = ""
    snapshot_every: int = 16
    store_retain: int = 100
    follow: str = ""
    watch_interval: float = 1.0

    @property
    def delivers_changes(self) -> bool:
        """A source of changes (a change log, or an incremental callable), applied through run_incremental."""
        return self.delivers == "changes"

    @property
    def source_is_callable(self) -> bool:
        """A 'module:function' source (anything else is a path, made absolute when loaded)."""
        return bool(_CALLABLE.fullmatch(self.source))


@dataclass(frozen=True)
class Config:
    path: Path | None
    root: Path
    state_dir: Path
    control_socket: Path
    socket_mode: int
    socket_group: str
    metrics_port: int
    log_level: str
    namespaces: dict[str, NamespaceConfig]
    text: str = field(default="", repr=False, compare=False)
    #: where each of root, state_dir and control_socket came from, for messages ("--root", "$HOLLOW_ROOT" ...)
    origins: dict[str, str] = field(default_factory=dict, compare=False)

    def fail(self, key: str, why: str) -> ConfigError:
        """A :class:`ConfigError` naming the file, the line that sets *key* (a dotted path) and *key*."""
        return _Reader(self.path, self.text).fail(key, why)

    def origin(self, setting: str) -> str:
        """Where the daemon setting *setting* came from, as a message should say it."""
        return self.origins.get(setting) or f"{_Reader(self.path, self.text).where(f'daemon.{setting}')}: {setting}"


class _Reader:
    """Checks one parsed file against the declarations, naming file, line and key on error."""

    def __init__(self, path: Path | None, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def fail(self, key: str, why: str) -> ConfigError:
        return ConfigError(f"{self.where(key)}: {key}: {why}")

    def where(self, key: str) -> str:
        """``FILE:LINE`` of *key*, or the file alone when no line sets it."""
        if self.path is None:
            return "the bundled example's configuration (no --config)"
        line = self._line_of(key)
        return f"{self.path}:{line}" if line else str(self.path)

    def _line_of(self, key: str) -> int | None:
        """The line that sets *key* (a dotted path): its own table header, or ``name =`` in its table."""
        parts = key.split(".")
        dotted = r"\s*\.\s*".join(map(re.escape, parts))
        own = re.compile(r"^\s*\[\s*" + dotted + r"\s*[\].]")
        for n, raw in enumerate(self.lines, 1):
            if own.match(raw):
                return n
        name, table = parts[-1], parts[:-1]
        header = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(map(re.escape, table)) + r"\s*\]") if table else None
        in_table = header is None
        for n, raw in enumerate(self.lines, 1):
            if raw.lstrip().startswith("["):
                in_table = bool(header and header.match(raw))
                continue
            if in_table and re.match(rf"^\s*{re.escape(name)}\s*=", raw):
                return n
        if header is not None:  # not set here (missing): point at its table
            for n, raw in enumerate(self.lines, 1):
                if header.match(raw):
                    return n
        return None

    def section(self, section: str, table: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        known = _BY_SECTION[section]
        for key in table:
            if key not in known:
                raise self.fail(f"{prefix}.{key}", f"unknown setting; known here: {', '.join(sorted(known))}")
        out: dict[str, Any] = {}
        for name, setting in known.items():
            if name not in table:
                if setting.required:
                    raise self.fail(f"{prefix}.{name}", f"missing; {setting.help}")
                out[name] = setting.default
                continue
            try:
                out[name] = setting.check(table[name])
            except ValueError as e:
                raise self.fail(f"{prefix}.{name}", str(e)) from None
        return out


def load(path: str | os.PathLike[str] | None) -> Config:
    """Read and check the configuration at *path*; None gives the built-in defaults and no namespaces."""
    if path is None:
        return parse("", None)
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the configuration ({e.strerror})") from e
    return parse(text, p)


def parse(text: str, path: Path | None = None) -> Config:
    """Check configuration *text* (from *path*, for messages and relative paths)."""
    reader = _Reader(path, text)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path or '<config>'}: not valid TOML: {e}") from e
    for key in doc:
        if key not in ("daemon", "namespaces"):
            raise reader.fail(key, "unknown table; the file has [daemon] and [namespaces.<name>] tables")
    base = path.parent if path else Path.cwd()
    daemon = reader.section("daemon", _table(reader, doc, "daemon"), "daemon")
    namespaces: dict[str, NamespaceConfig] = {}
    for name, table in _table(reader, doc, "namespaces").items():
        namespaces[name] = _namespace(reader, name, table, base)
    origins = {}
    for setting, env in (
        ("root", "HOLLOW_ROOT"),
        ("state_dir", "XDG_STATE_HOME"),
        ("control_socket", "HOLLOWD_SOCKET"),
    ):
        if daemon[setting] is None:
            from_env = os.environ.get(env) and not (setting == "state_dir" and paths.as_root())
            origins[setting] = f"${env}" if from_env else f"the default {setting} for this user"
    state_dir = base / daemon["state_dir"] if daemon["state_dir"] is not None else paths.default_state_dir()
    if daemon["control_socket"] is not None:
        socket_path = base / daemon["control_socket"]
    elif not paths.as_root() and not os.environ.get("HOLLOWD_SOCKET") and not os.environ.get("XDG_RUNTIME_DIR"):
        socket_path = state_dir / "control.sock"  # follows a state directory set in the file
    else:
        socket_path = paths.default_socket()
    return Config(
        path=path,
        root=base / daemon["root"] if daemon["root"] is not None else paths.default_root(),
        state_dir=state_dir,
        control_socket=socket_path,
        socket_mode=daemon["socket_mode"],
        socket_group=daemon["socket_group"],
        metrics_port=daemon["metrics_port"],
        log_level=daemon["log_level"],
        namespaces=namespaces,
        text=text,
        origins=origins,
    )


def _table(reader: _Reader, doc: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise reader.fail(key, "expected a table")
    return value


def _namespace(reader: _Reader, name: str, table: Any, base: Path) -> NamespaceConfig:
    prefix = f"namespaces.{name}"
    try:
        layout.check_namespace(name)
    except ValueError as e:
        raise reader.fail(prefix, str(e)) from None
    if not isinstance(table, dict):
        raise reader.fail(prefix, "expected a table")
    if "follow" in table:
        return _follower(reader, name, table, base)
    return _producing(reader, name, table, base)


def _producing(reader: _Reader, name: str, table: Any, base: Path) -> NamespaceConfig:
    prefix = f"namespaces.{name}"
    types_table = table.get("types")
    validators_table = table.get("validators", {})
    plain = {k: v for k, v in table.items() if k not in ("types", "validators")}
    settings = reader.section("namespace", plain, prefix)
    if not isinstance(types_table, dict) or not types_table:
        raise reader.fail(f"{prefix}.types", "declare at least one [namespaces.NAME.types.TYPE] with its primary_key")
    types = {}
    for type_name, t in types_table.items():
        if not isinstance(t, dict):
            raise reader.fail(f"{prefix}.types.{type_name}", "expected a table")
        checked = reader.section("type", t, f"{prefix}.types.{type_name}")
        types[type_name] = TypeConfig(type_name, checked["primary_key"], checked["indexes"])
    if not isinstance(validators_table, dict):
        raise reader.fail(f"{prefix}.validators", "expected a table")
    validators = reader.section("validators", validators_table, f"{prefix}.validators")
    for setting in ("min_records", "max_change_percent"):
        for type_name in validators[setting]:
            if type_name not in types:
                raise reader.fail(f"{prefix}.validators.{setting}", f"no record type {type_name!r} in this namespace")
    if settings["type"] and settings["type"] not in types:
        raise reader.fail(f"{prefix}.type", f"no record type {settings['type']!r}; declared here: {', '.join(types)}")
    source = settings["source"]
    if not _CALLABLE.fullmatch(source):
        source = str(base / source)
        if settings["delivers"] == "changes" and settings["format"] not in ("auto", "jsonl"):
            raise reader.fail(
                f"{prefix}.format", f'a change log (delivers = "changes") is JSON Lines, not {settings["format"]}'
            )
    # Every other setting reaches NamespaceConfig by its name (tests/test_config.py checks the fields).
    settings |= {"schema": base / settings["schema"], "source": source}
    settings["publish_to"] = _store_url(settings["publish_to"], base)
    return NamespaceConfig(name=name, types=types, validators=validators, **settings)


#: The settings a namespace that follows another host's producer may have.
FOLLOWER_SETTINGS = ("follow", "watch_interval", "retain", "mode")


def _follower(reader: _Reader, name: str, table: dict[str, Any], base: Path) -> NamespaceConfig:
    prefix = f"namespaces.{name}"
    for key in table:
        if key not in FOLLOWER_SETTINGS:
            raise reader.fail(
                f"{prefix}.{key}",
                f"a namespace that follows a store takes its schema, keys and indexes from the versions; "
                f"remove this setting (allowed with follow: {', '.join(FOLLOWER_SETTINGS)})",
            )
    known = _BY_SECTION["namespace"]
    checked: dict[str, Any] = {}
    for key in FOLLOWER_SETTINGS:
        setting = known[key]
        try:
            checked[key] = setting.check(table[key]) if key in table else setting.default
        except ValueError as e:
            raise reader.fail(f"{prefix}.{key}", str(e)) from None
    if not checked["follow"]:
        raise reader.fail(f"{prefix}.follow", "empty; give s3://BUCKET/PREFIX or a directory")
    return NamespaceConfig(
        name=name,
        schema=Path(),
        source="",
        types={},
        retain=checked["retain"],
        mode=checked["mode"],
        follow=_store_url(checked["follow"], base),
        watch_interval=checked["watch_interval"],
    )


def _store_url(url: str, base: Path) -> str:
    """A store URL as given, or a directory made absolute (relative to the file)."""
    if not url or "://" in url:
        return url
    return str(base / url)


def reference() -> str:
    """The configuration reference, in Markdown, from the declarations (README's section)."""
    titles = {
        "daemon": "`[daemon]`",
        "namespace": "`[namespaces.NAME]`",
        "type": "`[namespaces.NAME.types.TYPE]`",
        "validators": "`[namespaces.NAME.validators]`",
    }
    out = []
    for section, settings in _BY_SECTION.items():
        out.append(f"#### {titles[section]}\n\n| setting | default | meaning |\n|---|---|---|")
        for s in settings.values():
            default = "required" if s.required else _show(s.default)
            out.append(f"| `{s.name}` | {default} | {s.help} |")
        out.append("")
    return "\n".join(out)


def _show(value: Any) -> str:
    if value is None:
        return "see meaning"
    if isinstance(value, int) and not isinstance(value, bool) and value in (0o640, 0o660):
        return f"`{value:#o}`"
    if value in ((), {}, ""):
        return "none"
    return f'`"{value}"`' if isinstance(value, str) else f"`{value}`"


if __name__ == "__main__":
    print(reference())

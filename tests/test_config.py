"""The daemon's configuration: defaults, a full file, and errors that name file, line, key and fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hollowd import config, errors
from hollowd.errors import ConfigError

README = Path(__file__).resolve().parent.parent / "README.md"

GOOD = """\
[daemon]
root = "shm"
state_dir = "state"
metrics_port = 9108
socket_mode = 0o600

[namespaces.airports]
schema = "schemas/airports.capnp"
source = "examples.airports.source:populate"
interval = 60
retain = 3

[namespaces.airports.types.Airport]
primary_key = "icao"
indexes = ["country", ["country", "city"]]

[namespaces.airports.validators]
min_records = { Airport = 1000 }
max_change_percent = { Airport = 10 }

[namespaces.movies]
schema = "schemas/movies.capnp"
source = "data/movies.jsonl"
type = "Movie"

[namespaces.movies.types.Movie]
primary_key = ["id"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hollowd.toml"
    path.write_text(text)
    return path


def test_no_file_gives_the_declared_defaults() -> None:
    cfg = config.load(None)
    assert cfg.root == Path("/dev/shm/hollow")
    assert cfg.metrics_port == 0
    assert cfg.socket_mode == 0o600
    assert cfg.namespaces == {}


def test_every_namespace_setting_is_a_field_with_the_declared_default() -> None:
    # The namespace's settings reach NamespaceConfig by name (config._producing): each must be a field,
    # and a field's default must be the declaration's, or a namespace without the setting and one made
    # in code would differ.
    fields = {f.name: f for f in dataclasses.fields(config.NamespaceConfig)}
    for s in config.SETTINGS:
        if s.section == "namespace":
            assert s.name in fields, s.name
            if not s.required:
                f = fields[s.name]
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                assert default == s.default, s.name


def test_full_file(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, GOOD))
    assert cfg.root == tmp_path / "shm"  # relative paths are the file's
    assert (cfg.metrics_port, cfg.socket_mode, cfg.log_level) == (9108, 0o600, "info")
    air = cfg.namespaces["airports"]
    assert air.source_is_callable
    assert air.schema == tmp_path / "schemas" / "airports.capnp"
    assert (air.interval, air.retain, air.mode, air.debounce) == (60.0, 3, 0o640, 0.5)
    assert air.types["Airport"].primary_key == ("icao",)
    assert air.types["Airport"].indexes == (("country",), ("country", "city"))
    assert air.validators["min_records"] == {"Airport": 1000}
    assert air.validators["max_change_percent"] == {"Airport": 10.0}
    movies = cfg.namespaces["movies"]
    assert not movies.source_is_callable
    assert movies.source == str(tmp_path / "data" / "movies.jsonl")


@pytest.mark.parametrize(
    ("change", "line", "key", "why"),
    [
        (("retain = 3", "retain = 0"), 11, "namespaces.airports.retain", "at least 1"),
        (("retain = 3", 'retain = "3"'), 11, "namespaces.airports.retain", "whole number"),
        (("metrics_port = 9108", "metrics_port = 70000"), 4, "daemon.metrics_port", "TCP port"),
        (("socket_mode = 0o600", "socket_mode = 0o1777"), 5, "daemon.socket_mode", "0o640"),
        (("interval = 60", "intervall = 60"), 10, "namespaces.airports.intervall", "unknown setting; known here"),
        (('primary_key = "icao"', 'primary_key = ""'), 14, "Airport.primary_key", "field name"),
        (('indexes = ["country"', "indexes = [3"), 15, "namespaces.airports.types.Airport.indexes", "field name"),
        (("min_records = { Airport", "min_records = { Airpor"), 18, "validators.min_records", "no record type"),
        (("max_change_percent = { Airport = 10 }", "max_change_percent = { Airport = 110 }"), 19, "", "0-100"),
        (
            (
                'source = "examples.airports.source:populate"\n',
                "",
            ),
            7,
            "namespaces.airports.source",
            "missing; Where records come from",
        ),
        (
            ('type = "Movie"', 'type = "Film"'),
            24,
            "namespaces.movies.type",
            "no record type 'Film'; declared here: Movie",
        ),
        (
            ('type = "Movie"', 'type = "Movie"\ndelivers = "diffs"'),
            25,
            "namespaces.movies.delivers",
            "expected one of 'records', 'changes', got 'diffs'",
        ),
        (
            ('type = "Movie"', 'type = "Movie"\ndelivers = "changes"\nformat = "csv"'),
            26,
            "namespaces.movies.format",
            'a change log (delivers = "changes") is JSON Lines, not csv',
        ),
    ],
)
def test_bad_setting_names_file_line_key_and_fix(
    tmp_path: Path, change: tuple[str, str], line: int | None, key: str, why: str
) -> None:
    text = GOOD.replace(*change)
    assert text != GOOD
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        config.load(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}:" if line else str(path))
    assert key in message
    assert why in message
    assert err.value.exit_status == errors.EXIT_CONFIG


def test_sources_of_changes(tmp_path: Path) -> None:
    text = GOOD.replace('type = "Movie"', 'type = "Movie"\ndelivers = "changes"')
    text = text.replace("interval = 60", 'interval = 60\ndelivers = "changes"')
    cfg = config.load(write(tmp_path, text))
    movies, airports = cfg.namespaces["movies"], cfg.namespaces["airports"]
    assert movies.delivers_changes
    assert not movies.source_is_callable  # a change log
    assert airports.delivers_changes
    assert airports.source_is_callable  # module:function(cursor)
    assert not config.load(write(tmp_path, GOOD)).namespaces["movies"].delivers_changes


def test_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("retain = 3", "retain = "))
    with pytest.raises(ConfigError, match=rf"{path}: not valid TOML: .*line 11"):
        config.load(path)


def test_namespace_without_types(tmp_path: Path) -> None:
    text = '[namespaces.x]\nschema = "s.capnp"\nsource = "m:f"\n'
    with pytest.raises(ConfigError, match=r":1: namespaces.x.types: declare at least one"):
        config.load(write(tmp_path, text))


def test_bad_namespace_name(tmp_path: Path) -> None:
    text = '[namespaces."a/b"]\nschema = "s.capnp"\nsource = "m:f"\n'
    with pytest.raises(ConfigError, match=r"invalid namespace name 'a/b'"):
        config.load(write(tmp_path, text))


def test_unknown_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r":1: deamon: unknown table"):
        config.load(write(tmp_path, "[deamon]\nroot = 'x'\n"))


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        config.load(tmp_path / "missing.toml")


def test_readme_reference_is_generated_from_the_declarations() -> None:
    text = README.read_text()
    start, end = "<!-- config reference: python -m hollowd.config -->", "<!-- end of config reference -->"
    assert start in text, "README lost its configuration reference markers"
    assert end in text, "README lost its configuration reference markers"
    assert text.split(start)[1].split(end)[0].strip() == config.reference().strip(), (
        "README's configuration reference is stale: paste the output of python -m hollowd.config"
    )

"""Issue 9, items 14, 15 and 17: the daemon as an operator meets it. Nothing one input, one setting or
one request does takes it down; a configuration that cannot work stops it at start with exit status 78
and FILE:LINE: key, never a traceback; a reload keeps what the command line said."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hollowd.example import SCHEMA as AIRPORTS
from tests.conftest import Installed
from tests.daemons import Daemon, announced, movies_config, wait_until
from tests.helpers import SCHEMAS, movie

TESTS = Path(__file__).resolve().parent
HOLLOW = (sys.executable, "-m", "hollowd.cli")
HOLLOWD = (sys.executable, "-m", "hollowd.daemon")


def hollowd(installed: Installed, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed ``hollowd`` run to its end (it is expected to refuse to start)."""
    return subprocess.run(
        [str(installed.bin / "hollowd"), *args],
        env=installed.env(**env),
        cwd="/",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _deep(fmt: str, depth: int = 10_000) -> str:
    nested = "[" * depth + "]" * depth
    if fmt == "json":
        return f'[{{"id": 1, "title": "deep", "tags": {nested}}}]'
    if fmt == "jsonl":
        return f'{{"id": 1, "title": "deep", "tags": {nested}}}\n'
    return f'id,title,tags\n1,deep,"{nested}"\n'


def _good(fmt: str, title: str) -> str:
    rows = [movie(i, title=title) for i in range(3)]
    if fmt == "json":
        return json.dumps([{"id": r["id"], "title": r["title"]} for r in rows])
    if fmt == "jsonl":
        return "".join(json.dumps({"id": r["id"], "title": r["title"]}) + "\n" for r in rows)
    return "id,title\n" + "".join(f"{r['id']},{r['title']}\n" for r in rows)


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- 14. a cycle is a boundary -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_a_deeply_nested_source_fails_its_cycle_and_the_daemon_serves_on(root: Path, tmp_path: Path, fmt: str) -> None:
    source = tmp_path / f"movies.{fmt}"
    source.write_text(_good(fmt, "first"))
    config = movies_config(tmp_path, root, source)
    d = Daemon(config, tmp_path)
    try:
        d.notifications("READY=1")
        _replace(source, _deep(fmt))
        wait_until(lambda: "event=cycle-failed" in d.log.read_text())
        assert d.proc.poll() is None  # still serving
        failed = next(line for line in d.log.read_text().splitlines() if "event=cycle-failed" in line)
        assert str(source) in failed  # the file, and where in it
        assert "Traceback" not in d.log.read_text()
        assert announced(root) == 1
        _replace(source, _good(fmt, "second"))
        wait_until(lambda: announced(root) == 2)
    finally:
        assert d.stop() == 0


def test_a_lone_surrogate_in_a_text_key_fails_its_cycle_and_the_daemon_serves_on(root: Path, tmp_path: Path) -> None:
    control = tmp_path / "control"
    control.mkdir()
    config = tmp_path / "hollowd.toml"
    config.write_text(
        f"""\
[daemon]
root = "{root}"
state_dir = "{tmp_path / "state"}"
control_socket = "{tmp_path / "control.sock"}"

[namespaces.airports]
schema = "{AIRPORTS}"
source = "tests.bad_source:populate"
interval = 3600

[namespaces.airports.types.Airport]
primary_key = "icao"
"""
    )
    d = Daemon(config, tmp_path, {"HOLLOW_TEST_CONTROL": str(control), "PYTHONPATH": str(TESTS.parent)})
    try:
        d.notifications("READY=1")
        (control / "surrogate").touch()
        done = subprocess.run(
            [*HOLLOW, "--socket", str(tmp_path / "control.sock"), "cycle", "airports"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 1
        assert "surrogate" in done.stderr
        assert d.proc.poll() is None
        (control / "surrogate").unlink()
        done = subprocess.run(
            [*HOLLOW, "--socket", str(tmp_path / "control.sock"), "cycle", "airports"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    finally:
        assert d.stop() == 0


# --- 15. configuration errors: exit 78 with file, line and key --------------------------------------

BASE = """\
[daemon]
root = "{root}"
state_dir = "{tmp}/state"
control_socket = "{tmp}/control.sock"

[namespaces.movies]
schema = "{schema}"
source = "{tmp}/movies.jsonl"
type = "Movie"

[namespaces.movies.types.Movie]
primary_key = "id"
indexes = ["genre"]
"""


@pytest.mark.parametrize(
    ("change", "line", "key", "why"),
    [
        (('type = "Movie"', 'type = "Movie"\ndebounce = nan'), 10, "namespaces.movies.debounce", "finite"),
        (('type = "Movie"', 'type = "Movie"\ndebounce = inf'), 10, "namespaces.movies.debounce", "finite"),
        (('type = "Movie"', 'type = "Movie"\ninterval = -inf'), 10, "namespaces.movies.interval", "finite"),
        (("[daemon]", '[daemon]\nsocket_group = "no-such-group"'), 2, "daemon.socket_group", "no group"),
        (('indexes = ["genre"]', 'indexes = ["yaer"]'), 13, "namespaces.movies.types.Movie.indexes", "'yaer'"),
        (('primary_key = "id"', 'primary_key = "ident"'), 12, "namespaces.movies.types.Movie.primary_key", "ident"),
        (('indexes = ["genre"]', 'indexes = ["rating"]'), 13, "namespaces.movies.types.Movie.indexes", "float32"),
        (('primary_key = "id"', 'primary_key = "tags"'), 12, "namespaces.movies.types.Movie.primary_key", "list"),
        (("movies.capnp", "nothing-here.capnp"), 7, "namespaces.movies.schema", "no such file"),
        (("/movies.jsonl", "/missing-dir/movies.jsonl"), 8, "namespaces.movies.source", "no such directory"),
    ],
)
def test_a_setting_that_cannot_work_exits_78_naming_file_line_and_key(
    installed: Installed, root: Path, tmp_path: Path, change: tuple[str, str], line: int, key: str, why: str
) -> None:
    config = tmp_path / "hollowd.toml"
    text = BASE.format(root=root, tmp=tmp_path, schema=SCHEMAS / "movies.capnp")
    assert change[0] in text
    config.write_text(text.replace(change[0], change[1], 1))
    done = hollowd(installed, "--config", str(config))
    assert done.returncode == 78, done.stderr
    assert f"{config}:{line}: {key}: " in done.stderr
    assert why in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "state").exists()  # checked before anything was made


@pytest.fixture
def readonly_fs(tmp_path: Path) -> Path:
    mnt = tmp_path / "ro"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_paths_that_cannot_work_exit_78_naming_the_path_and_the_flag(
    installed: Installed, root: Path, tmp_path: Path, readonly_fs: Path
) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("")
    cases = [
        (["--root", str(afile)], f"--root {afile}: is a file, not a directory"),
        (["--state-dir", str(readonly_fs / "state")], f"--state-dir {readonly_fs / 'state'}: cannot be made"),
        (["--state-dir", str(afile / "state")], f"{afile} is not a directory"),
        (["--socket", str(readonly_fs / "c.sock")], f"--socket {readonly_fs / 'c.sock'}"),
        (["--socket", str(tmp_path / ("x" * 120) / "c.sock")], "longer than a socket path may be (107)"),
    ]
    for args, said in cases:
        full = ["--root", str(root), "--state-dir", str(tmp_path / "state"), "--socket", str(tmp_path / "c.sock")]
        done = hollowd(installed, *full, *args)
        assert done.returncode == 78, (args, done.stderr)
        assert said in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr


# --- 17. reloads, the control path, signals, the watchdog, the socket ----------------------------------


def test_sighup_keeps_the_command_lines_paths(root: Path, tmp_path: Path) -> None:
    source = tmp_path / "movies.jsonl"
    source.write_text(_good("jsonl", "first"))
    elsewhere = tmp_path / "file-root"
    config = movies_config(tmp_path, elsewhere, source, state=tmp_path / "file-state")
    sock = tmp_path / "flag.sock"
    d = Daemon(
        None,
        tmp_path,
        argv=[
            *HOLLOWD,
            "--config",
            str(config),
            "--root",
            str(root),
            "--state-dir",
            str(tmp_path / "state"),
            "--socket",
            str(sock),
        ],
    )
    try:
        d.notifications("READY=1")
        config.write_text(config.read_text().replace("debounce = 0.1", "debounce = 0.2"))  # the namespace changes
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in d.log.read_text())
        wait_until(lambda: announced(root) >= 1 and d.log.read_text().count("event=cycle ") >= 2)
        _replace(source, _good("jsonl", "second"))
        wait_until(lambda: announced(root) == 2)
        assert not elsewhere.exists()
        assert not (tmp_path / "file-state").exists()
        assert sock.exists()
    finally:
        assert d.stop() == 0


def test_a_reload_adding_a_source_in_a_missing_directory_is_refused_and_the_daemon_serves_on(
    root: Path, tmp_path: Path
) -> None:
    source = tmp_path / "movies.jsonl"
    source.write_text(_good("jsonl", "first"))
    config = movies_config(tmp_path, root, source)
    d = Daemon(config, tmp_path)
    try:
        d.notifications("READY=1")
        with config.open("a") as f:
            f.write(
                f'\n[namespaces.more]\nschema = "{SCHEMAS / "movies.capnp"}"\nsource = "{tmp_path}/nowhere/m.jsonl"\n'
                'type = "Movie"\n[namespaces.more.types.Movie]\nprimary_key = "id"\n'
            )
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "event=reload-refused" in d.log.read_text())
        assert "namespaces.more.source" in d.log.read_text()
        assert d.proc.poll() is None
        _replace(source, _good("jsonl", "second"))
        wait_until(lambda: announced(root) == 2)
    finally:
        assert d.stop() == 0


def test_pin_on_a_full_shm_is_refused_and_the_daemon_serves_on(tiny_fs: Path, tmp_path: Path) -> None:
    source = tmp_path / "movies.jsonl"
    source.write_text(_good("jsonl", "first"))
    config = movies_config(tmp_path, tiny_fs, source)
    d = Daemon(config, tmp_path)
    try:
        d.notifications("READY=1")
        fd = os.open(tiny_fs / "filler", os.O_WRONLY | os.O_CREAT)
        try:  # fill every block that is left
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        sock = str(tmp_path / "state" / "control.sock")
        done = subprocess.run(
            [*HOLLOW, "--socket", sock, "pin", "movies", "1"], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 1, done.stderr
        assert "No space left" in done.stderr
        assert d.proc.poll() is None
        done = subprocess.run(
            [*HOLLOW, "--socket", sock, "--root", str(tiny_fs), "status", "movies"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "daemon: 1 cycles ok" in done.stdout, done.stderr
    finally:
        assert d.stop() == 0


def test_signal_handlers_put_into_a_reentrant_queue() -> None:
    from hollowd.config import parse  # noqa: PLC0415
    from hollowd.daemon import Daemon as HollowDaemon  # noqa: PLC0415

    assert type(HollowDaemon(parse("", None)).events) is queue.SimpleQueue  # put() may run inside get()


def test_watchdog_pings_go_on_during_a_long_cycle(root: Path, tmp_path: Path) -> None:
    control = tmp_path / "control"
    control.mkdir()
    config = tmp_path / "hollowd.toml"
    config.write_text(
        f"""\
[daemon]
root = "{root}"
state_dir = "{tmp_path / "state"}"
control_socket = "{tmp_path / "control.sock"}"

[namespaces.movies]
schema = "{SCHEMAS / "movies.capnp"}"
source = "tests.slow_source:populate"
interval = 3600

[namespaces.movies.types.Movie]
primary_key = "id"
"""
    )
    env = {"HOLLOW_TEST_CONTROL": str(control), "PYTHONPATH": str(TESTS.parent), "WATCHDOG_USEC": "400000"}
    d = Daemon(config, tmp_path, env)
    try:
        d.notifications("READY=1")
        (control / "slow").touch()
        asked = subprocess.Popen(
            [*HOLLOW, "--socket", str(tmp_path / "control.sock"), "cycle", "movies"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until((control / "in-cycle").exists)  # inside a cycle that sleeps 120 s
        d.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                d.sock.recv(4096)  # pings sent before the cycle began
        d.notifications("WATCHDOG=1", timeout=30)  # WatchdogSec=0.4 s would have killed it
        d.notifications("WATCHDOG=1", timeout=30)
        assert d.proc.poll() is None
    finally:
        assert d.stop(signal.SIGKILL) == -signal.SIGKILL
        asked.wait(timeout=60)


def test_a_second_daemon_does_not_take_the_first_ones_socket(root: Path, tmp_path: Path) -> None:
    source = tmp_path / "movies.jsonl"
    source.write_text(_good("jsonl", "first"))
    config = movies_config(tmp_path, root, source)
    d = Daemon(config, tmp_path)
    try:
        d.notifications("READY=1")
        sock = tmp_path / "state" / "control.sock"
        other = root / "other"
        done = subprocess.run(
            [
                *HOLLOWD,
                "--config",
                str(config),
                "--state-dir",
                str(tmp_path / "state2"),
                "--root",
                str(other),
                "--socket",
                str(sock),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 75, done.stderr
        assert f"already listens on the control socket {sock}" in done.stderr
        done = subprocess.run(
            [*HOLLOW, "--socket", str(sock), "--root", str(root), "status", "movies"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "daemon: 1 cycles ok" in done.stdout, done.stderr
    finally:
        assert d.stop() == 0

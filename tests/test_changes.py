"""Sources that deliver changes, in a real daemon: a change log and an incremental callable,
each change applied exactly once across restarts, kill -9, rotation, truncation and bad lines."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import hollow
from hollow import layout
from hollowd.errors import EXIT_CONFIG
from tests.daemons import Daemon, announced, movies_config, run, wait_until
from tests.helpers import movie

#: The Movie table's lines after its primary key, and the types the change sources also give.
TYPES = """\
indexes = ["genre"]

[namespaces.movies.types.Actor]
primary_key = "id"

[namespaces.movies.types.Role]
primary_key = ["movieId", "actorId"]
"""


def configure(tmp_path: Path, root: Path, source: str | Path, *, retain: int = 5, extra: str = "") -> Path:
    """``movies_config`` for a source that delivers changes (*source* a change log or a callable)."""
    namespace = f'delivers = "changes"\nretain = {retain}\n{extra}'
    return movies_config(tmp_path, root, source, namespace=namespace, more=TYPES)


@pytest.fixture
def log_config(root: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(config, change log, the namespace's state directory)."""
    source = tmp_path / "movies.changes"
    return configure(tmp_path, root, source), source, tmp_path / "state" / "movies"


def up(i: int, title: str, **more: object) -> dict[str, Any]:
    return {"upsert": movie(i, title=title), **more}


def append(path: Path, *changes: object, raw: str = "") -> None:
    """Append whole lines in one write (as a tool appending to a log would), and maybe a part of one."""
    with path.open("a") as f:
        f.write("".join(json.dumps(c) + "\n" for c in changes) + raw)


def titles(root: Path) -> dict[int, str]:
    if layout.read_announcement(root / "movies") is None:
        return {}
    with hollow.open("movies", root=root, follow=False) as ds, ds.snapshot() as snap:
        return {m.id: m.title for m in snap["Movie"]}


def cycles(log: Path) -> list[tuple[int, int]]:
    """(version, changes) of each cycle the daemon logged."""
    found = re.findall(r"event=cycle namespace=movies version=(\d+) .*changes=(\d+)", log.read_text())
    return [(int(v), int(n)) for v, n in found]


def busy_wait(predicate: Callable[[], object], timeout: float = 30) -> bool:
    """Whether *predicate* came true within *timeout*, checked without sleeping (to catch short windows)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
    return True


def cursor(state: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((state / "cursor").read_text())["cursor"]
    return doc


def test_change_log_is_applied_and_a_restart_goes_on_from_its_offset(
    root: Path, tmp_path: Path, log_config: tuple[Path, Path, Path]
) -> None:
    config, source, state = log_config
    append(source, up(1, "a"), up(2, "b"))
    d = Daemon(config, tmp_path)
    try:
        d.notifications("READY=1")
        assert titles(root) == {1: "a", 2: "b"}
        append(source, {"remove": 1}, up(3, "c"))
        wait_until(lambda: announced(root) == 2)
        assert titles(root) == {2: "b", 3: "c"}
        append(source, up(3, "c"))  # changes nothing: no version, but its line is done with
        wait_until(lambda: (2, 1) in cycles(d.log))  # not stopped mid-cycle: each cycle logs its count
    finally:
        assert d.stop() == 0
    append(source, up(1, "a"), {"remove": 2})  # the first line's upsert again, while the daemon is down
    d = Daemon(config, tmp_path)
    try:
        d.notifications("READY=1")
        wait_until(lambda: (3, 2) in cycles(d.log))
        assert titles(root) == {1: "a", 3: "c"}
    finally:
        assert d.stop() == 0
    d = Daemon(config, tmp_path)  # nothing new: nothing read again, no version
    try:
        d.notifications("READY=1")
        wait_until(lambda: len(cycles(d.log)) == 5)
    finally:
        assert d.stop() == 0
    assert cycles(d.log) == [(1, 2), (2, 2), (2, 1), (3, 2), (3, 0)]  # each line counted once
    assert sorted(layout.list_versions(root / "movies")) == [1, 2, 3]
    assert (cursor(state)["line"], cursor(state)["offset"]) == (7, source.stat().st_size)
    assert json.loads((state / "cursor").read_text())["version"] == 3  # the counter (docs/decisions.md §100)
    assert sorted(p.name for p in state.iterdir()) == [
        "cursor",
        "latest.state",
        "latest.state.base",
    ]  # nothing pending


def test_kill_9_at_random_points_of_a_stream_loses_and_repeats_nothing(
    root: Path, tmp_path: Path, log_config: tuple[Path, Path, Path]
) -> None:
    """Every version holds a prefix of the log's lines, prefixes never shrink, the last one holds
    them all, and no change is counted twice, whatever moment the daemon was killed at."""
    config, source, state = log_config
    config.write_text(config.read_text().replace("retain = 5", "retain = 1000"))  # keep every version to check
    rng = random.Random(20261201)
    model = {i: f"line {i + 1}" for i in range(3000)}  # a first batch big enough that a cycle takes a while
    source.write_text("".join(json.dumps(up(i, title)) + "\n" for i, title in model.items()))
    digest = 0  # of the model's items, kept as they change: XOR of their hashes
    for item in model.items():
        digest ^= hash(item)
    prefixes = [digest]  # the model's digest after the first batch, then after each line
    total = len(model)

    def change() -> dict[str, Any]:
        nonlocal digest, total
        total += 1
        key = rng.randrange(3100)
        if key in model:
            digest ^= hash((key, model[key]))
        if rng.random() < 0.3:
            model.pop(key, None)
            doc: dict[str, Any] = {"remove": key}
        else:
            model[key] = f"line {total}"
            digest ^= hash((key, model[key]))
            doc = up(key, model[key])
        prefixes.append(digest)
        return doc

    def burst() -> None:
        append(source, *(change() for _ in range(rng.randint(1, 20))))

    pending, in_flight, partial = state / "cursor.pending", 0, ""

    def pending_written() -> bool:
        try:
            version = json.loads(pending.read_text())["version"]
        except (OSError, ValueError):
            return False
        return (root / "movies" / str(version)).exists()

    for round_ in range(12):
        d = Daemon(config, tmp_path)
        append(source, raw=partial)  # a line half written before the kill is finished now
        if round_ % 2:  # kill once a version holding a batch is reserved, or once it is written too
            written = round_ % 4 == 3
            for _ in range(10):  # the window is a few ms: a loaded machine may miss it, then the next burst's
                burst()
                if busy_wait(lambda written=written: pending_written() if written else pending.exists(), 3):
                    in_flight += 1
                    break
        else:  # kill at any moment while lines keep coming
            deadline = time.monotonic() + rng.uniform(0.3, 2.5)
            while time.monotonic() < deadline:
                burst()
                time.sleep(rng.uniform(0, 0.15))
        d.stop(signal.SIGKILL)
        line = json.dumps(change()) + "\n"
        cut = rng.randrange(1, len(line) - 1)
        append(source, raw=line[:cut])
        partial = line[cut:]
    append(source, raw=partial)
    d = Daemon(config, tmp_path)
    try:
        d.notifications("READY=1")
        # No cursor yet when every kill came before the first commit (a slow start on a loaded machine).
        size = source.stat().st_size
        wait_until(lambda: (state / "cursor").exists() and cursor(state)["offset"] == size, timeout=120)
        assert titles(root) == model
    finally:
        assert d.stop() == 0
    assert in_flight == 6
    assert not pending.exists()
    text = d.log.read_text()
    assert "written=true" in text  # killed after writing a version, and before its cursor was committed
    assert "written=false" in text  # and before writing it
    counted = sum(n for _, n in cycles(d.log))
    counted += sum(int(n) for n in re.findall(r"event=cursor-settled .*written=true changes=(\d+)", text))
    assert counted <= total  # a kill between a commit and its log line may hide a count, never add one
    at = 0
    for version in layout.list_versions(root / "movies"):
        with hollow.open("movies", root=root, follow=False) as ds, ds.attach(version) as snap:
            held = 0
            for m in snap["Movie"]:
                held ^= hash((m.id, m.title))
        assert held in prefixes[at:], f"version {version} holds no prefix of the log as long as the one before"
        at = prefixes.index(held, at)
    assert prefixes[at] == prefixes[-1]


def test_a_change_log_s_first_new_line_is_applied_at_once_and_later_ones_once_a_debounce(
    root: Path, tmp_path: Path, log_config: tuple[Path, Path, Path]
) -> None:
    """A change log is not debounced as a file source is: a new line after a quiet spell is applied at
    once (it used to wait the whole debounce, 20 of bench/daemon.py's 62 ms), and lines that come
    while a window of ``debounce`` seconds from that cycle is open are applied together when it ends."""
    config, source, state = log_config
    config.write_text(config.read_text().replace("debounce = 0.1", "debounce = 600"))
    append(source, up(1, "a"))
    d = Daemon(config, tmp_path)
    try:
        d.notifications("READY=1")
        append(source, up(2, "b"))
        wait_until(lambda: titles(root) == {1: "a", 2: "b"}, timeout=300)  # not 600 s: at once
        append(source, up(3, "c"))  # within the window the last cycle opened: waits for its end
        append(source, {"remove": 1})
        time.sleep(1)
        assert titles(root) == {1: "a", 2: "b"}
        assert cursor(state)["line"] == 2
    finally:
        assert d.stop() == 0
    d = Daemon(config, tmp_path)  # nothing was lost: a start reads what the window held
    try:
        d.notifications("READY=1")
        wait_until(lambda: titles(root) == {2: "b", 3: "c"})
        wait_until(lambda: (3, 2) in cycles(d.log))  # the two lines the window held, in one version
    finally:
        assert d.stop() == 0


def test_rotation_and_truncation(root: Path, tmp_path: Path, log_config: tuple[Path, Path, Path]) -> None:
    config, source, _ = log_config
    append(source, up(1, "a"), up(2, "b"))
    d = Daemon(config, tmp_path)
    try:
        d.notifications("READY=1")
        append(source, up(3, "c"))  # not read yet when the log is rotated
        source.rename(source.with_name("movies.changes.1"))
        append(source, up(4, "d"), {"remove": 1})
        wait_until(lambda: titles(root) == {2: "b", 3: "c", 4: "d"})
        assert "event=change-log-rotated" in d.log.read_text()
        source.write_text(json.dumps({"remove": 4}) + "\n")  # truncated in place, and written again
        wait_until(lambda: titles(root) == {2: "b", 3: "c"})
        assert "<4>hollowd: namespace=movies event=change-log-truncated" in d.log.read_text()
    finally:
        assert d.stop() == 0
    append(source, up(5, "e"))  # rotated while the daemon is down: found again by its inode
    source.rename(source.with_name("movies.changes.2"))
    append(source, up(6, "f"))
    d = Daemon(config, tmp_path)
    try:
        d.notifications("READY=1")
        wait_until(lambda: titles(root) == {2: "b", 3: "c", 5: "e", 6: "f"})
    finally:
        assert d.stop() == 0


def test_a_bad_line_names_file_and_line_and_changes_nothing(
    root: Path, tmp_path: Path, log_config: tuple[Path, Path, Path]
) -> None:
    config, source, state = log_config
    append(source, up(1, "a"))
    d = Daemon(config, tmp_path)
    try:
        d.notifications("READY=1")
        append(source, up(2, "b"), {"remove": "1"})
        wait_until(lambda: f"{source}:3: remove: Movie.id is an integer" in d.log.read_text())
        sock = ["--root", str(root), "--socket", str(state.parent / "control.sock")]
        status = run("hollowd.cli", *sock, "--json", "status", "movies")
        assert f"{source}:3: remove" in json.loads(status.stdout)["daemon"]["last_error"]
        assert (announced(root), titles(root), cursor(state)["line"]) == (1, {1: "a"}, 1)  # none of the batch
        mended = source.with_name("mended")  # mend it as sed -i would: a new file over the old
        mended.write_text(source.read_text().replace('"1"', "1"))
        mended.rename(source)
        wait_until(lambda: announced(root) == 2)
        assert titles(root) == {2: "b"}
        append(source, up(3, "c", type="Movie"), {"upsert": movie(4, year=70000)})
        wait_until(lambda: f"{source}:5: Movie id=4: field 'year': 70000 is out of range" in d.log.read_text())
        assert (announced(root), cursor(state)["line"]) == (2, 3)
    finally:
        assert d.stop() == 0


def test_incremental_callable_keeps_its_cursor_across_restarts(root: Path, tmp_path: Path) -> None:
    control = tmp_path / "control"
    control.mkdir()
    config = configure(tmp_path, root, "tests.incremental_source:changes_since", extra="interval = 0.2\n")
    changes = [up(1, "a"), up(2, "b")]
    (control / "changes.json").write_text(json.dumps(changes))
    env = {"HOLLOW_TEST_CONTROL": str(control)}

    def calls() -> list[Any]:
        return [json.loads(ln) for ln in (control / "calls").read_text().splitlines()]

    d = Daemon(config, tmp_path, env)
    try:
        d.notifications("READY=1")
        assert titles(root) == {1: "a", 2: "b"}
        changes += [{"remove": 1}, up(3, "c")]
        (control / "changes.json").write_text(json.dumps(changes))
        wait_until(lambda: announced(root) == 2)
        assert titles(root) == {2: "b", 3: "c"}
    finally:
        assert d.stop() == 0
    assert calls()[:2] == [None, {"given": 2}]
    before = len(calls())
    d = Daemon(config, tmp_path, env)
    try:
        d.notifications("READY=1")
        wait_until(lambda: len(calls()) > before)
        assert calls()[before] == {"given": 4}  # from where it was, not from the start
        changes.append(up(1, "again"))
        (control / "changes.json").write_text(json.dumps(changes))
        wait_until(lambda: announced(root) == 3)
        assert titles(root) == {1: "again", 2: "b", 3: "c"}
    finally:
        assert d.stop() == 0
    assert layout.list_versions(root / "movies") == [1, 2, 3]


@pytest.mark.parametrize(
    ("change", "key", "why"),
    [
        (('delivers = "changes"', 'delivers = "diffs"'), "namespaces.movies.delivers", "expected one of 'records'"),
        (("debounce = 0.1", 'debounce = 0.1\nformat = "csv"'), "namespaces.movies.format", "is JSON Lines, not csv"),
        (('type = "Movie"', 'type = "Movi"'), "namespaces.movies.type", "no record type 'Movi'"),
    ],
)
def test_bad_settings_exit_78_naming_them(
    tmp_path: Path, log_config: tuple[Path, Path, Path], change: tuple[str, str], key: str, why: str
) -> None:
    config, _, _ = log_config
    text = config.read_text()
    config.write_text(text.replace(*change))
    out = run("hollowd.daemon", "--config", str(config))
    assert out.returncode == EXIT_CONFIG, out.stderr
    assert re.search(rf"{re.escape(str(config))}:\d+: {re.escape(key)}: .*{re.escape(why)}", out.stderr), out.stderr


def test_an_incremental_callable_that_cannot_be_imported_exits_78(root: Path, tmp_path: Path) -> None:
    config = configure(tmp_path, root, "tests.incremental_source:no_such_function")
    out = run("hollowd.daemon", "--config", str(config))
    assert out.returncode == EXIT_CONFIG
    assert "cannot import 'tests.incremental_source:no_such_function'" in out.stderr


#: Runs a command in a user namespace of its own where no inotify instance can be had (user_namespaces(7)).
NO_INOTIFY = (
    "unshare",
    "--user",
    "--map-root-user",
    "sh",
    "-c",
    'echo 0 > /proc/sys/user/max_inotify_instances && exec "$@"',
    "sh",
)


def test_without_inotify_the_change_log_is_polled(
    root: Path, tmp_path: Path, log_config: tuple[Path, Path, Path]
) -> None:
    if subprocess.run([*NO_INOTIFY, "true"], capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot make a user namespace with no inotify instances here")
    config, source, _ = log_config
    append(source, up(1, "a"))
    d = Daemon(config, tmp_path, wrapper=NO_INOTIFY)
    try:
        d.notifications("READY=1")
        assert "<4>hollowd: event=watch-polling namespace=movies" in d.log.read_text()
        append(source, up(2, "b"))
        wait_until(lambda: titles(root) == {1: "a", 2: "b"})
    finally:
        assert d.stop() == 0


def test_a_version_that_fails_to_publish_leaves_its_lines_to_read_again(tiny_fs: Path, tmp_path: Path) -> None:
    source = tmp_path / "movies.changes"
    config = configure(tmp_path, tiny_fs, source)
    state = tmp_path / "state" / "movies"
    append(source, up(1, "a"))
    d = Daemon(config, tmp_path)
    try:
        d.notifications("READY=1")
        good = source.stat().st_size
        append(source, up(2, "b"), up(3, "x" * 2_000_000))  # reserved as version 2, then no room for it
        wait_until(lambda: "no room for a" in d.log.read_text())
        assert (announced(tiny_fs), cursor(state)["line"]) == (1, 1)
        append(source, up(4, "d"))  # the next cycle settles version 2 as never written, and fails again
        wait_until(lambda: "written=false" in d.log.read_text())
        with source.open("r+") as f:  # the operator cuts the long line away
            f.truncate(good)
            f.seek(good)
            f.write(json.dumps(up(2, "b")) + "\n")
        wait_until(lambda: announced(tiny_fs) == 2)
        assert titles(tiny_fs) == {1: "a", 2: "b"}
        wait_until(lambda: not (state / "cursor.pending").exists())  # committed once saved, after the announce
    finally:
        assert d.stop() == 0
    assert (cursor(state)["line"], cursor(state)["offset"]) == (2, source.stat().st_size)


def test_a_change_version_makes_one_file_durable_before_it_is_written_and_its_number_is_never_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cursor.pending`` names the version it reserves, so it is the counter too: one write, fsync,
    rename and directory fsync on the way to a reader (each 8 ms under load on this VM), not two. The
    number stays reserved however the pending cursor is settled, and across a restart."""
    from hollowd.store import StateStore  # noqa: PLC0415

    store = StateStore(tmp_path, "movies")
    durable: list[str] = []
    replace = StateStore._replace
    monkeypatch.setattr(StateStore, "_replace", staticmethod(lambda p, d: (durable.append(p.name), replace(p, d))))
    store.reserve(1)  # a file source's version: the counter alone
    assert (durable, StateStore(tmp_path, "movies").counter) == (["counter"], 1)
    durable.clear()
    store.stage({"offset": 10}, 2)
    store.reserve(2)
    store.unstage()
    assert durable == ["cursor.pending"]  # the one durable write before version 2 is written
    assert StateStore(tmp_path, "movies").counter == 2  # a restart numbers above it
    store.commit_cursor({"offset": 10})
    assert (StateStore(tmp_path, "movies").counter, store.cursor, store.pending) == (2, {"offset": 10}, None)
    store.stage({"offset": 20}, 1)
    store.reserve(3)
    store.unstage()
    store.drop_pending()  # version 3 was never written: its changes are read again, its number stays used
    assert (StateStore(tmp_path, "movies").counter, store.cursor, store.pending) == (3, {"offset": 10}, None)
    store.commit_cursor({"offset": 30})  # a batch that changed nothing: no version, no pending
    assert StateStore(tmp_path, "movies").counter == 3

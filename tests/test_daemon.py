"""The daemon as a real subprocess: file sources, validators, restarts, signals and the notify protocol."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import time
import urllib.request
from pathlib import Path

import pytest

import hollow
from hollow import layout
from hollowd.errors import EXIT_CONFIG, EXIT_RUNNING
from tests.daemons import Daemon, announced, movies_config, run, wait_until, write_jsonl
from tests.helpers import free_port, movie

#: What the daemon tests add to tests.daemons.MOVIES_CONFIG: an index, the other types and a validator.
MORE = """\
indexes = ["genre"]

[namespaces.movies.types.Actor]
primary_key = "id"

[namespaces.movies.types.Role]
primary_key = ["movieId", "actorId"]

[namespaces.movies.validators]
min_records = { Movie = 3 }
"""


@pytest.fixture
def setup(root: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    state = tmp_path / "state"
    source = tmp_path / "movies.jsonl"
    write_jsonl(source, [movie(i) for i in range(5)])
    config = movies_config(tmp_path, root, source, state=state, debounce=0.2, more=MORE)
    return config, source, state


def test_ready_after_first_version_then_a_changed_file_is_followed(
    root: Path, tmp_path: Path, setup: tuple[Path, Path, Path]
) -> None:
    config, source, _ = setup
    d = Daemon(config, tmp_path)
    try:
        msgs = d.notifications("READY=1")
        assert "STATUS=serving movies 1" in msgs[-1]
        with hollow.open("movies", root=root) as ds:
            assert ds.version == 1
            write_jsonl(source, [movie(i, title=f"new {i}") for i in range(6)])
            assert ds.wait_for(2, timeout=60)
            with ds.snapshot() as snap:
                assert (len(snap["Movie"]), snap["Movie"][5].title) == (6, "new 5")
    finally:
        assert d.stop() == 0
    assert "STOPPING=1" in d.last_words


def test_half_written_file_and_failing_validator_announce_nothing(
    root: Path, tmp_path: Path, setup: tuple[Path, Path, Path]
) -> None:
    config, source, _ = setup
    d = Daemon(config, tmp_path)
    try:
        d.notifications("READY=1")
        write_jsonl(source, [movie(i) for i in range(6)], partial='{"id": 99, "tit')
        wait_until(lambda: "ends mid-record" in d.log.read_text())
        write_jsonl(source, [movie(i) for i in range(2)])  # below min_records = 3
        wait_until(lambda: "min_records[Movie]" in d.log.read_text())
        assert announced(root) == 1
        status = run("hollowd.cli", "--root", str(root), "--socket", str(setup[2] / "control.sock"), "status", "movies")
        assert status.returncode == 0
        assert "the last failed: validator min_records[Movie] rejected the version" in status.stdout
        write_jsonl(source, [movie(i) for i in range(7)])  # good again: the next cycle proceeds
        wait_until(lambda: announced(root) == 2)
    finally:
        assert d.stop() == 0


def test_kill_9_then_restart_serves_the_last_good_version_and_counts_on(
    root: Path, tmp_path: Path, setup: tuple[Path, Path, Path]
) -> None:
    config, source, _ = setup
    d = Daemon(config, tmp_path)
    d.notifications("READY=1")
    write_jsonl(source, [movie(i, title="second") for i in range(5)])
    wait_until(lambda: announced(root) == 2)
    assert d.stop(signal.SIGKILL) == -signal.SIGKILL
    d = Daemon(config, tmp_path)
    try:
        d.notifications("READY=1")
        assert announced(root) == 2  # same data: the same version
        write_jsonl(source, [movie(i, title="third") for i in range(5)])
        wait_until(lambda: announced(root) == 3)
    finally:
        assert d.stop() == 0


def test_kill_9_mid_cycle_then_restart(root: Path, tmp_path: Path, setup: tuple[Path, Path, Path]) -> None:
    config, source, _ = setup
    control = tmp_path / "control"
    control.mkdir()
    text = config.read_text().replace(f'source = "{source}"', 'source = "tests.slow_source:populate"')
    config.write_text(text.replace("debounce = 0.2", "interval = 0.3"))
    env = {"HOLLOW_TEST_CONTROL": str(control)}
    d = Daemon(config, tmp_path, env)
    d.notifications("READY=1")
    assert announced(root) == 1
    (control / "title").write_text("second")
    (control / "slow").touch()
    wait_until((control / "in-cycle").exists)  # the daemon is inside a cycle now
    assert d.stop(signal.SIGKILL) == -signal.SIGKILL
    (control / "slow").unlink()
    d = Daemon(config, tmp_path, env)
    try:
        d.notifications("READY=1")
        assert announced(root) in (1, 2)  # the last good version at once, then the new one
        wait_until(lambda: announced(root) == 2)
        with hollow.open("movies", root=root, follow=False) as ds, ds.snapshot() as snap:
            assert snap["Movie"][0].title == "second"
        assert not list((root / "movies").glob(".*.tmp"))  # nothing partial left behind
    finally:
        assert d.stop() == 0


def test_emptied_shm_is_rematerialized_before_ready(root: Path, tmp_path: Path, setup: tuple[Path, Path, Path]) -> None:
    config, source, state = setup
    d = Daemon(config, tmp_path)
    d.notifications("READY=1")
    write_jsonl(source, [movie(i, title="kept") for i in range(5)])
    wait_until(lambda: announced(root) == 2)
    assert d.stop() == 0
    shutil.rmtree(root / "movies")  # a reboot
    source.unlink()  # and the source is not there yet: readers must still be served
    d = Daemon(config, tmp_path)
    try:
        d.notifications("READY=1")
        assert announced(root) == 2
        with hollow.open("movies", root=root, follow=False) as ds, ds.snapshot() as snap:
            assert snap["Movie"][4].title == "kept"
        write_jsonl(source, [movie(i, title="after") for i in range(5)])
        wait_until(lambda: announced(root) == 3)  # versions never go back
    finally:
        assert d.stop() == 0
    assert (state / "movies" / "counter").read_text().strip() == "3"


def test_second_daemon_is_refused_naming_the_pid(root: Path, tmp_path: Path, setup: tuple[Path, Path, Path]) -> None:
    config, _, _ = setup
    d = Daemon(config, tmp_path)
    try:
        d.notifications("READY=1")
        second = run("hollowd.daemon", "--config", str(config))
        assert second.returncode == EXIT_RUNNING
        assert f"PID {d.proc.pid}" in second.stderr
    finally:
        assert d.stop() == 0


def test_sighup_reload_keeps_serving_and_a_bad_reload_changes_nothing(
    root: Path, tmp_path: Path, setup: tuple[Path, Path, Path]
) -> None:
    config, _, _ = setup
    d = Daemon(config, tmp_path)
    try:
        d.notifications("READY=1")
        good = config.read_text()
        config.write_text(good.replace("debounce = 0.2", "debounce = -1"))
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "event=reload-refused" in d.log.read_text())
        config.write_text(good.replace("min_records = { Movie = 3 }", "min_records = { Movie = 4 }"))
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in d.log.read_text())
        assert announced(root) == 1
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0


def test_a_signal_delivered_to_another_thread_of_the_daemon_is_acted_on(
    root: Path, tmp_path: Path, setup: tuple[Path, Path, Path]
) -> None:
    """The kernel may hand a process's signal to any of its threads. CPython runs the handler in the
    main thread, which then waits out its wait first: the daemon's main loop waited up to an hour
    (docs/pitfalls.md 35). A SIGHUP sent to one of its other threads (tgkill) is acted on at once."""
    config, _, _ = setup
    d = Daemon(config, tmp_path)
    try:
        d.notifications("READY=1")
        pid = d.proc.pid
        others = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
        assert others, "the daemon has threads besides the main one"
        config.write_text(config.read_text().replace("debounce = 0.2", "debounce = -1"))
        tgkill = {"x86_64": 234, "aarch64": 131}[os.uname().machine]  # the syscall's number
        assert ctypes.CDLL(None, use_errno=True).syscall(tgkill, pid, others[0], signal.SIGHUP) == 0
        wait_until(lambda: "event=reload-refused" in d.log.read_text(), timeout=30)
    finally:
        assert d.stop() == 0


def hollow_cli(state: Path, *args: str) -> tuple[int, dict[str, object] | str]:
    out = run("hollowd.cli", "--socket", str(state / "control.sock"), "--json", *args)
    return out.returncode, json.loads(out.stdout) if out.returncode == 0 else out.stderr


def test_pin_unpin_and_cycle_through_the_control_socket(
    root: Path, tmp_path: Path, setup: tuple[Path, Path, Path]
) -> None:
    config, source, state = setup
    d = Daemon(config, tmp_path)
    try:
        d.notifications("READY=1")
        write_jsonl(source, [movie(i, title="two") for i in range(5)])
        wait_until(lambda: announced(root) == 2)
        rc, answer = hollow_cli(state, "pin", "movies", "1")
        assert rc == 0
        assert isinstance(answer, dict)
        assert (answer["announced"], answer["pinned"], answer["latest"]) == (1, True, 2)
        assert (state / "movies" / "pin").read_text().strip() == "1"
        rc, err = hollow_cli(state, "pin", "movies", "99")
        assert rc == 1
        assert "does not exist" in str(err)
        write_jsonl(source, [movie(i, title="three") for i in range(5)])
        wait_until(lambda: layout.read_announcement(root / "movies").latest == 3)  # type: ignore[union-attr]
        assert announced(root) == 1  # still pinned while publishing goes on
        rc, answer = hollow_cli(state, "unpin", "movies")
        assert (rc, announced(root)) == (0, 3)
        assert not (state / "movies" / "pin").exists()
        write_jsonl(source, [movie(i) for i in range(2)])  # fails min_records; cycle says so
        rc, err = hollow_cli(state, "cycle", "movies")
        assert rc == 1
        assert "min_records[Movie]" in str(err)
        rc, err = hollow_cli(state, "cycle", "nope")
        assert rc == 1
        assert "no namespace 'nope'" in str(err)
    finally:
        assert d.stop() == 0
    assert not (state / "control.sock").exists()
    rc, err = hollow_cli(state, "cycle", "movies")
    assert rc == 4
    assert "is it running" in str(err)


def test_prometheus_metrics(root: Path, tmp_path: Path, setup: tuple[Path, Path, Path]) -> None:
    config, source, _ = setup
    port = free_port()
    config.write_text(config.read_text().replace("[daemon]\n", f"[daemon]\nmetrics_port = {port}\n"))
    d = Daemon(config, tmp_path)
    try:
        d.notifications("READY=1")
        write_jsonl(source, [movie(i) for i in range(2)])  # rejected by min_records
        wait_until(lambda: "min_records[Movie]" in d.log.read_text())
        with hollow.open("movies", root=root) as ds, ds.snapshot():
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
            pid_leases = 'hollowd_leases{namespace="movies",version="1"} 1.0'
            assert pid_leases in text
    finally:
        assert d.stop() == 0
    for line in (
        'hollowd_cycles_total{namespace="movies",result="ok"} 1.0',
        'hollowd_cycles_total{namespace="movies",result="failed"} 1.0',
        'hollowd_announced_version{namespace="movies"} 1.0',
        'hollowd_pinned{namespace="movies"} 0.0',
        'hollowd_records{namespace="movies",type="Movie"} 5.0',
        'hollowd_cycle_stage_seconds_count{namespace="movies",stage="publish"} 1.0',
    ):
        assert line in text, line
    shm = next(ln for ln in text.splitlines() if ln.startswith('hollowd_shm_bytes{namespace="movies"}'))
    assert float(shm.split()[-1]) == (root / "movies" / "1").stat().st_size
    assert "hollowd_seconds_since_last_good_cycle" in text


def test_watchdog_pings(root: Path, tmp_path: Path, setup: tuple[Path, Path, Path]) -> None:
    config, _, _ = setup
    d = Daemon(config, tmp_path, {"WATCHDOG_USEC": "400000"})  # WatchdogSec=0.4: a ping every 0.2 s
    try:
        d.notifications("READY=1")
        d.notifications("WATCHDOG=1", timeout=30)
        d.notifications("WATCHDOG=1", timeout=30)
    finally:
        assert d.stop() == 0


def test_pin_and_status_in_human_form(root: Path, tmp_path: Path, setup: tuple[Path, Path, Path]) -> None:
    config, source, state = setup
    d = Daemon(config, tmp_path)
    try:
        d.notifications("READY=1")
        write_jsonl(source, [movie(i, title="2") for i in range(5)])
        wait_until(lambda: announced(root) == 2)
        sock = ["--socket", str(state / "control.sock")]
        pin = run("hollowd.cli", *sock, "pin", "movies", "1")
        assert pin.returncode == 0
        assert pin.stdout.strip() == "movies: announced 1 (pinned; latest 2)"
        out = run("hollowd.cli", "--root", str(root), "status", "movies")
        assert out.returncode == 0
        assert "announced 1 (pinned; latest 2)" in out.stdout
        assert "announced pinned" in out.stdout
    finally:
        assert d.stop() == 0


def test_bad_config_exits_78_naming_the_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[daemon]\nmetrics_port = "x"\n')
    out = run("hollowd.daemon", "--config", str(config))
    assert out.returncode == EXIT_CONFIG
    assert f"{config}:2: daemon.metrics_port" in out.stderr


def test_a_namespace_compacts_in_the_background_and_reports_it(root: Path, tmp_path: Path) -> None:
    """compact_percent and compact_min move versions to new bases while the daemon serves; the
    metric says what the last compaction cost."""
    source = tmp_path / "movies.jsonl"
    write_jsonl(source, [movie(i) for i in range(50)])
    port = free_port()
    cfg = movies_config(
        tmp_path, root, source, debounce=0.2, namespace="compact_percent = 0\ncompact_min = 0", more=MORE
    )
    cfg.write_text(cfg.read_text().replace("[daemon]", f"[daemon]\nmetrics_port = {port}"))
    d = Daemon(cfg, tmp_path)
    try:
        d.notifications("READY=1")
        bases = set()
        for n in range(1, 6):
            write_jsonl(source, [movie(i, title=f"v{n}") if i < 5 else movie(i) for i in range(50)])
            wait_until(lambda n=n: hollow.status("movies", root=root).latest == n + 1)
            state = hollow.state.StateFile(root / "movies" / str(n + 1), namespace="movies")
            bases.add(state.base.version if state.base is not None else state.version)
            time.sleep(1.5)  # time for the background compaction to finish before the next cycle
        assert len(bases) > 1  # later versions were built on newer bases
        with hollow.open("movies", root=root, follow=False) as ds, ds.snapshot() as snap:
            assert [snap["Movie"][i].title for i in range(5)] == ["v5"] * 5
            assert len(snap["Movie"]) == 50
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
        assert 'hollowd_last_compaction_seconds{namespace="movies"}' in text
    finally:
        assert d.stop() == 0

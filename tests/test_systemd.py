"""systemd: the units pass systemd-analyze verify, keep /dev/shm shared, and the notify protocol works."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hollowd import errors, systemd

UNITS = Path(__file__).resolve().parent.parent / "systemd"
ANALYZE = shutil.which("systemd-analyze")


def verify(unit_text: str, tmp_path: Path) -> str:
    """Run systemd-analyze verify on *unit_text*; return what it printed (it exits 0 on many errors)."""
    unit = tmp_path / "hollowd.service"
    unit.write_text(unit_text.replace("/usr/bin/hollowd", shutil.which("true") or "/bin/true"))
    proc = subprocess.run(
        [ANALYZE or "", "verify", str(unit)], capture_output=True, text=True, timeout=120, check=False
    )
    return (proc.stdout + proc.stderr).strip() + ("" if proc.returncode == 0 else f"\nexit {proc.returncode}")


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (.ci/run installs it)")
def test_service_unit_verifies_clean(tmp_path: Path) -> None:
    output = verify((UNITS / "hollowd.service").read_text(), tmp_path)
    assert [line for line in output.splitlines() if "hollowd.service" in line or "exit" in line] == []


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (.ci/run installs it)")
def test_verify_catches_a_typo(tmp_path: Path) -> None:
    """The check above can fail: systemd-analyze reports a bad value (and still exits 0)."""
    output = verify((UNITS / "hollowd.service").read_text().replace("Type=notify", "Type=notifyy"), tmp_path)
    assert "Failed to parse service type" in output


def test_service_keeps_shm_shared_and_stops_restarting_on_bad_config() -> None:
    unit = (UNITS / "hollowd.service").read_text()
    settings = {
        line.split("=", 1)[0]: line.split("=", 1)[1] for line in unit.splitlines() if "=" in line and line[0] != "#"
    }
    assert settings["Type"] == "notify"
    assert settings["RemoveIPC"] == "no"
    assert "DynamicUser" not in settings
    assert not any(k in settings for k in ("TemporaryFileSystem", "InaccessiblePaths", "PrivateIPC"))
    assert settings["RestartPreventExitStatus"] == str(errors.EXIT_CONFIG)
    assert "/dev/shm/hollow" in settings["ReadWritePaths"]
    assert (UNITS / "hollowd.tmpfiles").read_text().splitlines()[-1].split() == [
        "d",
        "/dev/shm/hollow",
        "2750",
        "hollowd",
        "hollowd",
        "-",
    ]


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_notify_protocol(listener: socket.socket) -> None:
    assert systemd.extend_timeout(90)
    assert listener.recv(4096) == b"EXTEND_TIMEOUT_USEC=90000000"
    assert systemd.ready("serving airports 3")
    assert listener.recv(4096) == b"READY=1\nSTATUS=serving airports 3"
    assert systemd.watchdog()
    assert listener.recv(4096) == b"WATCHDOG=1"
    assert systemd.stopping()
    assert listener.recv(4096) == b"STOPPING=1"


def test_a_service_manager_that_does_not_read_never_blocks_the_daemon(listener: socket.socket) -> None:
    """A notification is dropped, not waited for, when nobody reads the socket: a daemon blocked in sendto()
    on a full queue would never see SIGTERM through (seen: tests' daemons doing a cycle every 2 s, their
    notify socket read only until READY, hung on stop). Run in a child, so a regression fails, not hangs."""
    code = (
        "from hollowd import systemd\n"
        "sent = [systemd.status(f'cycle {i}') for i in range(1000)]\n"
        "print(sent.count(True), sent.count(False))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    delivered, dropped = map(int, done.stdout.split())
    assert delivered >= 1  # as many as the queue holds
    assert dropped >= 1  # the rest dropped
    assert listener.recv(4096) == b"STATUS=cycle 0"


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"hollowd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.status("hello")
        assert sock.recv(4096) == b"STATUS=hello"


def test_outside_systemd_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not systemd.ready("x")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert systemd.watchdog_interval() is None


def test_service_gives_the_daemon_the_cpu_it_needs_against_busy_readers() -> None:
    """issue 9.19: publishing must not starve behind many busy readers at the same priority."""
    settings = dict(line.split("=", 1) for line in (UNITS / "hollowd.service").read_text().splitlines() if "=" in line)
    assert int(settings["CPUWeight"]) >= 500  # default 100: readers' services
    assert int(settings["Nice"]) < 0

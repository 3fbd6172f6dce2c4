"""The systemd notify protocol (sd_notify(3)), without libsystemd: one datagram to $NOTIFY_SOCKET.

``READY=1`` only after the first version is announced; ``EXTEND_TIMEOUT_USEC``
while a slow first build runs; ``STATUS=`` with the versions; ``WATCHDOG=1``
more often than half of ``WatchdogSec=``; ``STOPPING=1`` on the way out
(systemd.service(5); docs/pitfalls.md 19). Outside systemd every call is a no-op.
"""

from __future__ import annotations

import os
import socket


def notify(*assignments: str) -> bool:
    """Send ``KEY=value`` lines to the service manager; False when not run by one (or it is gone)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path or not assignments:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path  # '@': the abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(assignments).encode(), address)
    except OSError:
        return False
    return True


def ready(status: str) -> bool:
    return notify("READY=1", f"STATUS={status}")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def extend_timeout(seconds: float) -> bool:
    """Ask for *seconds* more to start (or stop): a first build of a big dataset may take a while."""
    return notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")


def stopping() -> bool:
    return notify("STOPPING=1")


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WatchdogSec=``), or None if none is wanted."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None


def watchdog() -> bool:
    return notify("WATCHDOG=1")

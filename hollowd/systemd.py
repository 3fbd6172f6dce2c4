"""The systemd notify protocol (sd_notify(3)), without libsystemd: one datagram to $NOTIFY_SOCKET.

``READY=1`` only after the first version is announced; ``EXTEND_TIMEOUT_USEC``
while a slow first build runs; ``STATUS=`` with the versions; ``WATCHDOG=1``
more often than half of ``WatchdogSec=``; ``STOPPING=1`` on the way out
(systemd.service(5); docs/pitfalls.md 19). Outside systemd every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable


def notify(*assignments: str) -> bool:
    """Send ``KEY=value`` lines to the service manager; False when not run by one (or it is gone), or when
    its socket's queue is full: the message is dropped rather than waited for, since a daemon blocked in
    sendto() on a manager that does not read would never act on SIGTERM (PEP 475 retries the send)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path or not assignments:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path  # '@': the abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
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


#: The longest one cycle may run with the watchdog kept quiet; past it the cycle is taken as stuck.
CYCLE_LIMIT = 3600.0


class Pinger:
    """``WATCHDOG=1`` from a thread of its own, so that a cycle longer than ``WatchdogSec=`` is not killed.

    The main loop calls :meth:`alive` each time round (it wakes at least every
    :attr:`every` seconds). The thread pings while the loop has been round
    within ``WatchdogSec``, or while *busy()* says a cycle is running, for at
    most :data:`CYCLE_LIMIT` seconds: a hung loop, or a cycle stuck for an
    hour, stops the pings and systemd restarts the daemon, as the watchdog is
    meant to. Outside systemd (no ``WATCHDOG_USEC``) it does nothing.
    """

    def __init__(self, busy: Callable[[], bool], *, cycle_limit: float = CYCLE_LIMIT) -> None:
        self._interval = watchdog_interval()
        self.every = self._interval if self._interval is not None else 3600.0
        self._busy = busy
        self._limit = cycle_limit
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self._interval is not None:
            self._thread = threading.Thread(target=self._run, name="hollowd-watchdog", daemon=True)
            self._thread.start()

    def alive(self) -> None:
        self._last = time.monotonic()

    def _run(self) -> None:
        assert self._interval is not None
        while not self._stop.wait(self._interval):
            quiet = time.monotonic() - self._last
            if quiet <= 2 * self._interval or (self._busy() and quiet <= self._limit):
                watchdog()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

"""Where hollowd keeps things when nobody said: one rule for the daemon and the ``hollow`` CLI.

Each place is, in order: the command-line flag, the configuration's setting,
the environment, then the default for who runs it. Root (the system daemon
under systemd) gets the system places; anyone else gets per-user places, so
that ``hollowd`` run by an ordinary user needs no root and touches nothing of
another user's:

=================  ===================  ===============================================
place              environment          default as root / as anyone else
=================  ===================  ===============================================
shared-memory root ``HOLLOW_ROOT``      ``/dev/shm/hollow`` for both (readers look there)
state directory    ``XDG_STATE_HOME``   ``/var/lib/hollowd`` / ``$XDG_STATE_HOME/hollowd``
                                        (``~/.local/state/hollowd``)
control socket     ``HOLLOWD_SOCKET``   ``/run/hollowd/control.sock`` /
                                        ``$XDG_RUNTIME_DIR/hollowd/control.sock``, else
                                        ``control.sock`` in the state directory
=================  ===================  ===============================================

The root is the same for every user on purpose: it is where readers find
namespaces without being told (docs/decisions.md §20).
"""

from __future__ import annotations

import os
from pathlib import Path

from hollow import layout

SYSTEM_STATE_DIR = Path("/var/lib/hollowd")
SYSTEM_SOCKET = Path("/run/hollowd/control.sock")


def as_root() -> bool:
    return os.geteuid() == 0


def default_root() -> Path:
    """``$HOLLOW_ROOT``, else ``/dev/shm/hollow``: the readers' rule (``hollow.layout.root_dir``)."""
    return layout.root_dir()


def default_state_dir() -> Path:
    if as_root():
        return SYSTEM_STATE_DIR
    state_home = os.environ.get("XDG_STATE_HOME")
    return Path(state_home) / "hollowd" if state_home else Path.home() / ".local" / "state" / "hollowd"


def default_socket() -> Path:
    """``$HOLLOWD_SOCKET``, else the system socket for root, else a per-user one."""
    given = os.environ.get("HOLLOWD_SOCKET")
    if given:
        return Path(given)
    if as_root():
        return SYSTEM_SOCKET
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "hollowd" / "control.sock" if runtime else default_state_dir() / "control.sock"

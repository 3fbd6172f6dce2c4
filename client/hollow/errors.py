"""The reader's errors: one hierarchy rooted at :class:`Error`.

A missing record is not an error: ``get`` returns None. Each class names a
condition; the message names the file, version or field and, where the fix is
a setting, says which.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat


class Error(Exception):
    """Base class of every error the hollow reader raises."""


class InvalidNameError(Error, ValueError):
    """A namespace or type name that cannot exist."""


class NamespaceNotFoundError(Error):
    """The namespace has no directory, or nothing was announced in it yet."""


class VersionNotFoundError(Error):
    """The requested version has no state file (never published, or already reclaimed)."""


class UntrustedDirectoryError(Error):
    """A root or namespace directory that someone else made or may change (a symlink, a stranger's,
    writable by others): nothing in it is read or published into (docs/decisions.md §32)."""


class CorruptStateError(Error):
    """A state or announcement file is truncated, foreign or damaged."""


class InvalidSchemaError(Error):
    """A schema file that does not compile (the message carries the compiler's)."""


class SchemaMismatchError(Error):
    """The schema a reader brought does not describe the data (different type ids)."""


class UnknownTypeError(Error, KeyError):
    """The snapshot has no record type of that name."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the sentence
        return str(self.args[0]) if self.args else ""


class ClosedError(Error):
    """The dataset or snapshot was closed; open a new one."""


class PermissionDeniedError(Error, PermissionError):
    """This process may not read a namespace's files; the message names the file, its owner and mode, and the fix.

    (Also a ``PermissionError``, which is what it was before it had a name.)
    """

    @classmethod
    def of(cls, path: str | os.PathLike[str], error: OSError | None = None) -> PermissionDeniedError:
        """The error for *path*, which this process could not open (*error*, if the kernel said so)."""
        path = os.fspath(path)
        # The nearest of path and its directories that can be looked at: when that is a directory
        # above path, it is the one this process may not search.
        st = None
        while st is None:
            try:
                st = os.stat(path)
            except OSError:
                parent = os.path.dirname(path)
                if parent == path:
                    break
                path = parent
        if st is None:
            owner, what, mode = "unknown", "", "unknown"
        else:
            owner = f"{_user(st.st_uid)}:{_group(st.st_gid)}"
            what = "directory " if stat.S_ISDIR(st.st_mode) else ""
            mode = f"{stat.S_IMODE(st.st_mode):04o}"
        me = _user(os.geteuid())
        groups = ", ".join(sorted({_group(g) for g in (os.getegid(), *os.getgroups())}))
        group = owner.partition(":")[2] or "the daemon's group"
        return cls(
            f"no read permission on {what}{path} (owned by {owner}, mode {mode}; this process runs as {me}, "
            f"in groups {groups}): add {me} to group {group} (usermod -aG {group} {me}, then start the process "
            "again), or have hollowd publish readable files for everyone with the namespace's `mode` setting "
            "(e.g. mode = 0o644)" + (f" [{error.strerror}]" if error is not None and error.strerror else "")
        )


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)

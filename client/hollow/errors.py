"""The reader's errors: one hierarchy rooted at :class:`Error`.

A missing record is not an error: ``get`` returns None. Each class names a
condition; the message names the file, version or field and, where the fix is
a setting, says which.
"""

from __future__ import annotations


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

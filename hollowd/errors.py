"""The writer's errors: one hierarchy rooted at :class:`Error`.

Errors that reject a cycle name the type, the record (by primary key, or by
its position in the input) and the field, so the fix is obvious from the log
line alone. Nothing is announced when one is raised.
"""

from __future__ import annotations

import hollow


class Error(Exception):
    """Base class of every error hollowd raises."""


class SchemaError(Error):
    """A schema file that does not compile, or a type or key that it does not declare."""


class UnsupportedSchemaError(SchemaError):
    """A schema feature hollowd cannot store or index (e.g. a float primary key)."""


class ValidationError(Error):
    """Input that would make a bad version: the whole cycle is rejected, nothing is announced."""

    def __init__(
        self, message: str, *, type_name: str | None = None, key: object = None, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.key = key
        self.field = field


class DuplicateKeyError(ValidationError):
    """Two records of one type share a primary key."""


class MissingKeyError(ValidationError):
    """A record lacks a primary-key field."""


class ValidationFailedError(ValidationError):
    """A validator rejected the candidate version; *validator* names it."""

    def __init__(self, validator: str, reason: str) -> None:
        super().__init__(f"validator {validator} rejected the version: {reason}")
        self.validator = validator
        self.reason = reason


class ConfigurationError(Error):
    """A producer or daemon setting that cannot work (an import that fails, a bad reference)."""


#: The daemon's exit statuses (sysexits(3)); systemd's unit names EXIT_CONFIG in RestartPreventExitStatus=.
EXIT_CONFIG = 78  # EX_CONFIG: fix the configuration (or a path it names) and start again
EXIT_RUNNING = 75  # EX_TEMPFAIL: another daemon holds the state directory or a namespace


class ConfigError(ConfigurationError):
    """The configuration file is unreadable or holds a bad setting; the message says where and how to fix it."""

    exit_status = EXIT_CONFIG


class AlreadyRunningError(Error):
    """Another daemon already owns the state directory or a namespace."""


class PublishError(Error):
    """The new version could not be written; the announced version is unchanged."""


class StorageFullError(PublishError):
    """No room for the new version in the root's filesystem (usually /dev/shm)."""


class VersionNotFoundError(Error, hollow.VersionNotFoundError):
    """A version to pin or restore that has no state file."""


class ProducerLockedError(Error):
    """Another producer already owns this namespace."""

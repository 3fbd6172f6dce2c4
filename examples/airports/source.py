"""The airports namespace's source: the one the daemon serves by default (``hollowd.example``)."""

from hollowd.example import INDEXES, PRIMARY_KEYS, SCHEMA, populate, records

__all__ = ["INDEXES", "PRIMARY_KEYS", "SCHEMA", "populate", "records"]

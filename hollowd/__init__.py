"""hollowd: produce versioned datasets into shared memory for hollow readers.

::

    from hollowd import Producer
    p = Producer("movies", schema="schemas/movies.capnp", primary_keys={"Movie": "id"},
                 indexes={"Movie": ["genre"]})
    v = p.run_cycle(lambda state: state.add("Movie", {"id": 1, "title": "Heat"}))

The write path. It imports ``hollow`` for the file format and for reading back.
"""

from hollowd.errors import (
    DuplicateKeyError,
    Error,
    MissingKeyError,
    ProducerLockedError,
    PublishError,
    SchemaError,
    StorageFullError,
    UnsupportedSchemaError,
    ValidationError,
    ValidationFailedError,
    VersionNotFoundError,
)
from hollowd.producer import Producer
from hollowd.state import Delta, WriteState

__all__ = [
    "Delta",
    "DuplicateKeyError",
    "Error",
    "MissingKeyError",
    "Producer",
    "ProducerLockedError",
    "PublishError",
    "SchemaError",
    "StorageFullError",
    "UnsupportedSchemaError",
    "ValidationError",
    "ValidationFailedError",
    "VersionNotFoundError",
    "WriteState",
]

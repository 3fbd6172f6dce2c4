"""hollow: read versioned datasets that hollowd publishes in shared memory.

::

    import hollow
    ds = hollow.open("movies")
    with ds.snapshot() as snap:
        movie = snap["Movie"].get(42)      # a Cap'n Proto reader into the mapping, or None
        print(movie.title)

The read path only: this package never imports ``hollowd``.
"""

from hollow.dataset import Dataset, Snapshot, open  # noqa: A004 - hollow.open, like lmdb.open
from hollow.errors import (
    ClosedError,
    CorruptStateError,
    Error,
    InvalidNameError,
    InvalidSchemaError,
    NamespaceNotFoundError,
    PermissionDeniedError,
    SchemaMismatchError,
    UnknownTypeError,
    UntrustedDirectoryError,
    VersionNotFoundError,
)
from hollow.status import Status, VersionStatus, status
from hollow.view import RecordList, TypeView

__all__ = [
    "ClosedError",
    "CorruptStateError",
    "Dataset",
    "Error",
    "InvalidNameError",
    "InvalidSchemaError",
    "NamespaceNotFoundError",
    "PermissionDeniedError",
    "RecordList",
    "SchemaMismatchError",
    "Snapshot",
    "Status",
    "TypeView",
    "UnknownTypeError",
    "UntrustedDirectoryError",
    "VersionNotFoundError",
    "VersionStatus",
    "open",
    "status",
]

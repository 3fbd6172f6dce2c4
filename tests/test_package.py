"""The read package stands alone: importing it pulls in no write path, and its API is a fixed list."""

from __future__ import annotations

import hollow
from tests.helpers import run_python


def test_import_hollow_does_not_import_hollowd() -> None:
    code = "import json, sys\nimport hollow\nprint(json.dumps(sorted(sys.modules)))"
    loaded = run_python(code)
    assert "hollow" in loaded
    assert [m for m in loaded if m.split(".")[0] == "hollowd"] == []


def test_hollow_public_api_is_exactly_the_documented_names() -> None:
    assert sorted(hollow.__all__) == [
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
    assert len(hollow.__all__) == len(set(hollow.__all__))
    for name in hollow.__all__:
        assert hasattr(hollow, name), name


def test_every_reader_error_derives_from_hollow_error() -> None:
    for name in hollow.__all__:
        obj = getattr(hollow, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, hollow.Error), name
    assert issubclass(hollow.UnknownTypeError, KeyError)

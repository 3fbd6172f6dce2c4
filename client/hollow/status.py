"""Who holds what: versions, their sizes, the announcement, leases and followers of a namespace.

Read from the files alone (no daemon needed): the namespace directory, the
announcement, /proc/locks for leases (proc(5)) and /dev/shm for the
followers' doorbells.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from hollow import doorbell, layout, lease
from hollow.errors import NamespaceNotFoundError


@dataclass(frozen=True)
class VersionStatus:
    version: int
    bytes: int
    announced: bool
    pinned: bool
    latest: bool
    leases: list[int] = field(default_factory=list)  # PIDs holding a lease


@dataclass(frozen=True)
class Status:
    namespace: str
    root: str
    announced: int | None
    pinned: int | None
    latest: int | None
    versions: list[VersionStatus]
    followers: list[int]  # PIDs of processes following the announcements

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def bytes(self) -> int:
        """Bytes of every live version's state file together."""
        return sum(v.bytes for v in self.versions)


def status(namespace: str, root: str | os.PathLike[str] | None = None) -> Status:
    """The state of *namespace* under *root* (default ``$HOLLOW_ROOT`` or ``/dev/shm/hollow``)."""
    ns_dir = layout.namespace_dir(namespace, root)
    if not ns_dir.is_dir():
        raise NamespaceNotFoundError(f"namespace {namespace!r} does not exist under {ns_dir.parent}")
    announcement = layout.read_announcement(ns_dir)
    versions = layout.list_versions(ns_dir)
    latest = max([*versions, announcement.latest if announcement else 0]) or None
    announced = announcement.version if announcement else None
    pinned = announced if announcement is not None and announcement.pinned else None
    rows = []
    for v in versions:
        try:
            size = os.stat(ns_dir / layout.state_name(v)).st_size
        except FileNotFoundError:
            continue  # reclaimed while we looked
        rows.append(
            VersionStatus(
                version=v,
                bytes=size,
                announced=v == announced,
                pinned=v == pinned,
                latest=v == latest,
                leases=lease.holders(lease.lock_path(ns_dir, v)),
            )
        )
    return Status(
        namespace=namespace,
        root=str(ns_dir.parent),
        announced=announced,
        pinned=pinned,
        latest=latest,
        versions=rows,
        followers=doorbell.followers(ns_dir.parent, namespace),
    )

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
from hollow.errors import NamespaceNotFoundError, PermissionDeniedError


@dataclass(frozen=True)
class VersionStatus:
    version: int
    bytes: int
    announced: bool
    pinned: bool
    latest: bool
    leases: list[int] = field(default_factory=list)  # PIDs holding a lease
    base_bytes: int = 0  # the base file it is built on (shared with other versions), 0 for a base
    base_inode: int = field(default=0, repr=False)
    mid_bytes: int = 0  # the earlier version it is written over (its mid; shared too), 0 for none
    mid_inode: int = field(default=0, repr=False)
    inode: int = field(default=0, repr=False)


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
        doc = asdict(self)
        for v in doc["versions"]:
            del v["inode"], v["base_inode"], v["mid_inode"]  # this host's bookkeeping, not the namespace's
        return doc

    @property
    def bytes(self) -> int:
        """Bytes of every live version's files together, each file once (versions share their base and mid)."""
        files = {v.inode: v.bytes for v in self.versions}
        files.update({v.base_inode: v.base_bytes for v in self.versions if v.base_inode})
        files.update({v.mid_inode: v.mid_bytes for v in self.versions if v.mid_inode})
        return sum(files.values())


def namespaces(root: str | os.PathLike[str] | None = None) -> list[str]:
    """The names of the namespaces under *root* (directories with a valid name), sorted."""
    path = layout.root_dir(root)
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    except PermissionError as e:
        raise PermissionDeniedError.of(path, e) from e
    out = []
    for entry in entries:
        try:
            layout.check_namespace(entry.name)
        except ValueError:
            continue
        if entry.is_dir(follow_symlinks=False):
            out.append(entry.name)
    return out


def status(namespace: str, root: str | os.PathLike[str] | None = None) -> Status:
    """The state of *namespace* under *root* (default ``$HOLLOW_ROOT`` or ``/dev/shm/hollow``)."""
    ns_dir = layout.namespace_dir(namespace, root)
    if not layout.namespace_exists(ns_dir):
        raise NamespaceNotFoundError(f"namespace {namespace!r} does not exist under {ns_dir.parent}")
    announcement = layout.read_announcement(ns_dir)
    versions = layout.list_versions(ns_dir)
    latest = max([*versions, announcement.latest if announcement else 0]) or None
    announced = announcement.version if announcement else None
    pinned = announced if announcement is not None and announcement.pinned else None
    rows = []
    for v in versions:
        name = layout.state_name(v)
        try:
            st = os.stat(ns_dir / name)
        except FileNotFoundError:
            continue  # reclaimed while we looked
        try:
            base = os.stat(layout.base_of(ns_dir / name))
            base_bytes, base_inode = base.st_size, base.st_ino
        except FileNotFoundError:
            base_bytes = base_inode = 0
        if base_inode == st.st_ino:
            base_bytes = base_inode = 0
        try:
            mid = os.stat(layout.mid_of(ns_dir / name))
            mid_bytes, mid_inode = mid.st_size, mid.st_ino
        except FileNotFoundError:
            mid_bytes = mid_inode = 0
        rows.append(
            VersionStatus(
                version=v,
                bytes=st.st_size,
                base_bytes=base_bytes,
                base_inode=base_inode,
                mid_bytes=mid_bytes,
                mid_inode=mid_inode,
                inode=st.st_ino,
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

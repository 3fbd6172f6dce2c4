"""Compaction: a version built on a base written again as a base of its own (docs/decisions.md §18).

Two ways, one builder (:func:`build_base`, bytes work: see hollowd.overlay):

* in the cycle, when a version's holes pass half its list: the version is
  written again under its own name with the holes squeezed out
  (:meth:`hollowd.Producer.compact`);
* in the background, when a version's overlay has grown past the producer's
  ``compact_share``: a :class:`Compactor` thread writes the base under a hidden
  name (``.<version>.<pid>.compacted``) while cycles go on; the next cycle
  rebases its overlay on it (hollowd.overlay.rebase) and links it as its
  ``<version>.base``. Readers and cycles never wait for it. The work is numpy
  vectors over the mapped files, which hold the GIL only between them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path

from hollow.state import StateFile
from hollowd import encoder, overlay, publish
from hollowd.schema import NamespaceSchema
from hollowd.state import BuiltType, assemble, encoder_of

log = logging.getLogger("hollowd")
SUFFIX = ".compacted"


def build_base(
    latest: dict[str, overlay.Latest],
    schema: NamespaceSchema,
    encoders: dict[str, encoder.RecordEncoder | encoder.BuilderEncoder],
    *,
    squeeze: bool,
) -> list[BuiltType]:
    """Every type of a version built on a base, as the types of a base."""
    built = []
    for name, rtype in schema.types.items():
        merged = overlay.compact(latest[name], encoder_of(rtype, encoders), squeeze=squeeze)
        built.append(
            assemble(
                rtype, merged.table, merged.segment, merged.size, merged.holes, merged.hashes,
                merged.key_fps, merged.live, merged.value_fps,
            )
        )  # fmt: skip
    return built


class Compactor(threading.Thread):
    """Writes version *version* of a namespace again as a base, under a hidden name, in the background."""

    def __init__(self, ns_dir: Path, namespace: str, schema: NamespaceSchema, version: int, mode: int) -> None:
        super().__init__(name=f"hollowd-compact-{namespace}", daemon=True)
        self.ns_dir = ns_dir
        self.namespace = namespace
        self.schema = schema
        self.version = version
        self.mode = mode
        self.path: Path | None = None  # the base, once written
        self.error: BaseException | None = None
        self.seconds = 0.0

    def run(self) -> None:
        started = time.monotonic()
        try:
            state = StateFile(self.ns_dir / str(self.version), namespace=self.namespace)
            latest = {name: overlay.Latest.read(state, rtype) for name, rtype in self.schema.types.items()}
            built = build_base(latest, self.schema, {}, squeeze=False)
            name = f".{self.version}.{os.getpid()}{SUFFIX}"
            self.path = publish.write_state_file(
                self.ns_dir, self.namespace, self.version, state.header.parent_version, self.schema, built,
                mode=self.mode, name=name,
            )  # fmt: skip
        except Exception as e:  # noqa: BLE001 - reported by the producer at its next cycle
            self.error = e
        finally:
            self.seconds = time.monotonic() - started

    def discard(self) -> None:
        """Wait for it and remove what it wrote (it was not used)."""
        self.join()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.path = None

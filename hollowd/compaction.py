"""Compaction: a version built on a base written again as a base of its own (docs/decisions.md §18).

Two ways, one builder (:func:`build_base`; the bytes work is in hollowd.overlay):

* in the cycle, when a version's holes pass half its list: the version is
  written again under its own name with the holes squeezed out
  (:meth:`hollowd.Producer.compact`);
* in the background, when a version's overlay has grown past the producer's
  ``compact_share``: a :class:`Compactor` runs ``python -m hollowd.compaction``
  in a child process (no GIL shared with the cycles), which writes the base
  under a hidden name (``.<version>.<producer pid>.compacted``); the next cycle
  rebases its overlay on it (hollowd.overlay.rebase) and links it as its
  ``<version>.base``. Readers and cycles never wait for it.

Every few compactions by bytes (:data:`hollowd.overlay.MAX_MERGES`) the next
one decodes and encodes every record again, which drops the dead bytes the
others carry over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import hollow
import hollowd
from hollow.lease import Lease
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
                merged.key_fps, merged.live, merged.value_fps, merges=merged.merges,
            )
        )  # fmt: skip
    return built


def compact_to(ns_dir: Path, namespace: str, schema: NamespaceSchema, version: int, name: str, mode: int) -> Path:
    """Write *version* again as a base named *name* in *ns_dir*, ordinals kept (what a Compactor runs)."""
    state = StateFile(ns_dir / str(version), namespace=namespace)
    if state.header.schema_fingerprint != schema.fingerprint:
        raise RuntimeError(f"{namespace} version {version} has another schema than {schema.path} has now")
    latest = {n: overlay.Latest.read(state, rtype).flat() for n, rtype in schema.types.items()}
    built = build_base(latest, schema, {}, squeeze=False)
    parent = state.header.parent_version
    return publish.write_state_file(ns_dir, namespace, version, parent, schema, built, mode=mode, name=name).path


class Compactor:
    """A background compaction of one version, in a child process.

    It holds a lease on the version until the child is done, so that the cycles
    going on meanwhile do not reclaim what the child is reading (with ``retain``
    versions and fast cycles, they would before the child even opened it).
    """

    def __init__(self, ns_dir: Path, namespace: str, schema: NamespaceSchema, version: int, mode: int) -> None:
        self.version = version
        self._lease: Lease | None = Lease(ns_dir, version)  # O_CLOEXEC: the parent's, not the child's
        self.path: Path | None = ns_dir / f".{version}.{os.getpid()}{SUFFIX}"
        self.error: str | None = None
        self.seconds = 0.0
        self._started = time.monotonic()
        job = {
            "dir": str(ns_dir),
            "namespace": namespace,
            "schema": str(schema.path),
            "primary_keys": {n: list(t.primary.fields) for n, t in schema.types.items()},
            "indexes": {n: [list(ix.fields) for ix in t.indexes] for n, t in schema.types.items()},
            "version": version,
            "name": self.path.name,
            "mode": mode,
        }
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "hollowd.compaction", json.dumps(job)],
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                close_fds=True,
            )
        except BaseException:
            self._release()
            raise

    def is_alive(self) -> bool:
        if self._proc.poll() is None:
            return True
        self._finish()
        return False

    def join(self) -> None:
        self._proc.wait()
        self._finish()

    def _release(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()

    def _finish(self) -> None:
        self._release()
        if self._proc.stderr is None:
            return
        err = self._proc.stderr.read().decode(errors="replace").strip()
        self._proc.stderr.close()
        self._proc.stderr = None
        self.seconds = time.monotonic() - self._started
        if self._proc.returncode != 0:
            self.error = err.splitlines()[-1] if err else f"exit status {self._proc.returncode}"
            self._unlink()

    def discard(self) -> None:
        """Stop it if it runs, and remove what it wrote (it was not used)."""
        if self._proc.poll() is None:
            self._proc.kill()
        self.join()
        self._unlink()

    def _unlink(self) -> None:
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.path = None


def _child_env() -> dict[str, str]:
    """This process's environment, with the directories this process imported hollow and hollowd from."""
    here = [str(Path(m.__file__ or "").resolve().parent.parent) for m in (hollowd, hollow)]
    path = [*dict.fromkeys(here), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def main(argv: list[str]) -> int:
    job = json.loads(argv[0])
    schema = NamespaceSchema(job["schema"], job["primary_keys"], job["indexes"])
    compact_to(Path(job["dir"]), job["namespace"], schema, job["version"], job["name"], job["mode"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

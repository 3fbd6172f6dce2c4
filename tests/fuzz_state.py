"""Mutated and truncated state files, read the way a service reads them (issue 9, items 7 and 8).

Shared by ``tests/test_damage.py`` (a few hypothesis examples) and ``bench/chaos.py``
(the long run). :func:`run` executes in a fresh interpreter (``python -m
tests.fuzz_state``), so that a signal (SIGSEGV, SIGBUS, SIGABRT) or a hang fails
one batch and names the mutation, instead of killing the caller.

A mutation damages one of the files of a published namespace whose version 1 is
a base, version 2 an overlay on it and version 3 an overlay over version 2 (its mid):

* ``base``: the base, planted as a version of its own;
* ``overlay``: the overlay, over the intact base;
* ``under``: the intact overlay, over a damaged copy of its base;
* ``top``: version 3, over its intact mid and base;
* ``mid``: the intact version 3, over a damaged copy of its mid.

The damage is a bit flip, bytes overwritten (zeros, ones or random), or a
truncation, at any offset, the header included. ``seal`` says what the damage
leaves intact:

* ``none``: the bytes only (a bit rot, a stray write, a short copy);
* ``header``: the header's own checks made to pass again (its file length,
  envelope hash and checksum recomputed): damage behind a sound header;
* ``forged``: every hash recomputed, the content hash too: no longer damage but a
  different file that a writer of the namespace directory made on purpose.

Every read of the damaged version (each type's len, iteration with every field,
``get`` of every key, ``find`` of every indexed value) ends as one of: ``same``
(the answers of the intact version), ``named`` (a ``hollow.Error``), ``wrong``
(other answers, no error), ``other`` (another exception: its type is kept),
``hang`` (a read ran longer than the alarm), or, for the whole batch, a signal.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import xxhash

import hollow
from hollow import layout
from hollowd import Producer, overlay

TARGETS = ("base", "overlay", "under", "top", "mid")
KINDS = ("flip", "zeros", "ones", "random", "truncate")
SEALS = ("none", "header", "forged")
HANG_SECONDS = 10


@dataclasses.dataclass(frozen=True)
class Mutation:
    target: str  # TARGETS
    kind: str  # KINDS
    at: float  # where, as a share of the file (0 is the header's first byte)
    length: int  # bytes overwritten (ignored for flip and truncate)
    seal: str  # SEALS
    seed: int = 0

    def apply(self, data: bytes) -> bytes:
        """*data* damaged as this mutation says."""
        h = layout.Header.unpack(data, what="fuzz", size=len(data))
        b = bytearray(data)
        at = min(int(self.at * len(b)), len(b) - 1)
        if self.kind == "truncate":
            del b[at:]
        elif self.kind == "flip":
            b[at] ^= 1 << (self.seed % 8)
        else:
            n = min(self.length, len(b) - at)
            fill = {"zeros": bytes(n), "ones": b"\xff" * n}.get(self.kind)
            b[at : at + n] = fill if fill is not None else random.Random(self.seed).randbytes(n)
        if self.seal != "none" and len(b) >= layout.HEADER_SIZE:
            h = layout.Header.unchecked(b)  # the fields as they are now, damaged or not
            end = min(h.envelope_offset + h.envelope_length, len(b))
            h = dataclasses.replace(
                h, file_length=len(b), envelope_hash=xxhash.xxh3_64_intdigest(bytes(b[h.envelope_offset : end]))
            )
            if self.seal == "forged":
                h = dataclasses.replace(h, content_hash=xxhash.xxh3_64_intdigest(bytes(b[layout.HEADER_SIZE :])))
            b[: layout.HEADER_SIZE] = h.pack()
        return bytes(b)


def publish(root: Path, ns: str = "movies", n: int = 60) -> Path:
    """Version 1 (a base), 2 (an overlay on it) and 3 (over 2 as its mid) of *ns*: movies, actors
    and roles."""
    schema = Path(__file__).resolve().parent.parent / "schemas" / "movies.capnp"
    kw: dict[str, Any] = {
        "primary_keys": {"Movie": "id", "Actor": "id", "Role": ["movieId", "actorId"]},
        "indexes": {"Movie": ["genre", "year"], "Role": ["actorId"]},
    }
    genres = ["Drama", "Comedy", "Action", "Horror", "Documentary"]

    def fill(changed: bool) -> Any:
        def populate(state: Any) -> None:
            for i in range(n):
                if changed and i % 7 == 3:
                    continue  # removed in version 2
                title = f"Movie {i}" + (" (restored)" if changed and i % 5 == 0 else "")
                state.add("Movie", {"id": i, "title": title, "year": 1950 + i % 70, "genre": genres[i % 5]})
                state.add("Actor", {"id": i, "name": f"Actor {i}"})
                state.add("Role", {"movieId": i, "actorId": i % 9, "character": f"Role {i}"})
            if changed:
                state.add("Movie", {"id": 1000, "title": "New", "year": 2020, "genre": "Western"})

        return populate

    def third(delta: Any) -> None:
        delta.upsert("Movie", {"id": 1, "title": "Movie 1 (third)", "year": 1999, "genre": "Western"})
        delta.upsert("Movie", {"id": 1001, "title": "Newer", "year": 2021, "genre": "Drama"})
        delta.remove("Movie", 2)
        delta.remove("Role", (4, 4))

    saved = overlay.TOP_FROM, overlay.TOP_MIN
    overlay.TOP_FROM, overlay.TOP_MIN = 1, 64  # a version over a mid at this size
    try:
        with Producer(ns, schema=schema, root=root, **kw) as p:
            assert p.run_cycle(fill(False)) == 1
            assert p.run_cycle(fill(True)) == 2
            assert p.run_incremental(third) == 3
    finally:
        overlay.TOP_FROM, overlay.TOP_MIN = saved
    ns_dir = root / ns
    assert (ns_dir / "2.base").exists(), "version 2 should be an overlay on version 1"
    assert (ns_dir / "3.mid").exists(), "version 3 should be over version 2"
    return ns_dir


def answers(snap: Any) -> dict[str, Any]:
    """Everything a service could ask of a version, as JSON-able values."""
    out: dict[str, Any] = {}
    for t in snap.types:
        view = snap[t]
        recs = [r.to_dict() for r in view]
        out[t] = {"len": len(view), "records": recs}
        pk = view.primary.fields
        keys = [r[pk[0]] if len(pk) == 1 else tuple(r[f] for f in pk) for r in recs]
        out[t]["get"] = [None if (r := view.get(k)) is None else r.to_dict() for k in keys]
        out[t]["absent"] = [view.get(k) for k in ((10**6,) if len(pk) == 1 else ((10**6, 1),))] == [None]
        for ix in view.indexes:
            values = sorted({tuple(r.get(f) for f in ix.fields) for r in recs}, key=repr)
            out[t][f"find {ix.fields}"] = [
                [r.to_dict() for r in view.find(**dict(zip(ix.fields, v, strict=True)))] for v in values
            ]
    return out


class _Hang(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Hang


def run(root: Path, mutations: Iterable[Mutation], ns: str = "movies") -> dict[str, Any]:
    """Plant each mutation in a root of its own, open it as a service would, read it whole,
    and count how each ended."""
    ns_dir = root / ns
    base_bytes = (ns_dir / "1").read_bytes()
    overlay_bytes = (ns_dir / "2").read_bytes()
    top_bytes = (ns_dir / "3").read_bytes()
    counts: dict[str, int] = {}
    by_target: dict[str, dict[str, int]] = {}
    examples: dict[str, list[str]] = {}
    signal.signal(signal.SIGALRM, _alarm)
    want = {}
    for v, target in ((1, "base"), (2, "overlay"), (3, "top")):
        with hollow.open(ns, root=root, follow=False) as ds, ds.attach(v) as snap:
            want[target] = answers(snap)
    want["under"], want["mid"] = want["overlay"], want["top"]
    for i, m in enumerate(mutations):
        d = root / f"m{i}" / ns
        (d / layout.ANNOUNCE_DIR).mkdir(parents=True)
        if m.target == "base":
            (d / "1").write_bytes(m.apply(base_bytes))
        elif m.target == "overlay":
            (d / "2").write_bytes(m.apply(overlay_bytes))
            os.link(ns_dir / "1", d / "2.base")
        elif m.target == "under":
            os.link(ns_dir / "2", d / "2")
            (d / "2.base").write_bytes(m.apply(base_bytes))
        elif m.target == "top":
            (d / "3").write_bytes(m.apply(top_bytes))
            os.link(ns_dir / "2", d / "3.mid")
            os.link(ns_dir / "1", d / "3.base")
        else:
            os.link(ns_dir / "3", d / "3")
            (d / "3.mid").write_bytes(m.apply(overlay_bytes))
            os.link(ns_dir / "1", d / "3.base")
        version = {"base": 1, "top": 3, "mid": 3}.get(m.target, 2)
        layout.announcement_path(d).write_bytes(layout.Announcement(version).dumps())
        print(f"mutation {i}: {m}", file=sys.stderr, flush=True)
        signal.alarm(HANG_SECONDS)
        try:
            with hollow.open(ns, root=d.parent, follow=False) as ds, ds.snapshot() as snap:
                got = answers(snap)
            outcome = "same" if got == want[m.target] else "wrong"
        except hollow.Error as e:
            outcome, got = "named", str(e)
        except _Hang:
            outcome, got = "hang", ""
        except Exception as e:
            outcome, got = f"other:{type(e).__name__}", str(e)[:200]
        finally:
            signal.alarm(0)
        counts[outcome] = counts.get(outcome, 0) + 1
        per = by_target.setdefault(f"{m.target}/{m.seal}", {})
        per[outcome] = per.get(outcome, 0) + 1
        if outcome not in ("same", "named"):
            examples.setdefault(outcome, []).append(f"{m}: {got}"[:300])
        shutil.rmtree(d.parent)
    return {"counts": counts, "by_target": by_target, "examples": {k: v[:5] for k, v in examples.items()}}


def random_mutations(n: int, seed: int, *, seals: tuple[str, ...] = SEALS) -> list[Mutation]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        # a third of them in the first 2%: the header, the envelope's neighbourhood and small sections
        at = rnd.random() * (0.02 if rnd.random() < 0.33 else 1.0)
        out.append(
            Mutation(
                target=rnd.choice(TARGETS),
                kind=rnd.choice(KINDS),
                at=at,
                length=rnd.choice((1, 2, 4, 8, 16, 64, 512)),
                seal=rnd.choice(seals),
                seed=rnd.randrange(1 << 30),
            )
        )
    return out


def main() -> None:
    """``python -m tests.fuzz_state ROOT MUTATIONS.json``: prints the outcome counts as JSON."""
    root, src = Path(sys.argv[1]), Path(sys.argv[2])
    mutations = [Mutation(**m) for m in json.loads(src.read_text())]
    print(json.dumps(run(root, mutations)))


if __name__ == "__main__":
    main()

"""Damaged files (issue 9, items 7-9): a damaged version is a named error, never a wrong answer,
a hang or a signal, and a following Dataset never moves to one.

The mutations run in a fresh interpreter (``tests/fuzz_state.py``), so that a crash
or a hang fails the test and names the mutation rather than killing pytest.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import xxhash
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import hollow
from hollow import layout
from hollow.state import StateFile
from tests import fuzz_state
from tests.helpers import ROOT, movies_producer
from tests.test_follow import Child, version_data

mutation = st.builds(
    fuzz_state.Mutation,
    target=st.sampled_from(fuzz_state.TARGETS),
    kind=st.sampled_from(fuzz_state.KINDS),
    at=st.one_of(st.floats(0, 0.03), st.floats(0, 1)),
    length=st.sampled_from((1, 2, 8, 64, 512)),
    seal=st.sampled_from(("none", "header")),
    seed=st.integers(0, 1 << 30),
)


def fuzz(root: Path, mutations: list[fuzz_state.Mutation]) -> dict[str, Any]:
    src = root / "mutations.json"
    src.write_text(json.dumps([dataclasses.asdict(m) for m in mutations]))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz_state", str(root), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=ROOT,
    )
    last = proc.stderr.strip().splitlines()[-1:] if proc.stderr else []
    assert proc.returncode == 0, f"the reader died (rc {proc.returncode}) at {last}"
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


@pytest.fixture
def published(root: Path) -> Path:
    return fuzz_state.publish(root)


# No shrinking: each example is one subprocess reading 25 files; a failure prints its batch and the examples.
@settings(
    max_examples=6,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(mutations=st.lists(mutation, min_size=25, max_size=25))
def test_a_damaged_base_or_overlay_is_a_named_error(published: Path, mutations: list[fuzz_state.Mutation]) -> None:
    out = fuzz(published.parent, mutations)
    bad = {k: v for k, v in out["counts"].items() if k not in ("named", "same")}
    assert bad == {}, f"damage that was not a hollow.Error: {bad}; e.g. {out['examples']}"


def test_damage_in_every_section_is_found(published: Path) -> None:
    """A bit flipped anywhere in the records, indexes or overlay arrays (behind a sound header) is refused:
    the answers of a damaged file are never served, even when they would look right."""
    mutations = [
        fuzz_state.Mutation(target, "flip", at / 40, 1, "header", seed=at)
        for target in fuzz_state.TARGETS
        for at in range(2, 40)
    ]
    out = fuzz(published.parent, mutations)
    assert out["counts"] == {"named": len(mutations)}, out["examples"]


def test_forged_files_never_hang_or_crash(published: Path) -> None:
    """A file whose every hash was recomputed is not damage but a forgery (a writer of the namespace
    directory); the reader may answer from it, but never hangs, loops or dies."""
    mutations = fuzz_state.random_mutations(60, seed=9, seals=("forged",))
    out = fuzz(published.parent, mutations)
    assert "hang" not in out["counts"], out["examples"]


# A following reader: prints each version it moves to, and on "ask" what it serves and why it stays.
FOLLOWER = r"""
import json, sys
import hollow
root = sys.argv[1]
ds = hollow.open("movies", root=root, poll_interval=0.2)
ds.on_update(lambda v: print(json.dumps({"event": "on", "version": v}), flush=True))
print(json.dumps({"event": "ready", "version": ds.version}), flush=True)
for line in sys.stdin:
    with ds.snapshot() as snap:
        try:
            title = snap["Movie"][0].title
        except hollow.Error as e:
            title = "error: " + type(e).__name__
    err = ds.last_error
    print(json.dumps({"event": "state", "version": snap.version, "title": title,
                      "error": None if err is None else type(err).__name__ + ": " + str(err)}), flush=True)
ds.close()
print(json.dumps({"event": "end"}), flush=True)
"""


def damage_in_place_of(ns_dir: Path, version: int, offset: int) -> None:
    """Put a copy of *version*'s file with one bit flipped at *offset* in its place (a new inode: the
    published file is never written, docs/pitfalls.md 1), its header left sound."""
    path = ns_dir / str(version)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    tmp = ns_dir / f".{version}.damaged"
    tmp.write_bytes(bytes(data))
    os.rename(tmp, path)


def test_a_follower_never_moves_to_a_damaged_version_and_moves_on_to_the_next_good_one(root: Path) -> None:
    with movies_producer(root) as p, Child(FOLLOWER, root) as child:
        p.run_cycle(version_data(1))
        child.expect("ready", version=1)
        p.pin(1)
        assert p.run_cycle(version_data(2)) == 2  # published, not announced (pinned)
        h = layout.Header.unpack(
            (root / "movies" / "2").read_bytes(), what="v2", size=(root / "movies" / "2").stat().st_size
        )
        damage_in_place_of(root / "movies", 2, h.envelope_offset - 8)  # a record chunk's last word, before the envelope
        p.unpin()  # announces 2
        child.send("ask")
        # the follower has certainly looked at 2 once it reports an error about it
        for _ in range(200):
            state = child.expect("state")
            if state["error"]:
                break
            time.sleep(0.05)
            child.send("ask")
        assert state["version"] == 1
        assert state["title"] == "v1"
        assert "CorruptStateError" in state["error"]
        assert "/2:" in state["error"]
        assert "damaged" in state["error"]
        assert p.run_cycle(version_data(3)) == 3  # the producer cannot read 2 back: it starts afresh
        child.expect("on", version=3)
        child.send("ask")
        assert child.expect("state")["title"] == "v3"
        child.finish()


def forge_in_place_of(ns_dir: Path, version: int, offset: int) -> None:
    """Zero a word of *version* at *offset* and seal it again (content hash, header): a file that passes
    every check a reader makes before using it, yet fails when its records are first read."""
    path = ns_dir / str(version)
    data = bytearray(path.read_bytes())
    data[offset : offset + 8] = bytes(8)
    h = layout.Header.unpack(bytes(data), what="forged", size=len(data))
    content = xxhash.xxh3_64_intdigest(bytes(data[layout.HEADER_SIZE :]))
    data[: layout.HEADER_SIZE] = dataclasses.replace(h, content_hash=content).pack()
    tmp = ns_dir / f".{version}.forged"
    tmp.write_bytes(bytes(data))
    os.rename(tmp, path)


def test_a_version_that_fails_on_first_use_sends_the_follower_back_to_the_one_before(root: Path) -> None:
    with movies_producer(root) as p, Child(FOLLOWER, root) as child:
        p.run_cycle(version_data(1))
        child.expect("ready", version=1)
        p.pin(1)
        assert p.run_cycle(version_data(2)) == 2
        ns_dir = root / "movies"
        chunk = StateFile(ns_dir / "2", namespace="movies").type_state("Movie").overlay.chunks[0]
        forge_in_place_of(ns_dir, 2, chunk.offset)  # the chunk's root pointer
        p.unpin()
        child.expect("on", version=2)  # it passed the checks a reader can afford before switching
        child.send("ask")
        assert child.expect("state") == {
            "event": "state",
            "version": 2,
            "title": "error: CorruptStateError",
            "error": child.events[-1]["error"],
        }
        assert {"event": "on", "version": 1} in child.events  # back, in the same call
        child.send("ask")
        state = child.expect("state")
        assert (state["version"], state["title"]) == (1, "v1")
        assert "CorruptStateError" in state["error"]
        assert "/2:" in state["error"]
        p.run_cycle(version_data(3))
        child.expect("on", version=3)
        child.finish()


# -- item 9: no code path opens a published file for writing ------------------------------------

_WRITES = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND
_watched: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _watched is not None:
        path, mode, flags = args
        if isinstance(path, (str, bytes, os.PathLike)) and (flags & _WRITES or (mode and set(mode) & set("wa+x"))):
            _watched.append(os.fsdecode(path))


sys.addaudithook(_audit)  # cannot be removed: it does nothing unless a test sets _watched


def _published(path: str) -> bool:
    """Whether *path* names a published file: a version, its base link, the announcement. Not a lockfile:
    the producer opens those for writing to take their write lock (docs/decisions.md §33), and they hold
    no data."""
    name = os.path.basename(path)
    return name == layout.ANNOUNCED or layout.parse_state_name(name.removesuffix(".base")) is not None


def test_no_code_path_opens_a_published_file_for_writing(root: Path, tmp_path: Path) -> None:
    global _watched
    from hollowd import compaction  # noqa: PLC0415 - the paths this test runs

    _watched = []
    try:
        with movies_producer(root, retain=2) as p:
            p.run_cycle(version_data(1))
            p.run_cycle(version_data(2))  # an overlay
            p.run_incremental(lambda d: d.upsert("Movie", {"id": 3, "title": "x"}))
            p.run_incremental(lambda d: d.remove("Movie", 4))
            p.pin(p.versions()[0])
            p.unpin()
            p.compact()
            v = p.run_cycle(version_data(5))
            saved = tmp_path / "latest.state"
            saved.write_bytes((root / "movies" / str(v)).read_bytes())
            if (root / "movies" / f"{v}.base").exists():
                layout.base_of(saved).write_bytes((root / "movies" / f"{v}.base").read_bytes())
            compaction.compact_to(root / "movies", "movies", p.schema, v, ".compacted-here", 0o640)
            (root / "movies" / ".compacted-here").unlink()
            p.reclaim()
        shutil.rmtree(root / "movies")
        with movies_producer(root) as p:
            p.materialize(saved)  # the daemon's restore after a reboot
            with hollow.open("movies", root=root) as ds, ds.snapshot() as snap:
                assert snap["Movie"][0].title == "v5"
        opened, _watched = _watched, None
    finally:
        _watched = None
    assert opened, "the audit hook saw no write at all: it is not watching"
    assert [p for p in opened if _published(p)] == []

"""Chaos: kills, damaged files, full disks, bad inputs and load, with real processes (issue 9).

Prints one table of what was tried and how each ended:

* **kills**: ``kill -9`` of a producer process at random moments of its cycles, of
  the daemon (``python -m hollowd.daemon``) while its source changes, and of
  following readers; readers check throughout that every record they read belongs
  to their snapshot's version and that versions never go back;
* **files mutated**: the long version of ``tests/test_damage.py``'s fuzzer
  (``tests/fuzz_state.py``): bit flips, overwrites and truncations of a base, of
  an overlay and of the base under an overlay, each read whole by a fresh open,
  by how each ended (named error / same answers / wrong answer / hang / signal);
* **full disks**: a real tmpfs with 0-6 free inodes or a few KiB free at the
  moment of a cycle: the cycle fails before publishing or publishes and
  announces, never one without the other;
* **bad inputs**: empty and malformed sources read by the daemon's file source;
* **load**: 64 readers taking snapshots while 10 versions a second are published
  for 60 s: reader errors, and the most versions present at once.

Run ``.venv/bin/python bench/chaos.py`` (about 5 minutes; ``--quick`` for one) as
root (tmpfs mounts). Hostile users and control-socket abuse are issue 9's items 1-6
and are not measured here.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT_DIR))
sys.path.insert(0, str(ROOT_DIR / "bench"))

import follow  # noqa: E402 - bench/follow.py: the snapshot-checking readers and the continuous load

import hollowd  # noqa: E402
from hollow import layout  # noqa: E402
from hollowd import Producer  # noqa: E402
from tests import fuzz_state  # noqa: E402
from tests.daemons import Daemon, announced, movies_config, write_jsonl  # noqa: E402

SCHEMA = ROOT_DIR / "schemas" / "movies.capnp"

# A producer that publishes forever: each version's records name it (bench/follow.py's readers check that).
PRODUCER = r"""
import sys, time
sys.path.insert(0, sys.argv[2])
import follow
from hollowd import Producer
p = Producer("movies", schema=follow.SCHEMA, primary_keys={"Movie": "id"}, root=sys.argv[1], retain=3)
while True:
    k = p._next_version()
    p.run_cycle(lambda s: s.add_all("Movie", follow._records(k)))
    print(k, flush=True)
    time.sleep(0.005)
"""


def consistent_reader(root: str, stop_file: str) -> None:
    """Snapshots in a loop, for a namespace whose versions the daemon numbers: every record of one
    snapshot must come from the same write of the source ("v<k> movie <i>"), and k never go back."""
    import hollow  # noqa: PLC0415

    ds = hollow.open("movies", root=root)
    snaps = errors = 0
    last_version = last_k = 0
    print("ready", flush=True)
    while not os.path.exists(stop_file):
        try:
            with ds.snapshot() as snap:
                movies = snap["Movie"]
                ks = {movies[i].title.split(" ")[0] for i in (0, 50, 99)}
                k = int(ks.pop()[1:]) if len(ks) == 1 else -1
                errors += k < 0 or snap.version < last_version or (snap.version > last_version and k < last_k)
                last_version, last_k = snap.version, max(k, last_k)
            snaps += 1
        except Exception:
            errors += 1
    ds.close()
    print(json.dumps({"snapshots": snaps, "errors": errors}), flush=True)


def _start_consistent(root: Path, stop: Path, count: int) -> list[subprocess.Popen[str]]:
    procs = [
        subprocess.Popen([sys.executable, __file__, "--child", str(root), str(stop)], stdout=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    for p in procs:
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("reader failed to start")
    return procs


# --- kills ---------------------------------------------------------------------------------------


def kill_producers(root: Path, kills: int, readers: int) -> dict[str, Any]:
    """kill -9 a publishing producer *kills* times at random moments; readers check every snapshot."""
    stop = root / "stop"
    with Producer("movies", schema=SCHEMA, primary_keys={"Movie": "id"}, root=root, retain=3) as p:
        p.run_cycle(lambda s: s.add_all("Movie", follow._records(1)))
    procs = follow._start("snapshots", root, stop, readers)
    versions_went_back = 0
    last = announced(root)
    survived = 0
    for _ in range(kills):
        child = subprocess.Popen(
            [sys.executable, "-c", PRODUCER, str(root), str(ROOT_DIR / "bench")], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        child.stdout.readline()  # it is publishing: kill it at a random moment of its next cycles
        time.sleep(random.uniform(0, 0.3))
        child.send_signal(signal.SIGKILL)
        child.stdout.close()
        child.wait()
        now = announced(root)
        versions_went_back += now < last
        last = now
        survived += 1
    # after the kills, a producer takes the namespace over and goes on publishing
    with Producer("movies", schema=SCHEMA, primary_keys={"Movie": "id"}, root=root, retain=3) as p:
        v = p.run_cycle(lambda s: s.add_all("Movie", follow._records(p._next_version())))
        resumed = v > last
    out = follow._finish(procs, stop)
    return {
        "kills": survived,
        "reader_errors": sum(o["errors"] for o in out),
        "snapshots": sum(o["snapshots"] for o in out),
        "went_back": versions_went_back,
        "resumed": resumed,
        "last": v,
    }


def kill_daemons(tmp: Path, root: Path, kills: int, readers: int) -> dict[str, Any]:
    """kill -9 hollowd *kills* times while its source keeps changing; readers check every snapshot."""
    source = tmp / "movies.jsonl"
    config = movies_config(tmp, root, source, schema=SCHEMA, debounce=0.05)
    k = 0

    def write_source() -> None:  # write, then rename: what the README asks of a source's writer
        nonlocal k
        k += 1
        write_jsonl(source, follow._records(k))

    write_source()
    stop = root / "stop"
    procs: list[subprocess.Popen[str]] = []
    went_back = restarts_served = 0
    last = 0
    for i in range(kills + 1):
        d = Daemon(config, tmp)  # its log: tmp/daemon.log
        deadline = time.monotonic() + 60
        while announced(root) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        if i == 0:
            procs = _start_consistent(root, stop, readers)
        served = announced(root)
        restarts_served += served >= last > 0
        went_back += served < last
        write_source()  # wait until this daemon publishes, then kill it at a random moment of its next cycles
        deadline = time.monotonic() + 60
        while announced(root) <= served and time.monotonic() < deadline:
            time.sleep(0.02)
        for _ in range(random.randint(1, 4)):
            write_source()
            time.sleep(random.uniform(0.02, 0.25))
        d.stop(signal.SIGKILL if i < kills else signal.SIGTERM)
        last = max(last, announced(root))
    out = follow._finish(procs, stop) if procs else []
    return {
        "kills": kills,
        "restarts_serving_at_once": restarts_served,
        "went_back": went_back,
        "reader_errors": sum(o["errors"] for o in out),
        "snapshots": sum(o["snapshots"] for o in out),
        "last": last,
    }


def kill_followers(root: Path, kills: int) -> dict[str, Any]:
    """kill -9 following readers that hold snapshots; the versions they leased are reclaimed after."""
    stop = root / "stop"
    p = Producer("movies", schema=SCHEMA, primary_keys={"Movie": "id"}, root=root, retain=2)
    try:
        p.run_cycle(lambda s: s.add_all("Movie", follow._records(1)))
        for _ in range(kills):
            procs = follow._start("snapshots", root, stop, 1)
            for _ in range(3):
                p.run_cycle(lambda s: s.add_all("Movie", follow._records(p._next_version())))
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait()
        for _ in range(3):
            p.run_cycle(lambda s: s.add_all("Movie", follow._records(p._next_version())))
        present = len(layout.list_versions(p.dir))
    finally:
        p.close()
    return {"kills": kills, "versions_present_after": present, "retain": 2}


# --- damaged files -------------------------------------------------------------------------------


def mutate(root: Path, count: int, seed: int) -> dict[str, Any]:
    fuzz_state.publish(root)
    mutations = fuzz_state.random_mutations(count, seed)
    src = root / "mutations.json"
    src.write_text(json.dumps([dataclasses.asdict(m) for m in mutations]))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz_state", str(root), str(src)],
        capture_output=True,
        text=True,
        cwd=ROOT_DIR,
        check=False,
        timeout=3600,
    )
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1:]
        return {"signal": 1, "rc": proc.returncode, "at": last}
    out: dict[str, Any] = json.loads(proc.stdout)
    by_seal: dict[str, dict[str, int]] = {}
    for key, counts in out["by_target"].items():
        seal = key.split("/")[1]
        agg = by_seal.setdefault(seal, {})
        for k, v in counts.items():
            agg[k] = agg.get(k, 0) + v
    out["by_seal"] = by_seal
    return out


# --- full disks ----------------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Any:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


def full_disks(tmp: Path) -> dict[str, int]:
    """Cycles at the edge of a full tmpfs: a few inodes free, or a few KiB."""
    outcomes = {"tried": 0, "failed cleanly": 0, "published and announced": 0, "published, not announced": 0}
    cases = [("inodes", n) for n in range(7)] + [("bytes", kib) for kib in (0, 4, 8, 12, 16, 24, 32, 48, 64)]
    for kind, amount in cases:
        for change in ("base", "overlay"):
            mnt = tmp / f"shm-{kind}-{amount}-{change}"
            with (
                tmpfs(mnt, "size=2m,nr_inodes=64"),
                Producer("movies", schema=SCHEMA, primary_keys={"Movie": "id"}, root=mnt, retain=1) as p,
            ):
                before = p.run_cycle(lambda s: s.add_all("Movie", follow._records(1))) if change == "overlay" else 0
                fillers = []
                if kind == "inodes":
                    while os.statvfs(mnt).f_ffree > amount:
                        fillers.append(mnt / f"f{len(fillers)}")
                        fillers[-1].touch()
                else:
                    filler = mnt / "filler"
                    st = os.statvfs(mnt)
                    room = st.f_bavail * st.f_frsize - amount * 1024
                    with open(filler, "wb") as f, contextlib.suppress(OSError):
                        os.posix_fallocate(f.fileno(), 0, max(room, 1))
                outcomes["tried"] += 1
                try:
                    v = p.run_cycle(lambda s: s.add_all("Movie", follow._records(2)))
                except hollowd.StorageFullError:
                    ok = layout.list_versions(mnt / "movies") == ([before] if before else [])
                    outcomes["failed cleanly" if ok else "published, not announced"] += 1
                else:
                    ok = announced(mnt) == v
                    outcomes["published and announced" if ok else "published, not announced"] += 1
    return outcomes


# --- bad inputs ----------------------------------------------------------------------------------

BAD_INPUTS: dict[str, tuple[str, bytes]] = {
    "0-byte JSON Lines file": ("jsonl", b""),
    "blank lines only": ("jsonl", b"\n\n\n"),
    "[] as JSON": ("json", b"[]"),
    "CSV header alone": ("csv", b"id,title\n"),
    "a line without its newline (being written)": ("jsonl", b'{"id": 1, "title": "a"}\n{"id": 2, "ti'),
    "not JSON": ("jsonl", b"{garbage\n"),
    "10,000-deep nested array": ("jsonl", b"[" * 10_000 + b"]" * 10_000 + b"\n"),
    "a record that is a number": ("jsonl", b"42\n"),
    "a key of the wrong type": ("jsonl", b'{"id": "one", "title": "a"}\n'),
    "a duplicate key": ("jsonl", b'{"id": 1, "title": "a"}\n{"id": 1, "title": "b"}\n'),
    "a field out of range": ("jsonl", b'{"id": 1, "year": 70000}\n'),
    "a negative unsigned key": ("jsonl", b'{"id": -1}\n'),
}


def bad_inputs(tmp: Path, root: Path) -> dict[str, str]:
    """Each bad input through the daemon's file source, after a good version: it must keep that version."""
    from hollowd.sources import FileSource  # noqa: PLC0415

    out = {}
    with Producer("movies", schema=SCHEMA, primary_keys={"Movie": "id"}, root=root) as p:
        good = tmp / "good.jsonl"
        good.write_text("".join(json.dumps(r) + "\n" for r in follow._records(1)))
        v1 = p.run_cycle(FileSource(good, p.schema, type_name="Movie"))
        for name, (fmt, data) in BAD_INPUTS.items():
            path = tmp / f"bad.{fmt}"
            path.write_bytes(data)
            try:
                v = p.run_cycle(FileSource(path, p.schema, type_name="Movie"))
            except (hollowd.Error, RecursionError, UnicodeError, ValueError, TypeError) as e:
                named = isinstance(e, hollowd.Error)
                out[name] = ("refused: " if named else f"raised {type(e).__name__}: ") + str(e)[:90]
            else:
                out[name] = f"PUBLISHED version {v}" if v != v1 else "unchanged"
            path.unlink()
            if announced(root) != v1:
                out[name] += f" (announced moved to {announced(root)})"
                v1 = announced(root)
    return out


def load(root: Path, readers: int, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = follow.measure_continuous(root, readers, seconds, 10.0, 5)
    out["for_seconds"] = seconds
    return out


# --- the table -----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer kills and mutations, a 10 s load")
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--child", nargs=2, metavar=("ROOT", "STOP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        consistent_reader(*args.child)
        return
    random.seed(args.seed)
    q = args.quick
    base = Path(f"/dev/shm/hollow-bench-chaos-{os.getpid()}")
    tmp = Path(tempfile.mkdtemp(prefix="hollow-chaos-"))
    results: dict[str, Any] = {}
    try:
        base.mkdir()
        steps = [
            ("producer kills", lambda: kill_producers(base / "p", 5 if q else 40, 4)),
            ("daemon kills", lambda: kill_daemons(tmp / "d", base / "d", 3 if q else 20, 4)),
            ("follower kills", lambda: kill_followers(base / "f", 3 if q else 20)),
            ("mutations", lambda: mutate(base / "m", 150 if q else 2000, args.seed)),
            ("full disks", lambda: full_disks(tmp)),
            ("bad inputs", lambda: bad_inputs(tmp, base / "b")),
            ("load", lambda: load(base / "l", 16 if q else 64, 10 if q else 60)),
        ]
        for d in ("p", "d", "f", "m", "b", "l"):
            (base / d).mkdir()
        (tmp / "d").mkdir()
        for name, step in steps:
            print(f"chaos: {name}...", file=sys.stderr, flush=True)
            started = time.monotonic()
            results[name] = step()
            results[name]["seconds"] = round(time.monotonic() - started, 1)
            print(f"chaos: {name}: {results[name]}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


def print_table(r: dict[str, Any]) -> None:
    rows: list[tuple[str, str]] = []
    pk, dk, fk = r["producer kills"], r["daemon kills"], r["follower kills"]
    rows.append(
        (
            "kill -9 of a publishing producer",
            f"{pk['kills']} survived: reader errors {pk['reader_errors']} in {pk['snapshots']:,} snapshots, "
            f"went back {pk['went_back']}, next producer resumed: {pk['resumed']}",
        )
    )
    rows.append(
        (
            "kill -9 of the daemon, source changing",
            f"{dk['kills']} survived: restarts serving at once {dk['restarts_serving_at_once']}/{dk['kills']}, "
            f"went back {dk['went_back']}, reader errors {dk['reader_errors']} in {dk['snapshots']:,} snapshots",
        )
    )
    rows.append(
        (
            "kill -9 of followers holding snapshots",
            f"{fk['kills']} survived: versions present after {fk['versions_present_after']} (retain {fk['retain']})",
        )
    )
    m = r["mutations"]
    if "by_seal" in m:
        for seal, label in (("none", "bytes only"), ("header", "behind a sound header"), ("forged", "forged")):
            c = m["by_seal"].get(seal, {})
            other = sum(v for k, v in c.items() if k.startswith("other"))
            rows.append(
                (
                    f"files mutated: {label}",
                    f"{sum(c.values())}: named error {c.get('named', 0)}, same answers {c.get('same', 0)}, "
                    f"wrong answer {c.get('wrong', 0)}, other exception {other}, hang {c.get('hang', 0)}, signal 0",
                )
            )
    else:
        rows.append(("files mutated", f"the reader died: {m}"))
    fd = r["full disks"]
    rows.append(
        (
            "cycles on a nearly full tmpfs (0-6 inodes, 0-64 KiB)",
            f"{fd['tried']}: failed cleanly {fd['failed cleanly']}, published and announced "
            f"{fd['published and announced']}, published but not announced {fd['published, not announced']}",
        )
    )
    bad = r["bad inputs"]
    refused = sum(1 for k, v in bad.items() if k != "seconds" and str(v).startswith("refused"))
    rows.append(("bad inputs", f"{len(bad) - 1} tried: refused with a named error {refused}"))
    for k, v in bad.items():
        if k != "seconds":
            rows.append((f"  {k}", str(v)))
    load = r["load"]
    rows.append(
        (
            f"{load['readers']} readers, 10 versions/s asked for {load['for_seconds']:g} s",
            f"{load['published']} published; reader errors {load['reader_errors']} in {load['snapshots']:,} "
            f"snapshots; most versions present "
            f"{load['most_versions_present']} (retain {load['retain']})",
        )
    )
    rows.append(("hostile users, control-socket abuse", "see issue 9, items 1-6"))
    width = max(len(a) for a, _ in rows)
    print()
    for a, b in rows:
        print(f"{a:<{width}}  {b}")


if __name__ == "__main__":
    main()

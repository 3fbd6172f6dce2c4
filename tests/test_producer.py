"""The producer: versions, unchanged cycles, incremental cycles, retention, locking, pins, storage."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import hollow
import hollowd
from hollow import layout
from hollow import schema as hollow_schema
from hollowd import Producer
from hollowd.example import SCHEMA as AIRPORTS
from tests.helpers import ROOT, SCHEMAS, f32, movie, movies_producer, populate, run_python

GENRES = ["Drama", "Comedy", "Action", "Horror", "Documentary"]


def header(root: Path, version: int, ns: str = "movies") -> layout.Header:
    data = (root / ns / str(version)).read_bytes()
    return layout.Header.unpack(data, what=str(version), size=len(data))


def disk(root: Path, ns: str = "movies") -> list[tuple[str, int, int]]:
    d = root / ns
    return sorted((n, os.lstat(d / n).st_ino, os.lstat(d / n).st_mtime_ns) for n in os.listdir(d))


def announcement(root: Path, ns: str = "movies") -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((layout.announcement_path(root / ns)).read_bytes())
    return doc


def reader_version(root: Path, ns: str = "movies") -> int:
    with hollow.open(ns, root=root) as ds:
        return ds.version


def ids(root: Path, type_name: str = "Movie", ns: str = "movies") -> list[Any]:
    """Primary keys in iteration (ordinal) order."""
    with hollow.open(ns, root=root) as ds, ds.snapshot() as snap:
        return [m.id for m in snap[type_name]]


def titles(n: int, tag: str = "") -> Any:
    return populate(movie(i, title=f"Movie {i}{tag}") for i in range(n))


# -- versions ------------------------------------------------------------------


def test_versions_are_monotonic_and_record_their_parent(root: Path) -> None:
    with movies_producer(root) as p:
        versions = [p.run_cycle(titles(5, f" v{n}")) for n in range(4)]
        assert versions == [1, 2, 3, 4]
        assert p.versions() == [1, 2, 3, 4]
    for v in versions:
        h = header(root, v)
        assert (h.version, h.parent_version, h.namespace) == (v, v - 1, "movies")
    assert announcement(root)["version"] == 4
    assert reader_version(root) == 4


def test_unchanged_cycle_returns_same_version_and_writes_nothing(root: Path) -> None:
    with movies_producer(root) as p:
        v = p.run_cycle(titles(50))
        before = disk(root)
        assert p.run_cycle(titles(50)) == v
        assert disk(root) == before
        assert p.versions() == [v]


def test_same_records_in_another_order_are_unchanged(root: Path) -> None:
    with movies_producer(root) as p:
        v = p.run_cycle(populate(movie(i) for i in range(50)))
        before = disk(root)
        assert p.run_cycle(populate(movie(i) for i in reversed(range(50)))) == v
        assert disk(root) == before


def test_changing_one_record_publishes_a_new_version(root: Path) -> None:
    with movies_producer(root) as p:
        v = p.run_cycle(titles(50))
        recs = [movie(i, title=f"Movie {i}") for i in range(50)]
        recs[17]["year"] = 2001
        assert p.run_cycle(populate(recs)) == v + 1
    with hollow.open("movies", root=root) as ds, ds.snapshot() as snap:
        assert snap["Movie"][17].year == 2001
        assert snap["Movie"][18].year == movie(18)["year"]


def test_changing_another_type_only_publishes_a_new_version(root: Path) -> None:
    def fill(name: str) -> Any:
        def f(state: Any) -> None:
            state.add("Movie", movie(1))
            state.add("Actor", {"id": 1, "name": name})

        return f

    with movies_producer(root) as p:
        v = p.run_cycle(fill("A"))
        assert p.run_cycle(fill("A")) == v
        assert p.run_cycle(fill("B")) == v + 1


def test_full_cycle_keeps_ordinals_of_records_that_stay(root: Path) -> None:
    with movies_producer(root) as p:
        p.run_cycle(populate(movie(i) for i in range(10)))
        # remove 3, add 100, input in reverse order: 100 fills the hole 3 left
        p.run_cycle(populate(movie(i) for i in [100, *reversed([i for i in range(10) if i != 3])]))
    assert ids(root) == [0, 1, 2, 100, 4, 5, 6, 7, 8, 9]


def test_empty_first_cycle_publishes_an_empty_version(root: Path) -> None:
    with movies_producer(root) as p:
        assert p.run_cycle(lambda state: None) == 1
    with hollow.open("movies", root=root) as ds, ds.snapshot() as snap:
        assert len(snap["Movie"]) == 0
        assert list(snap["Movie"]) == []
        assert snap["Movie"].get(1) is None
        assert len(snap["Movie"].find(genre="Drama")) == 0


def test_capnp_builder_is_accepted_as_a_record(root: Path) -> None:
    module = hollow_schema.load_schema_file(SCHEMAS / "movies.capnp")
    b = module.Movie.new_message(id=5, title="Built", year=1999, tags=["a", "b"])
    b.releasedAt.unixMillis = 42
    with movies_producer(root) as p:
        p.run_cycle(lambda state: state.add("Movie", b))
    with hollow.open("movies", root=root) as ds, ds.snapshot() as snap:
        m = snap["Movie"][5]
        assert (m.title, m.year, list(m.tags), m.releasedAt.unixMillis) == ("Built", 1999, ["a", "b"], 42)


# -- incremental cycles -----------------------------------------------------------


def test_incremental_remove_and_upsert(root: Path) -> None:
    with movies_producer(root) as p:
        v1 = p.run_cycle(populate(movie(i) for i in range(10)))
        v2 = p.run_incremental(lambda d: (d.remove("Movie", 3), d.upsert("Movie", movie(5, title="Five"))))
        assert v2 == v1 + 1
    with hollow.open("movies", root=root) as ds, ds.snapshot() as snap:
        movies = snap["Movie"]
        assert 3 not in movies
        assert movies.get(3) is None
        assert len(movies) == 9
        assert movies[5].title == "Five"
        for i in (0, 1, 2, 4, 6, 7, 8, 9):
            assert movies[i].to_dict() == snap["Movie"][i].to_dict()
            assert movies[i].title == f"Movie {i}"
        assert [m.id for m in movies.find(genre="Horror")] == [8]  # 3 was Horror too
    assert ids(root) == [0, 1, 2, 4, 5, 6, 7, 8, 9]


def test_incremental_new_record_fills_the_hole(root: Path) -> None:
    with movies_producer(root) as p:
        p.run_cycle(populate(movie(i) for i in range(10)))
        p.run_incremental(lambda d: d.remove("Movie", 3))
        p.run_incremental(lambda d: d.upsert("Movie", movie(100)))
    assert ids(root) == [0, 1, 2, 100, 4, 5, 6, 7, 8, 9]


def test_incremental_composite_key_remove(root: Path) -> None:
    with movies_producer(root) as p:
        p.run_cycle(
            populate(
                ({"movieId": m, "actorId": a, "character": f"{m}/{a}"} for m in range(3) for a in range(3)), "Role"
            )
        )
        p.run_incremental(lambda d: d.remove("Role", (1, 2)))
    with hollow.open("movies", root=root) as ds, ds.snapshot() as snap:
        roles = snap["Role"]
        assert (1, 2) not in roles
        assert len(roles) == 8
        assert roles[(2, 1)].character == "2/1"
        assert sorted(r.movieId for r in roles.find(actorId=2)) == [0, 2]


def test_incremental_with_no_effect_returns_same_version(root: Path) -> None:
    with movies_producer(root) as p:
        v = p.run_cycle(populate(movie(i) for i in range(10)))
        before = disk(root)
        assert p.run_incremental(lambda d: (d.remove("Movie", 12345), d.upsert("Movie", movie(4)))) == v
        assert disk(root) == before


def test_removing_every_record_incrementally(root: Path) -> None:
    with movies_producer(root) as p:
        p.run_cycle(populate(movie(i) for i in range(3)))
        p.run_incremental(lambda d: [d.remove("Movie", i) for i in range(3)])
    assert ids(root) == []


# -- retention --------------------------------------------------------------------


def test_retention_keeps_only_the_last_versions(root: Path) -> None:
    with movies_producer(root, retain=3) as p:
        for n in range(6):
            p.run_cycle(titles(5, f" v{n}"))
        assert p.versions() == [4, 5, 6]
    assert sorted(layout.list_versions(root / "movies")) == [4, 5, 6]
    assert announcement(root)["version"] == 6


def test_retention_keeps_the_pinned_version(root: Path) -> None:
    with movies_producer(root, retain=2) as p:
        p.run_cycle(titles(5, " v0"))
        p.pin(1)
        for n in range(1, 5):
            p.run_cycle(titles(5, f" v{n}"))
        assert p.versions() == [1, 4, 5]
    assert reader_version(root) == 1


# -- files ------------------------------------------------------------------------------


def test_published_files_are_read_only_and_no_temporaries_remain(root: Path) -> None:
    with movies_producer(root) as p:
        for n in range(3):
            p.run_cycle(titles(20, f" v{n}"))
        with contextlib.suppress(hollowd.ValidationError):
            p.run_cycle(populate([movie(1, year="x")]))
    names = os.listdir(root / "movies")
    assert [n for n in names if n.endswith(".tmp")] == []
    for v in layout.list_versions(root / "movies"):
        mode = os.stat(root / "movies" / str(v)).st_mode
        assert mode & 0o222 == 0, oct(mode)
        assert mode & 0o777 == 0o440  # mode=0o640 by default: owner and group read


def test_published_file_mode_follows_the_mode_argument(root: Path) -> None:
    with movies_producer(root, mode=0o644) as p:
        p.run_cycle(titles(3))
    assert os.stat(root / "movies" / "1").st_mode & 0o777 == 0o444


def test_announcement_names_version_pin_and_latest(root: Path) -> None:
    with movies_producer(root) as p:
        p.run_cycle(titles(3))
    doc = announcement(root)
    assert (doc["version"], doc["pinned"], doc["latest"]) == (1, False, 1)


# -- locking and restarts ------------------------------------------------------------------


def test_second_producer_on_the_namespace_is_locked_out(root: Path) -> None:
    with movies_producer(root) as p:
        p.run_cycle(titles(3))
        with pytest.raises(hollowd.ProducerLockedError) as info:
            movies_producer(root)
        assert f"PID {os.getpid()}" in str(info.value)
    with movies_producer(root) as p2:  # released on close
        assert p2.run_cycle(titles(3)) == 1


HOLD = r"""
import sys
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from tests.helpers import movies_producer
with movies_producer(Path(sys.argv[1])) as p:
    print("ready", flush=True)
    sys.stdin.readline()
"""


def test_producer_lock_names_the_pid_of_another_process(root: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root), str(ROOT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(hollowd.ProducerLockedError) as info:
            movies_producer(root)
        assert f"PID {proc.pid}" in str(info.value)
    finally:
        proc.stdin.close()
        proc.stdout.close()
        proc.wait(timeout=60)
    with movies_producer(root):  # the dead process holds no lock
        pass


def test_restarted_producer_continues_numbering(root: Path) -> None:
    with movies_producer(root) as p:
        p.run_cycle(titles(5, " a"))
        p.run_cycle(titles(5, " b"))
    with movies_producer(root) as p:
        assert p.run_cycle(titles(5, " b")) == 2  # unchanged after restart
        assert p.versions() == [1, 2]
        assert p.run_cycle(titles(5, " c")) == 3
    assert header(root, 3).parent_version == 2


def test_restarted_producer_continues_after_reclaimed_versions(root: Path) -> None:
    with movies_producer(root, retain=1) as p:
        for n in range(4):
            p.run_cycle(titles(5, f" {n}"))
        assert p.versions() == [4]
    with movies_producer(root, retain=1) as p:
        assert p.run_cycle(titles(5, " new")) == 5


def test_restarted_producer_keeps_ordinals_and_fills_holes(root: Path) -> None:
    with movies_producer(root) as p:
        p.run_cycle(populate(movie(i) for i in range(10)))
        p.run_incremental(lambda d: d.remove("Movie", 3))
    with movies_producer(root) as p:
        assert p.run_incremental(lambda d: d.upsert("Movie", movie(100))) == 3
        assert p.run_incremental(lambda d: d.upsert("Movie", movie(0, title="Zero"))) == 4
    assert ids(root) == [0, 1, 2, 100, 4, 5, 6, 7, 8, 9]
    with hollow.open("movies", root=root) as ds, ds.snapshot() as snap:
        assert snap["Movie"][0].title == "Zero"
        assert snap["Movie"][9].title == "Movie 9"


def test_incremental_after_a_reserved_version_that_was_never_written(root: Path) -> None:
    """A daemon killed between reserve() and the write restarts with its counter above every file."""
    with movies_producer(root) as p:
        p.run_cycle(populate(movie(i) for i in range(3)))
    with movies_producer(root, versions_after=2) as p:  # version 2 was reserved, then the process died
        assert p.run_incremental(lambda d: d.upsert("Movie", movie(3))) == 3
    assert ids(root) == [0, 1, 2, 3]


# -- pins ----------------------------------------------------------------------------------


def test_pin_announces_the_version_and_cycles_do_not_move_it(root: Path) -> None:
    with movies_producer(root) as p:
        p.run_cycle(titles(5, " 1"))
        p.run_cycle(titles(5, " 2"))
        p.pin(1)
        doc = announcement(root)
        assert (doc["version"], doc["pinned"]) == (1, True)
        assert reader_version(root) == 1
        v3 = p.run_cycle(titles(5, " 3"))
        assert v3 == 3
        assert 3 in p.versions()
        doc = announcement(root)
        assert (doc["version"], doc["pinned"], doc["latest"]) == (1, True, 3)
        with hollow.open("movies", root=root) as ds, ds.snapshot() as snap:
            assert (snap.version, snap["Movie"][0].title) == (1, "Movie 0 1")
        p.unpin()
        doc = announcement(root)
        assert (doc["version"], doc["pinned"]) == (3, False)
        assert reader_version(root) == 3


def test_pin_of_a_missing_version_is_version_not_found(root: Path) -> None:
    with movies_producer(root) as p:
        p.run_cycle(titles(3))
        before = disk(root)
        with pytest.raises(hollowd.VersionNotFoundError) as info:
            p.pin(7)
        assert isinstance(info.value, hollow.VersionNotFoundError)
        assert "7" in str(info.value)
        assert disk(root) == before


def test_reader_on_pinned_version_follows_unpin(root: Path) -> None:
    with movies_producer(root) as p, contextlib.ExitStack() as stack:
        p.run_cycle(titles(5, " 1"))
        p.run_cycle(titles(5, " 2"))
        p.pin(1)
        ds = stack.enter_context(hollow.open("movies", root=root))
        assert ds.version == 1
        p.unpin()
        assert ds.wait_for(2, timeout=60)  # a liveness bound, not a timing assertion
        assert ds.version == 2


# -- keys and indexes ------------------------------------------------------------------


def test_composite_keys_and_secondary_indexes(root: Path) -> None:
    def fill(state: Any) -> None:
        for i in range(30):
            state.add("Movie", movie(i))
            state.add("Actor", {"id": i, "name": f"Actor {i}"})
        for m in range(30):
            for a in range(m % 4):
                state.add("Role", {"movieId": m, "actorId": a, "character": f"c{m}-{a}"})

    with movies_producer(root) as p:
        p.run_cycle(fill)
    with hollow.open("movies", root=root) as ds, ds.snapshot() as snap:
        movies, roles = snap["Movie"], snap["Role"]
        assert [m.id for m in movies.find(genre="Drama")] == [i for i in range(30) if i % 5 == 0]
        assert [m.id for m in movies.find(year=1955)] == [5]
        assert len(movies.find(genre="Western")) == 0
        found = roles.find(actorId=2)
        assert sorted(r.movieId for r in found) == [m for m in range(30) if m % 4 == 3]
        assert all(r.actorId == 2 for r in found)
        assert len(found[1:]) == len(found) - 1
        assert roles[(7, 2)].character == "c7-2"
        assert roles.get((8, 0)) is None
        assert (8, 0) not in roles
        assert (5, 0) in roles
        with pytest.raises(KeyError):
            roles[(4, 0)]
        with pytest.raises(TypeError):
            roles.get(7)  # a composite key is a tuple
        with pytest.raises(LookupError):
            movies.find(title="Movie 1")  # no index on title


def test_text_primary_key_and_bool_index(root: Path) -> None:
    with Producer(
        "iot",
        schema=SCHEMAS / "iot.capnp",
        primary_keys={"Device": "serial"},
        indexes={"Device": ["online", "site"]},
        root=root,
    ) as p:
        p.run_cycle(
            populate(({"serial": f"SN-{i}", "online": i % 3 == 0, "site": f"s{i % 2}"} for i in range(9)), "Device")
        )
    with hollow.open("iot", root=root) as ds, ds.snapshot() as snap:
        devices = snap["Device"]
        assert devices["SN-4"].site == "s0"
        assert devices.get("SN-9") is None
        assert [d.serial for d in devices.find(online=True)] == ["SN-0", "SN-3", "SN-6"]
        assert len(devices.find(site="s1")) == 4
        with pytest.raises(TypeError):
            devices.get(4)  # the key is Text


# -- other schemas ------------------------------------------------------------------------

ORDERS = [
    {
        "id": 1,
        "customerId": 10,
        "status": "shipped",
        "placedAtMillis": -5,
        "items": [
            {"sku": "A-1", "quantity": 2, "unitPrice": {"currency": "EUR", "minorUnits": 1999}},
            {"sku": "B-2", "quantity": 1, "unitPrice": {"currency": "EUR", "minorUnits": -1}},
        ],
        "total": {"currency": "EUR", "minorUnits": 3997},
        "giftWrap": True,
    },
    {
        "id": 2,
        "customerId": 10,
        "status": "cancelled",
        "placedAtMillis": 1 << 62,
        "items": [],
        "total": {"currency": "NZD", "minorUnits": 0},
        "giftWrap": False,
    },
    {"id": 3, "customerId": 11, "status": "pending", "placedAtMillis": 0, "items": [], "total": {}, "giftWrap": False},
]


def test_commerce_round_trip(root: Path) -> None:
    def fill(state: Any) -> None:
        for o in ORDERS:
            state.add("Order", o)
        state.add("Customer", {"id": 10, "email": "a@example.com", "country": "NZ"})
        state.add("Price", {"sku": "A-1", "currency": "EUR", "amount": {"currency": "EUR", "minorUnits": 1999}})
        state.add("Price", {"sku": "A-1", "currency": "USD", "amount": {"currency": "USD", "minorUnits": 2199}})

    with Producer(
        "shop",
        schema=SCHEMAS / "commerce.capnp",
        primary_keys={"Order": "id", "Customer": "id", "Price": ["sku", "currency"]},
        indexes={"Order": ["customerId", "giftWrap"]},
        root=root,
    ) as p:
        p.run_cycle(fill)
    with hollow.open("shop", root=root) as ds, ds.snapshot() as snap:
        orders = snap["Order"]
        for o in ORDERS[:2]:
            assert orders[o["id"]].to_dict() == o
        o1 = orders[1]
        assert o1.status == "shipped"
        assert o1.giftWrap is True
        assert [(i.sku, i.quantity, i.unitPrice.minorUnits) for i in o1.items] == [("A-1", 2, 1999), ("B-2", 1, -1)]
        assert orders[3].status == "pending"
        assert orders[3].total.minorUnits == 0
        assert sorted(o.id for o in orders.find(customerId=10)) == [1, 2]
        assert [o.id for o in orders.find(giftWrap=True)] == [1]
        assert snap["Price"][("A-1", "USD")].amount.minorUnits == 2199
        assert snap["Price"].get(("A-1", "GBP")) is None
        assert snap["Customer"][10].email == "a@example.com"


def test_enum_given_as_number_reads_as_its_name(root: Path) -> None:
    with Producer("shop", schema=SCHEMAS / "commerce.capnp", primary_keys={"Order": "id"}, root=root) as p:
        p.run_cycle(populate([{"id": 1, "status": 3}], "Order"))
    with hollow.open("shop", root=root) as ds, ds.snapshot() as snap:
        assert snap["Order"][1].status == "delivered"


def test_iot_round_trip(root: Path) -> None:
    readings = [
        {
            "deviceSerial": f"SN-{d}",
            "metric": metric,
            "atMillis": 1_700_000_000_000 + d,
            "value": d * 1.1,
            "samples": [d + 0.1 * k for k in range(d)],
        }
        for d in range(6)
        for metric in ("temp", "humidity")
    ]

    def fill(state: Any) -> None:
        for r in readings:
            state.add("Reading", r)
        for d in range(6):
            state.add(
                "Device", {"serial": f"SN-{d}", "model": "M1", "site": "lab", "firmware": d, "online": d % 2 == 0}
            )

    with Producer(
        "iot",
        schema=SCHEMAS / "iot.capnp",
        primary_keys={"Device": "serial", "Reading": ["deviceSerial", "metric"]},
        indexes={"Reading": ["deviceSerial"]},
        root=root,
    ) as p:
        p.run_cycle(fill)
    with hollow.open("iot", root=root) as ds, ds.snapshot() as snap:
        got = snap["Reading"]
        assert len(got) == len(readings)
        for r in readings:
            g = got[(r["deviceSerial"], r["metric"])]
            assert (g.atMillis, g.value) == (r["atMillis"], r["value"])
            assert list(g.samples) == [f32(x) for x in r["samples"]]
        assert sorted(g.metric for g in got.find(deviceSerial="SN-3")) == ["humidity", "temp"]
        assert got.get(("SN-3", "pressure")) is None
        assert [d.online for d in snap["Device"]] == [True, False, True, False, True, False]
        assert snap["Device"]["SN-5"].firmware == 5


# -- configuration errors ---------------------------------------------------------------


def test_float_primary_key_is_unsupported(root: Path) -> None:
    with pytest.raises(hollowd.UnsupportedSchemaError):
        Producer("air", schema=AIRPORTS, primary_keys={"Airport": "elevationFeet"}, root=root)


def test_key_on_a_missing_field_or_type_is_a_schema_error(root: Path) -> None:
    with pytest.raises(hollowd.SchemaError) as info:
        Producer("air", schema=AIRPORTS, primary_keys={"Airport": "code"}, root=root)
    assert "code" in str(info.value)
    with pytest.raises(hollowd.SchemaError) as info:
        Producer("air", schema=AIRPORTS, primary_keys={"Runway": "id"}, root=root)
    assert "Runway" in str(info.value)


# Compiling runs pycapnp's C++ compiler, which can abort the process: in a subprocess.
BAD_SCHEMA = r"""
import json, sys
import hollowd
try:
    hollowd.Producer("bad", schema=sys.argv[2], primary_keys={"X": "id"}, root=sys.argv[1]).close()
    print(json.dumps("no error"))
except hollowd.Error as e:
    print(json.dumps(type(e).__name__))
"""


@pytest.mark.parametrize(
    "text",
    [
        "@0xd4c1b0a1e5f6a7b9;\nstruct X { id @0 :NoSuchType; }\n",
        "@0xd4c1b0a1e5f6a7b9;\nstruct X { id @0 :UInt64 }\n",
        "struct X { id @0 :UInt64; }\n",
    ],
    ids=["undefined-type", "syntax-error", "no-file-id"],
)
def test_schema_that_does_not_compile_is_a_schema_error(root: Path, tmp_path: Path, text: str) -> None:
    bad = tmp_path / "bad.capnp"
    bad.write_text(text)
    assert run_python(BAD_SCHEMA, str(root), str(bad)) == "SchemaError"


# -- a full /dev/shm -------------------------------------------------------------------------


def test_full_storage_fails_the_cycle_cleanly(tiny_fs: Path) -> None:
    with movies_producer(tiny_fs) as p:
        assert p.run_cycle(titles(10)) == 1
        before = disk(tiny_fs)
        big = populate(movie(i, title=f"{i:06d}" + "x" * 1000) for i in range(2000))  # about 2 MB
        with pytest.raises(hollowd.StorageFullError) as info:
            p.run_cycle(big)
        msg = str(info.value)
        assert "free" in msg
        assert "--shm-size" in msg
        assert isinstance(info.value, hollowd.PublishError)
        assert disk(tiny_fs) == before
        assert layout.list_versions(tiny_fs / "movies") == [1]
        assert [n for n in os.listdir(tiny_fs / "movies") if n.endswith(".tmp")] == []
        assert announcement(tiny_fs)["version"] == 1
        assert reader_version(tiny_fs) == 1
        assert p.run_cycle(titles(20)) == 2  # room enough again for a small version
    assert reader_version(tiny_fs) == 2

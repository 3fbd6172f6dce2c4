"""Populate the airports namespace from the ``airportsdata`` package (real data, about 28,000 records)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import airportsdata

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "airports.capnp"
PRIMARY_KEYS = {"Airport": "icao"}
INDEXES = {"Airport": ["country"]}


def records() -> list[dict[str, Any]]:
    return [
        {
            "icao": a["icao"],
            "iata": a["iata"],
            "name": a["name"],
            "city": a["city"],
            "subdivision": a["subd"],
            "country": a["country"],
            "elevationFeet": float(a["elevation"]),
            "latitude": float(a["lat"]),
            "longitude": float(a["lon"]),
            "timezone": a["tz"],
            "lid": a["lid"],
        }
        for a in airportsdata.load().values()
    ]


def populate(state: Any) -> None:
    """A populate function for ``Producer.run_cycle`` (and, later, the daemon's callable source)."""
    for record in records():
        state.add("Airport", record)

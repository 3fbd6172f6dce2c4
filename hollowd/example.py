"""The namespace ``hollowd`` serves with no ``--config``: the world's airports.

About 28,000 records from the ``airportsdata`` package (a dependency, so an
installed wheel can run it from any directory), keyed by ICAO code and indexed
by country. The schema ships inside the package (``hollowd/airports.capnp``).
``examples/airports`` (``make run``) shows readers using it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

SCHEMA = Path(str(resources.files("hollowd") / "airports.capnp"))
NAMESPACE = "airports"
PRIMARY_KEYS = {"Airport": "icao"}
INDEXES = {"Airport": ["country"]}

#: The configuration the daemon runs without ``--config`` (paths from the command line and the environment).
CONFIG = f"""\
[namespaces.{NAMESPACE}]
schema = "{SCHEMA}"
source = "hollowd.example:populate"
interval = 3600

[namespaces.{NAMESPACE}.types.Airport]
primary_key = "icao"
indexes = ["country"]
"""


def records() -> list[dict[str, Any]]:
    import airportsdata  # noqa: PLC0415 - only the example needs it, and it loads 28,000 records

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
    """The example's populate function (``Producer.run_cycle``, and the daemon's callable source)."""
    state.add_all("Airport", records())

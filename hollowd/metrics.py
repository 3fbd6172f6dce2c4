"""Prometheus metrics over HTTP (prometheus-client), on a loopback port from the config; off by default.

Counters and the stage histogram are updated after each cycle; everything that
describes what is in /dev/shm (announced version, records per type, bytes,
leases per version, seconds since the last good cycle) is read when scraped,
so it is never stale.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import hollow


class Metrics:
    """The daemon's metrics; :meth:`serve` starts the HTTP endpoint."""

    def __init__(self, runners: Callable[[], Iterable[Any]], followers: Callable[[], Iterable[Any]] = list) -> None:
        self.registry = CollectorRegistry()
        self.cycles = Counter(
            "hollowd_cycles", "Cycles run, by result (ok, failed).", ["namespace", "result"], registry=self.registry
        )
        self.stage_seconds = Histogram(
            "hollowd_cycle_stage_seconds",
            "Seconds per stage of a cycle (populate, build, validate, publish, announce, reclaim).",
            ["namespace", "stage"],
            buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.registry.register(_State(runners))
        self.registry.register(_Followers(followers))
        self._server: Any = None
        self._thread: Any = None

    def cycle(self, namespace: str, *, ok: bool, timings: dict[str, float]) -> None:
        self.cycles.labels(namespace, "ok" if ok else "failed").inc()
        for stage, seconds in timings.items():
            self.stage_seconds.labels(namespace, stage).observe(seconds)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None


class _State(Collector):
    """What is in /dev/shm now, read at scrape time."""

    def __init__(self, runners: Callable[[], Iterable[Any]], followers: Callable[[], Iterable[Any]] = list) -> None:
        self.runners = runners

    def collect(self) -> Iterator[Metric]:
        announced = GaugeMetricFamily("hollowd_announced_version", "The announced version.", labels=["namespace"])
        pinned = GaugeMetricFamily(
            "hollowd_pinned", "1 when an operator pin holds the namespace.", labels=["namespace"]
        )
        records = GaugeMetricFamily(
            "hollowd_records", "Records per type in the latest version.", labels=["namespace", "type"]
        )
        shm = GaugeMetricFamily("hollowd_shm_bytes", "Bytes of state files in /dev/shm.", labels=["namespace"])
        leases = GaugeMetricFamily(
            "hollowd_leases", "Processes holding a lease, per version.", labels=["namespace", "version"]
        )
        compaction = GaugeMetricFamily(
            "hollowd_last_compaction_seconds",
            "Seconds the last compaction of the namespace took (in the background, or in the cycle).",
            labels=["namespace"],
        )
        since = GaugeMetricFamily(
            "hollowd_seconds_since_last_good_cycle",
            "Seconds since the last cycle that succeeded.",
            labels=["namespace"],
        )
        for runner in list(self.runners()):
            name = runner.name
            try:
                st = hollow.status(name, root=runner.producer.dir.parent)
            except hollow.Error:
                continue
            announced.add_metric([name], st.announced or 0)
            pinned.add_metric([name], 1 if st.pinned else 0)
            shm.add_metric([name], st.bytes)
            for v in st.versions:
                leases.add_metric([name, str(v.version)], len(v.leases))
            for type_name, count in runner.producer.record_counts().items():
                records.add_metric([name, type_name], count)
            if runner.last_good is not None:
                since.add_metric([name], time.time() - runner.last_good)
            if runner.producer.last_compaction is not None:
                compaction.add_metric([name], runner.producer.last_compaction)
        yield from (announced, pinned, records, shm, leases, since, compaction)


class _Followers(Collector):
    """Namespaces that follow another host's store: what they fetched, applied, failed, and how far behind."""

    def __init__(self, followers: Callable[[], Iterable[Any]]) -> None:
        self.followers = followers

    def collect(self) -> Iterator[Metric]:
        fetched = CounterMetricFamily(
            "hollowd_follow_fetched_bytes", "Bytes fetched from the store (blobs and headers).", labels=["namespace"]
        )
        applied = CounterMetricFamily("hollowd_follow_blobs_applied", "Blobs applied.", labels=["namespace"])
        failures = CounterMetricFamily(
            "hollowd_follow_failures",
            "Looks at the store that failed (unreachable, damaged, refused).",
            labels=["namespace"],
        )
        lag = GaugeMetricFamily(
            "hollowd_follow_lag_versions",
            "Versions between the store's announcement and this host's.",
            labels=["namespace"],
        )
        there = GaugeMetricFamily(
            "hollowd_follow_store_version", "The version the store announces.", labels=["namespace"]
        )
        contact = GaugeMetricFamily(
            "hollowd_follow_seconds_since_contact", "Seconds since the store last answered.", labels=["namespace"]
        )
        for thread in list(self.followers()):
            st = thread.follower.status()
            name = thread.name
            fetched.add_metric([name], st.bytes_fetched)
            applied.add_metric([name], st.blobs_applied)
            failures.add_metric([name], st.failures)
            lag.add_metric([name], st.lag)
            there.add_metric([name], st.there)
            if st.last_contact:
                contact.add_metric([name], time.time() - st.last_contact)
        yield from (fetched, applied, failures, lag, there, contact)

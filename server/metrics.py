"""Prometheus metrics on the daemon's own registry, injected into the parts that count.

Names are kvbucket_<layer>_<what>; labels are bounded (op, tier, reason, status).

The values live in this process's memory, always. vLLM and LMCache set PROMETHEUS_MULTIPROC_DIR for
their worker processes; a daemon that inherits it (started by the same shell, script or test) would
otherwise keep its counters in shared files named by pid, and a recycled pid starts from a dead
process's counts (seen here: 45 ShmPut calls reported for 41 made, after LMCache ran in the parent).
"""

from __future__ import annotations

import os
from collections.abc import Callable

for _var in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):  # before prometheus_client reads it
    os.environ.pop(_var, None)

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server  # noqa: E402
from prometheus_client import values as _values  # noqa: E402
from prometheus_client.core import GaugeMetricFamily  # noqa: E402

_values.ValueClass = _values.MutexValue  # in case prometheus_client was imported before the variable went

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "kvbucket_server_requests", "RPCs handled, by op and status code", ["op", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "kvbucket_server_request_seconds", "RPC latency by op", ["op"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.rejected = Counter("kvbucket_server_rejected", "Requests refused, by reason", ["reason"], registry=r)
        self.bytes = Counter("kvbucket_server_bytes", "Payload bytes moved, by direction", ["direction"], registry=r)
        self.tier_seconds = Histogram(
            "kvbucket_tier_op_seconds", "Tier operation latency", ["tier", "op"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.hits = Counter("kvbucket_store_hits", "Chunks found, by the tier that served them", ["tier"], registry=r)
        self.misses = Counter("kvbucket_store_misses", "Chunks asked for and not found", registry=r)
        self.lookup_keys = Counter("kvbucket_store_lookup_keys", "Hashes asked by Lookup", registry=r)
        self.lookup_hits = Counter("kvbucket_store_lookup_hits", "Hashes found by Lookup", registry=r)
        self.tokens_served = Counter("kvbucket_store_tokens_served", "Tokens in chunks served by Get", registry=r)
        self.evictions = Counter("kvbucket_store_evictions", "Entries evicted, by tier", ["tier"], registry=r)
        self.demotions = Counter("kvbucket_store_demotions", "Entries written to a slower tier", ["tier"], registry=r)
        self.promotions = Counter(
            "kvbucket_store_promotions", "Entries copied up to a faster tier", ["tier"], registry=r
        )
        self.corrupt = Counter(
            "kvbucket_store_corrupt",
            "Records that failed their checksum (removed, served as a miss)",
            ["tier"],
            registry=r,
        )
        self.tier_errors = Counter(
            "kvbucket_store_tier_errors",
            "Tier failures degraded to a miss or a dropped write",
            ["tier", "op"],
            registry=r,
        )
        self.queue_depth = Gauge("kvbucket_store_queue_depth", "Write-behind queue depth", ["tier"], registry=r)
        self.queue_dropped = Counter(
            "kvbucket_store_queue_dropped", "Write-behind items dropped (queue full or tier down)", ["tier"], registry=r
        )
        # Children used on every call, looked up once: `labels()` takes a lock and checks its values.
        self.bytes_in, self.bytes_out = self.bytes.labels("in"), self.bytes.labels("out")
        self._requests: dict[tuple[str, str], tuple] = {}  # (op, status) -> (counter, histogram)
        self._tier_ops: dict[tuple[str, str], object] = {}  # (tier, op) -> histogram

    def request_done(self, op: str, status: str, seconds: float) -> None:
        """Count and time one RPC."""
        pair = self._requests.get((op, status))
        if pair is None:
            pair = self._requests[(op, status)] = (self.requests.labels(op, status), self.request_seconds.labels(op))
        pair[0].inc()
        pair[1].observe(seconds)

    def tier_op(self, tier: str, op: str):
        """The latency histogram of one tier's op (`with metrics.tier_op(t, "get").time():`)."""
        child = self._tier_ops.get((tier, op))
        if child is None:
            child = self._tier_ops[(tier, op)] = self.tier_seconds.labels(tier, op)
        return child

    def watch_tiers(self, stats: Callable[[], dict[str, object]]) -> None:
        """Expose entries/bytes/capacity per tier, read at scrape time from `stats()`."""
        self.registry.register(_TierCollector(stats))

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint; returns the bound port (port 0 picks one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server.server_address[1]


class _TierCollector:
    def __init__(self, stats: Callable[[], dict[str, object]]) -> None:
        self._stats = stats

    def collect(self):
        entries = GaugeMetricFamily("kvbucket_tier_entries", "Entries held, by tier", labels=["tier"])
        size = GaugeMetricFamily("kvbucket_tier_bytes", "Bytes held (stored form), by tier", labels=["tier"])
        cap = GaugeMetricFamily("kvbucket_tier_capacity_bytes", "Capacity (0: unbounded), by tier", labels=["tier"])
        for name, s in self._stats().items():
            entries.add_metric([name], s.entries)
            size.add_metric([name], s.bytes)
            cap.add_metric([name], s.capacity_bytes)
        yield from (entries, size, cap)

    def describe(self):
        return []

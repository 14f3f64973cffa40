"""Keep Python's cyclic garbage collector from walking the index on every full collection.

Each stored entry is about seven objects the collector tracks (its key, metadata, record and record
header, the payload's memoryview and buffer, the tier's slot for it). A full collection walks every
one of them with the event loop stopped, so every lookup, get and put of every worker waits: 1.46 s
at a million entries, measured here while filling a RAM tier (`benchmarks/README.md`). None of those
objects are in reference cycles, so the walk finds nothing.

`FullCollections.install()` adds a `gc` callback that, when a full collection ends, moves everything
that survived it into the permanent generation (`gc.freeze`). The next full collection walks only
what was allocated since, so its pause is bounded by how much the index grew between two of them
(~50 ms at most while filling to a million entries, against 1.46 s). Every full collection's pause
is also timed for `kvbucket_gc_full_collection_seconds`, frozen or not.

What it gives up: an object frozen while alive that is later dropped inside a reference cycle is never
reclaimed (dropped without a cycle, reference counting frees it as always). What lives that long in
the daemon is the index, the tiers, the servers and open connections. Measured: 4,000 clients each
connecting, calling over gRPC and the fast wire and closing, against a daemon holding 200k entries,
left its RSS at 359 -> 365 MiB with freezing and without alike. `gc_freeze = false` turns it off.
"""

from __future__ import annotations

import gc
import time

from prometheus_client import CollectorRegistry, Counter, Histogram

PAUSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class FullCollections:
    """Times full collections and, with `freeze`, freezes their survivors (module docstring)."""

    def __init__(self, registry: CollectorRegistry, *, freeze: bool = True) -> None:
        self.freeze = freeze
        self.pauses = Histogram(
            "kvbucket_gc_full_collection_seconds",
            "Pauses of Python's full (generation 2) garbage collections, the event loop stopped",
            buckets=PAUSE_BUCKETS,
            registry=registry,
        )
        self.frozen = Counter(
            "kvbucket_gc_freezes", "Full collections whose survivors were frozen (gc_freeze)", registry=registry
        )
        self._started = 0.0

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        """Stop, and hand what was frozen back to the collector (a test process goes on after a daemon)."""
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
            if self.freeze:
                gc.unfreeze()

    def _callback(self, phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.pauses.observe(time.perf_counter() - self._started)
        if self.freeze:
            # The collection is over: what is frozen is what survived it, all reachable (and this
            # callback's own few objects, freed by reference counting as usual).
            gc.freeze()
            self.frozen.inc()

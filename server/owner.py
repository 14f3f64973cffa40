"""CacheOwner: the admin layer's part in the data path, and its background loop.

It is the store's `StoreHooks` (TTL defaults and quota on put, usage and sliding TTL on read) and
runs one loop: every `sweep_seconds` a bounded expiry/pin-lease sweep and the reset markers other
daemons left in S3; every `census_seconds` a census of the tier indexes for quotas and usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from kvbucket.core.keys import EntryKey
from kvbucket.server.maintenance import drop_local
from kvbucket.server.quotas import Policies, Quotas
from kvbucket.server.store import StoreHooks, TieredStore
from kvbucket.server.tiers.base import EntryMeta
from kvbucket.server.ttl import Expiry, held
from kvbucket.server.usage import Usage, census

log = logging.getLogger(__name__)
CENSUS_DUTY = 20  # a census starts at least 20x its last duration after that one started (<= 5%)


class CacheOwner(StoreHooks):
    def __init__(self, store: TieredStore, clock: Callable[[], float], data_dir: Path | None, *,
                 sweep_seconds: float = 1.0, sweep_batch: int = 1000, census_seconds: float = 30.0,
                 price_per_million: float = 0.0, max_label_pairs: int = 50, hydrate: int = 0) -> None:
        self.store = store
        self.clock = clock
        self.policies = Policies(data_dir / "policies.json" if data_dir else None)
        self.quotas = Quotas(self.policies)
        self.expiry = Expiry(store, self.policies, clock, sweep_batch)
        self.usage = Usage(data_dir / "usage.json" if data_dir else None, clock, price_per_million,
                           max_label_pairs)
        self.sweep_seconds = sweep_seconds
        self.census_seconds = census_seconds
        self.census_took = 0.0  # seconds, the last census
        self.hydrate_count = hydrate
        self._task: asyncio.Task | None = None
        self._side: set[asyncio.Task] = set()
        store.hooks = self

    # -- StoreHooks ----------------------------------------------------------------------------

    def before_put(self, key: EntryKey, meta: EntryMeta) -> EntryMeta:
        old = held(self.store, key)
        meta = self.expiry.on_put(key, meta, old)
        self.quotas.check(key, meta, old is None)
        return meta

    def after_read(self, key: EntryKey, meta: EntryMeta | None) -> None:
        self.usage.read(key.namespace, key.model, meta.tokens if meta is not None else None)
        if meta is not None:
            self.expiry.on_hit(key, meta)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.expiry.seed()
        await self._census()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="cache-owner")
        if self.hydrate_count > 0:
            self._spawn(self.hydrate(self.hydrate_count))

    async def stop(self) -> None:
        for t in [self._task, *self._side]:
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        with contextlib.suppress(Exception):
            await self.recount()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._side.add(task)
        task.add_done_callback(self._side.discard)

    async def _loop(self) -> None:
        last_census = time.monotonic()
        while True:
            await asyncio.sleep(self.sweep_seconds)
            try:
                expired, unpinned = await self.expiry.sweep()
                if expired or unpinned:
                    log.debug("sweep: %d expired, %d pin leases ended", expired, unpinned)
                self.apply_reset_markers()
                # Every census_seconds, or less often when a census itself is long (a large index):
                # it takes at most 1/CENSUS_DUTY of the event loop's time.
                if time.monotonic() - last_census >= max(self.census_seconds, CENSUS_DUTY * self.census_took):
                    last_census = time.monotonic()
                    await self._census()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop outlives one bad round
                log.exception("cache owner round failed")

    def apply_reset_markers(self) -> None:
        s3 = self.store.tier("s3")
        if s3 is None:
            return
        for namespace, model, at in s3.take_resets():
            self._side.add(task := drop_local(self.store, namespace, model, at))
            task.add_done_callback(self._side.discard)

    async def _census(self) -> None:
        t = time.monotonic()
        await self.recount()
        self.census_took = time.monotonic() - t

    async def recount(self) -> None:
        """A census: quotas start again from exact numbers, usage integrates token-hours."""
        stored = await census(self.store)
        per_ns: Counter = Counter()
        for (ns, _model), s in stored.items():
            per_ns[ns] += s.raw_bytes
        self.quotas.recounted(per_ns)
        self.usage.sample(stored)
        self.usage.save()

    async def hydrate(self, n: int) -> int:
        """Warm the local tiers with up to `n` S3 entries not held locally, the most recently written
        first (hits are not shared between daemons, so recency stands in for heat)."""
        s3 = self.store.tier("s3")
        if s3 is None or s3 is self.store.first:
            return 0
        cands = [m async for m in s3.scan()]
        cands = [m for m in cands if all(t.meta(m.key) is None for t in self.store.tiers if t is not s3)]
        cands.sort(key=lambda m: (m.hits, m.created), reverse=True)
        done = 0
        for meta in cands[:n]:
            done += await self.store.warm(meta.key)
        log.info("hydrated %d of %d requested entries from S3", done, n)
        return done

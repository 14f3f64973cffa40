"""A bounded write-behind queue in front of a slower tier.

Puts return as soon as the fast tier holds the chunk; a worker copies it to the slow tier. The
queue is keyed, so a repeated put of one key is written once and a delete cancels a pending write;
a copy being written when its key is cancelled is deleted from the tier once written (a deleted
chunk is never resurrected by a late copy). When full, new items are dropped and
counted: a slow or dead tier costs cache hits, never client latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

from kvbucket.core.keys import EntryKey
from kvbucket.core.record import Record
from kvbucket.server.metrics import Metrics
from kvbucket.server.tiers.base import EntryMeta, Tier

log = logging.getLogger(__name__)


class WriteBehind:
    def __init__(self, tier: Tier, depth: int, metrics: Metrics, *, retry_seconds: float = 1.0) -> None:
        self.tier = tier
        self.depth = depth
        self._metrics = metrics
        self._retry = retry_seconds
        self._pending: OrderedDict[EntryKey, tuple[Record, EntryMeta]] = OrderedDict()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task | None = None
        self._last_error_log = 0.0
        self._writing: EntryKey | None = None  # the key being written now
        self._revoked = False  # ... and cancelled meanwhile

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"write-behind-{self.tier.name}")

    def offer(self, key: EntryKey, record: Record, meta: EntryMeta) -> bool:
        """Queue a copy; False (and a counted drop) when the queue is full."""
        if key not in self._pending and len(self._pending) >= self.depth:
            self._metrics.queue_dropped.labels(self.tier.name).inc()
            return False
        self._pending[key] = (record, meta)
        self._pending.move_to_end(key)
        self._metrics.queue_depth.labels(self.tier.name).set(len(self._pending))
        self._idle.clear()
        self._wakeup.set()
        return True

    def cancel(self, key: EntryKey) -> None:
        self._pending.pop(key, None)
        if key == self._writing:
            self._revoked = True

    def cancel_prefix(self, prefix: bytes) -> int:
        doomed = [k for k in self._pending if k.to_bytes().startswith(prefix)]
        for k in doomed:
            del self._pending[k]
        if self._writing is not None and self._writing.to_bytes().startswith(prefix):
            self._revoked = True
        return len(doomed)

    def __contains__(self, key: EntryKey) -> bool:
        return key in self._pending

    def __len__(self) -> int:
        return len(self._pending)

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued item was written or dropped; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            key, (record, meta) = self._pending.popitem(last=False)
            self._metrics.queue_depth.labels(self.tier.name).set(len(self._pending))
            self._writing, self._revoked = key, False
            try:
                evicted = await self.tier.put(key, record, meta)
                if self._revoked:  # deleted (or reset, or put anew) while written: this copy must not stay
                    await self.tier.delete(key)
                self._metrics.demotions.labels(self.tier.name).inc()
                if evicted:
                    self._metrics.evictions.labels(self.tier.name).inc(len(evicted))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failing tier degrades to a dropped copy, never an error upstream
                self._metrics.queue_dropped.labels(self.tier.name).inc()
                self._metrics.tier_errors.labels(self.tier.name, "put").inc()
                now = time.monotonic()
                if now - self._last_error_log > 10:
                    self._last_error_log = now
                    log.warning("write to tier %s failed, dropping queued copies meanwhile: %s", self.tier.name, exc)
                await asyncio.sleep(self._retry)  # back off while the tier is down
            finally:
                self._writing = None

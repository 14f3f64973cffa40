"""TieredStore: RAM -> NVMe -> S3 composed, without the tiers knowing each other.

- put: the first tier stores synchronously; slower tiers get write-behind copies as their
  admission says; entries the first tier evicts are demoted to the next tier.
- read: read-through, fastest tier first; a hit below the first tier is verified (checksum),
  promoted to the first tier, and concurrent misses of one key are fetched once.
- a corrupt record is counted, deleted from its tier and treated as a miss; a failing tier is a miss.
- lookup: the longest cached prefix, from the tiers' indexes only.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from kvbucket.core.codecs import Codec
from kvbucket.core.errors import DataLoss, InvalidArgument
from kvbucket.core.keys import EntryKey
from kvbucket.core.record import Record, RecordHeader
from kvbucket.server.metrics import Metrics
from kvbucket.server.tiers.base import EntryMeta, Evicted, Tier
from kvbucket.server.writebehind import WriteBehind

log = logging.getLogger(__name__)

# Decides whether tier `name` takes a write-through copy of an entry.
Admission = Callable[[str, EntryKey, EntryMeta], bool]


def admit_all(tier: str, key: EntryKey, meta: EntryMeta) -> bool:
    return True


class StoreHooks:
    """What the admin layer (server/owner.py) plugs into the data path; these defaults do nothing.

    `before_put` finalises a new entry's meta (TTL defaults, times) and may refuse it (a quota);
    `after_read` sees every Get of a key: the meta of the copy served, or None on a miss.
    """

    def before_put(self, key: EntryKey, meta: EntryMeta) -> EntryMeta:
        return meta

    def after_read(self, key: EntryKey, meta: EntryMeta | None) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Located:
    """Where the fastest copy of an entry lives."""

    tier: str
    meta: EntryMeta


class TieredStore:
    def __init__(
        self,
        tiers: Sequence[Tier],
        metrics: Metrics,
        *,
        write_through: Admission = admit_all,
        queue_depth: dict[str, int] | None = None,
        clock: Callable[[], float] = time.time,
        hooks: StoreHooks | None = None,
    ) -> None:
        if not tiers:
            raise ValueError("a store needs at least one tier")
        self.tiers = list(tiers)
        self.metrics = metrics
        self._write_through = write_through
        self._clock = clock
        self.hooks = hooks or StoreHooks()
        depth = queue_depth or {}
        self._behind = {t.name: WriteBehind(t, depth.get(t.name, 64), metrics) for t in self.tiers[1:]}
        self._inflight: dict[EntryKey, asyncio.Future] = {}
        # Where a chunk read from a slower tier is decoded before its promotion: a buffer of n bytes, or
        # None for a fresh one. The shared-memory plane (server/shm.py) hands out arena slots, so
        # entries promoted from NVMe or S3 (after a restart, say) are read by clients without a call.
        self.promotion_buffer: Callable[[int], memoryview | None] = lambda n: None

    @property
    def first(self) -> Tier:
        return self.tiers[0]

    def tier(self, name: str) -> Tier | None:
        return next((t for t in self.tiers if t.name == name), None)

    async def start(self) -> None:
        for wb in self._behind.values():
            wb.start()

    async def close(self) -> None:
        for wb in self._behind.values():
            await wb.flush(timeout=5)
            await wb.close()
        for t in self.tiers:
            await t.close()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait for every write-behind copy (tests, drain, shutdown)."""
        results = [await wb.flush(timeout) for wb in self._behind.values()]
        return all(results)

    # -- index -----------------------------------------------------------------------------

    def locate(self, key: EntryKey) -> Located | None:
        """The fastest tier holding `key`, from indexes only; expired entries are dropped lazily."""
        for t in self.tiers:
            meta = t.meta(key)
            if meta is None:
                continue
            if meta.expires_at and meta.expires_at <= self._clock():
                self._expire(key)
                return None
            return Located(t.name, meta)
        return None

    def lookup(self, keys: Sequence[EntryKey]) -> list[str]:
        """Tiers of the leading present keys; len() is the number of leading hits."""
        found: list[str] = []
        for k in keys:
            loc = self.locate(k)
            if loc is None:
                break
            found.append(loc.tier)
        self.metrics.lookup_keys.inc(len(keys))
        self.metrics.lookup_hits.inc(len(found))
        return found

    def exists(self, keys: Sequence[EntryKey]) -> list[bool]:
        return [self.locate(k) is not None for k in keys]

    # -- writes ----------------------------------------------------------------------------

    async def put(self, key: EntryKey, record: Record, meta: EntryMeta) -> None:
        """Store a verified chunk; raises ResourceExhausted (tier full, quota) or Unavailable."""
        meta = self.hooks.before_put(key, meta)
        for wb in self._behind.values():
            wb.cancel(key)  # a newer value supersedes a queued copy
        with self.metrics.tier_op(self.first.name, "put").time():
            evicted = await self.first.put(key, record, meta)
        self._demote(evicted)
        for name, wb in self._behind.items():
            if self._write_through(name, key, meta):
                wb.offer(key, record, meta)

    def _demote(self, evicted: list[Evicted]) -> None:
        if not evicted:
            return
        self.metrics.evictions.labels(self.first.name).inc(len(evicted))
        if len(self.tiers) < 2:
            return
        nxt = self.tiers[1]
        wb = self._behind[nxt.name]
        for ev in evicted:
            if nxt.meta(ev.key) is None and ev.key not in wb:
                wb.offer(ev.key, ev.record, ev.meta)

    def evict_first(self, nbytes: int, spare: Callable[[Record], bool]) -> int:
        """Evict >= `nbytes` from the first tier by its policy, keeping records `spare` says; demoted as
        on a put. The number of entries evicted (0: the tier cannot, or has no `evict`)."""
        evict = getattr(self.first, "evict", None)
        evicted = evict(nbytes, spare) if evict is not None else []
        self._demote(evicted)
        return len(evicted)

    async def delete(self, key: EntryKey) -> bool:
        deleted = False
        for wb in self._behind.values():
            wb.cancel(key)
        for t in self.tiers:
            try:
                deleted |= await t.delete(key)
            except Exception as exc:
                self.metrics.tier_errors.labels(t.name, "delete").inc()
                log.warning("delete from tier %s failed: %s", t.name, exc)
        return deleted

    async def remove_from(self, key: EntryKey, names: set[str]) -> dict[str, int]:
        """Drop the copies of `key` held by the named tiers; {tier: stored bytes freed}."""
        freed: dict[str, int] = {}
        for t in self.tiers:
            if t.name not in names:
                continue
            if (wb := self._behind.get(t.name)) is not None:
                wb.cancel(key)
            meta = t.meta(key)
            if meta is not None and await t.delete(key):
                freed[t.name] = meta.stored_bytes
        return freed

    def cancel_pending(self, prefix: bytes) -> int:
        """Forget queued write-behind copies of keys under `prefix` (reset)."""
        return sum(wb.cancel_prefix(prefix) for wb in self._behind.values())

    def set_meta(self, key: EntryKey, **changes) -> EntryMeta | None:
        """Change index fields (expiry, pins) on every tier holding `key`; the fastest copy's new meta."""
        first = None
        for t in self.tiers:
            new = t.set_meta(key, **changes)
            first = first or new
        return first

    async def resize(self, name: str, capacity_bytes: int) -> list[Evicted]:
        """Change a tier's capacity live; what the first tier lets go is demoted as on a put."""
        tier = self.tier(name)
        resize = getattr(tier, "resize", None)
        if resize is None:
            raise InvalidArgument(f"tier {name!r} is not enabled or has no capacity to change")
        evicted = resize(capacity_bytes)
        if asyncio.iscoroutine(evicted):
            evicted = await evicted
        if tier is self.first:
            self._demote(evicted)
        elif evicted:
            self.metrics.evictions.labels(name).inc(len(evicted))
        return evicted

    def _expire(self, key: EntryKey) -> None:
        asyncio.get_running_loop().create_task(self.delete(key))

    # -- reads -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def reading(self, key: EntryKey) -> AsyncIterator[Record | None]:
        """The chunk as a raw (codec NONE) record, held for the duration of the block; None on a miss."""
        loc = self.locate(key)
        if loc is not None and loc.tier == self.first.name:
            async with self.first.reading(key) as rec:
                if rec is not None:
                    self._hit(self.first, key)
                    self.hooks.after_read(key, loc.meta)
                    yield rec
                    return
        rec = await self._fetch_below(key) if loc is not None else None
        if rec is None:
            self.metrics.misses.inc()
        self.hooks.after_read(key, loc.meta if rec is not None else None)
        yield rec

    def served(self, key: EntryKey) -> EntryMeta | None:
        """Count a read the first tier's bytes served without the store -- a client read them from the
        shared-memory catalog (server/catalog.py) -- as `reading` counts a hit. None, and nothing
        counted, when the entry is no longer in the first tier."""
        loc = self.locate(key)
        hit = getattr(self.first, "hit", None)
        if loc is None or loc.tier != self.first.name or hit is None or hit(key) is None:
            return None
        self._hit(self.first, key)
        self.hooks.after_read(key, loc.meta)
        return loc.meta

    async def warm(self, key: EntryKey) -> bool:
        """Copy a key up to the first tier without counting it as a client read (hydrate on start)."""
        return self.locate(key) is not None and await self._fetch_below(key) is not None

    def _hit(self, tier: Tier, key: EntryKey) -> None:
        self.metrics.hits.labels(tier.name).inc()  # the tier's own get/reading recorded the access

    async def _fetch_below(self, key: EntryKey) -> Record | None:
        """Single-flight read-through from the slower tiers, with promotion."""
        fut = self._inflight.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            rec = await self._read_through(key)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as exc:
            fut.set_exception(exc)
            fut.exception()  # waiters re-raise it; no "never retrieved" warning when there are none
            raise
        finally:
            del self._inflight[key]
        fut.set_result(rec)
        return rec

    async def _read_through(self, key: EntryKey) -> Record | None:
        for i, tier in enumerate(self.tiers):
            if tier.meta(key) is None:
                continue
            try:
                with self.metrics.tier_op(tier.name, "get").time():
                    rec = await tier.get(key)
                if rec is None:
                    continue
                out = self.promotion_buffer(rec.header.raw_length) if i > 0 else None
                raw = await asyncio.to_thread(_verified_raw, rec, out)
            except DataLoss as exc:
                self.metrics.corrupt.labels(tier.name).inc()
                log.warning("corrupt record for %s in tier %s removed: %s", key, tier.name, exc)
                await _quietly(tier.delete(key))
                continue
            except Exception as exc:
                self.metrics.tier_errors.labels(tier.name, "get").inc()
                log.warning("read from tier %s failed, treated as a miss: %s", tier.name, exc)
                continue
            self._hit(tier, key)
            if i > 0:
                await self._promote(key, raw, tier.meta(key), i)
            return raw
        return None

    async def _promote(self, key: EntryKey, raw: Record, meta: EntryMeta | None, found_at: int) -> None:
        now = self._clock()
        meta = (meta or _meta_for(key, raw, now)).copy(
            codec=Codec.NONE, stored_bytes=raw.header.raw_length, last_access=now
        )
        try:
            evicted = await self.first.put(key, raw, meta)
            self.metrics.promotions.labels(self.first.name).inc()
            self._demote(evicted)
        except Exception as exc:  # no room (pins) or tier down: serve without promoting
            log.debug("promotion of %s skipped: %s", key, exc)
        for t in self.tiers[1:found_at]:
            if t.meta(key) is None and self._write_through(t.name, key, meta):
                self._behind[t.name].offer(key, raw, meta)

    # -- inspection ------------------------------------------------------------------------

    def stats(self) -> dict[str, object]:
        return {t.name: t.stats() for t in self.tiers}

    async def entries(self, prefix: bytes = b"", after: bytes = b"") -> AsyncIterator[tuple[EntryMeta, list[str]]]:
        """Every entry under `prefix` that sorts after `after` once, in key order, with the tiers that
        hold it (fastest first; the meta is the fastest one's): the tiers' ordered scans merged as
        they are read, so a page of a listing reads about a page, whatever the index holds."""
        scans = [t.scan(prefix, after) for t in self.tiers]
        heap: list[tuple[bytes, int, EntryMeta]] = []

        async def advance(i: int) -> None:
            meta = await anext(scans[i], None)
            if meta is not None:
                heapq.heappush(heap, (meta.key.to_bytes(), i, meta))

        try:
            for i in range(len(scans)):
                await advance(i)
            while heap:
                kb, i, meta = heapq.heappop(heap)
                held = [i]
                while heap and heap[0][0] == kb:  # the same entry in slower tiers
                    held.append(heapq.heappop(heap)[1])
                yield meta, [self.tiers[j].name for j in held]
                for j in held:
                    await advance(j)
        finally:
            for scan in scans:
                await scan.aclose()


def _verified_raw(rec: Record, out: memoryview | None = None) -> Record:
    """Decode and checksum a record from a slow tier -- into `out` when given (raw_length bytes: a
    compressed payload is decoded there, a raw one copied there once verified) -- and return it with
    codec NONE."""
    h = rec.header
    raw = rec.raw(out)
    if out is not None:
        if h.codec is Codec.NONE:
            out[:] = raw
        raw = out
    elif h.codec is Codec.NONE:
        return rec
    header = RecordHeader(Codec.NONE, h.dtype, h.shape, h.raw_length, h.raw_length, h.checksum, h.tokens)
    return Record(header, raw)


def _meta_for(key: EntryKey, rec: Record, now: float) -> EntryMeta:
    h = rec.header
    return EntryMeta(
        key=key, tokens=h.tokens, raw_bytes=h.raw_length, stored_bytes=h.payload_length, codec=h.codec,
        created=now, last_access=now, dtype=h.dtype, shape=h.shape,
    )


async def _quietly(coro) -> None:
    try:
        await coro
    except Exception as exc:
        log.debug("ignored: %s", exc)

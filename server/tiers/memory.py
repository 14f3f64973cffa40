"""The RAM tier: records in a dict, bounded in bytes, evicting through a policy.

Every operation is synchronous between awaits, so each is atomic on the event loop; the tier is
not meant to be shared across threads. Payloads are held as given (no copy; the store decides the
codec, raw by default). Index operations are O(1); `scan` sorts the matching keys when called.

Buffers. With a `BufferPool`, the tier owns a `bytearray` payload once `put` accepts it, and returns
it to the pool when the entry is deleted or overwritten -- only once no `reading()` holds it.
A record returned by plain `get` is valid until its entry leaves the tier; stream through
`reading()` to hold it longer. Evicted records are not recycled: `put` and `resize` hand them to
the caller (the store), which demotes them and then calls `recycle(evicted.record)`, or drops them.
`allocate(n)` gives a buffer from the same pool to receive a payload into.

`listener` (the shared-memory catalog, server/catalog.py, when the daemon has an arena) is told of
every entry stored, dropped (deleted, replaced, evicted) or given a new expiry, synchronously: an
entry is dropped there before this tier lets go of its record.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from sortedcontainers import SortedList

from kvbucket.core.buffers import BufferPool
from kvbucket.core.errors import InvalidArgument, ResourceExhausted
from kvbucket.core.keys import EntryKey
from kvbucket.core.record import Record
from kvbucket.server.policies import make_policy
from kvbucket.server.tiers.base import EntryMeta, Evicted, Tier, TierStats, scan_ordered


class Listener(Protocol):
    def stored(self, kb: bytes, record: Record, meta: EntryMeta) -> None: ...
    def changed(self, kb: bytes, meta: EntryMeta) -> None: ...
    def dropped(self, kb: bytes) -> None: ...


_SETTABLE = frozenset({"pinned", "expires_at", "ttl_seconds", "sliding", "pin_expires_at"})


@dataclass(slots=True)
class _Entry:
    record: Record
    meta: EntryMeta
    readers: int = 0
    gone: bool = False  # deleted or replaced while read: recycle when the last reader leaves

    @property
    def size(self) -> int:
        return self.meta.stored_bytes


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class MemoryTier(Tier):
    name = "ram"

    def __init__(
        self,
        capacity_bytes: int,
        policy: str = "s3fifo",
        clock: Callable[[], float] = time.time,
        pool: BufferPool | None = None,
    ) -> None:
        if capacity_bytes <= 0:
            raise InvalidArgument(f"RAM tier capacity must be positive, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self.pool = pool
        self._clock = clock
        self._policy = make_policy(policy, capacity_bytes)
        self._entries: dict[bytes, _Entry] = {}
        self._order = SortedList()  # the keys of _entries, sorted (scan)
        self._bytes = 0
        self.listener: Listener | None = None
        self._hits = self._misses = self._evictions = self._readers = 0

    # reads

    async def get(self, key: EntryKey) -> Record | None:
        entry = self._hit(key.to_bytes())
        return entry.record if entry else None

    @contextlib.asynccontextmanager
    async def reading(self, key: EntryKey) -> AsyncIterator[Record | None]:
        entry = self._hit(key.to_bytes())
        if entry is None:
            yield None
            return
        entry.readers += 1
        self._readers += 1
        try:
            yield entry.record
        finally:
            entry.readers -= 1
            self._readers -= 1
            if entry.gone and entry.readers == 0:
                self.recycle(entry.record)

    def _hit(self, kb: bytes) -> _Entry | None:
        entry = self._entries.get(kb)
        if entry is None:
            self._misses += 1
            return None
        self._hits += 1
        self._touch(kb, entry, self._clock())
        return entry

    def hit(self, key: EntryKey) -> EntryMeta | None:
        """Count a hit on `key` served without `get` (a shared-memory catalog read); its meta, or None
        (nothing counted) if it is not here."""
        kb = key.to_bytes()
        entry = self._entries.get(kb)
        if entry is None:
            return None
        self._hits += 1
        self._touch(kb, entry, self._clock())
        return entry.meta

    def touch(self, key: EntryKey, now: float) -> None:
        kb = key.to_bytes()
        entry = self._entries.get(kb)
        if entry is not None:
            self._touch(kb, entry, now)

    def _touch(self, kb: bytes, entry: _Entry, now: float) -> None:
        entry.meta.last_access = now
        entry.meta.hits += 1
        self._policy.touch(kb)

    def meta(self, key: EntryKey) -> EntryMeta | None:
        entry = self._entries.get(key.to_bytes())
        return entry.meta if entry else None  # the index's own object (Lookup is hot): do not mutate

    def scan(self, prefix: bytes = b"", after: bytes = b"") -> AsyncIterator[EntryMeta]:
        return scan_ordered(self._order, prefix, after, self._meta_of)

    def _meta_of(self, kb: bytes) -> EntryMeta | None:
        entry = self._entries.get(kb)
        return entry.meta if entry is not None else None  # the index's own object, as from meta()

    # writes

    async def put(self, key: EntryKey, record: Record, meta: EntryMeta) -> list[Evicted]:
        """Store `record`, evicting what the policy picks; ResourceExhausted stores nothing."""
        size = len(record.payload)
        if size != record.header.payload_length:
            raise InvalidArgument(f"payload is {size} bytes, its header says {record.header.payload_length}")
        if size > self.capacity_bytes:
            raise ResourceExhausted(
                f"chunk of {_mib(size)} is larger than the whole RAM tier ({_mib(self.capacity_bytes)});"
                " raise the RAM capacity or store smaller chunks"
            )
        kb = key.to_bytes()
        old = self._entries.get(kb)
        need = self._bytes - (old.size if old else 0) + size - self.capacity_bytes
        evicted = self._make_room(need, kb, size) if need > 0 else []

        now = self._clock()
        h = record.header
        new_meta = meta.copy(
            key=key, tokens=h.tokens, raw_bytes=h.raw_length, stored_bytes=size, codec=h.codec,
            dtype=h.dtype, shape=h.shape, created=meta.created or now, last_access=meta.last_access or now,
        )
        self._entries[kb] = _Entry(record, new_meta)
        if old is None:
            self._order.add(kb)
        self._bytes += size
        self._policy.insert(kb, size)
        if self.listener is not None:
            self.listener.stored(kb, record, new_meta)
        if old is not None:
            self._bytes -= old.size
            self._retire(old)
        return evicted

    def _make_room(self, need: int, kb: bytes, size: int) -> list[Evicted]:
        victims = self._policy.victims(need, lambda k: k == kb or self._protected(k))
        if victims is None:
            held = sum(e.size for k, e in self._entries.items() if k != kb and self._protected(k))
            raise ResourceExhausted(
                f"RAM tier cannot fit a chunk of {_mib(size)}: {_mib(self._bytes)} of"
                f" {_mib(self.capacity_bytes)} used, {_mib(held)} of it pinned or being read; unpin entries,"
                " retry when reads finish, or raise the RAM capacity"
            )
        return [self._evict(k) for k in victims]

    def evict(self, nbytes: int, spare: Callable[[Record], bool]) -> list[Evicted]:
        """Evict >= `nbytes` by the policy among entries neither protected nor kept by `spare`; or nothing.
        (The shared-memory arena uses it to free slots: `spare` keeps records that are not in the arena.)"""
        victims = self._policy.victims(nbytes, lambda k: self._protected(k) or spare(self._entries[k].record))
        return [self._evict(k) for k in victims or ()]

    def _protected(self, kb: bytes) -> bool:
        entry = self._entries[kb]
        return entry.readers > 0 or entry.meta.pinned

    def _evict(self, kb: bytes) -> Evicted:
        entry = self._entries.pop(kb)
        self._order.remove(kb)
        if self.listener is not None:
            self.listener.dropped(kb)
        self._bytes -= entry.size
        self._evictions += 1
        return Evicted(entry.meta.key, entry.record, entry.meta.copy())

    async def delete(self, key: EntryKey) -> bool:
        kb = key.to_bytes()
        entry = self._entries.pop(kb, None)
        if entry is None:
            return False
        self._order.remove(kb)
        if self.listener is not None:
            self.listener.dropped(kb)
        self._policy.remove(kb)
        self._bytes -= entry.size
        self._retire(entry)
        return True

    def _retire(self, entry: _Entry) -> None:
        if entry.readers:
            entry.gone = True
        else:
            self.recycle(entry.record)

    def set_meta(self, key: EntryKey, **changes) -> EntryMeta | None:
        unknown = set(changes) - _SETTABLE
        if unknown:
            names, settable = ", ".join(sorted(unknown)), ", ".join(sorted(_SETTABLE))
            raise InvalidArgument(f"cannot set {names} on a RAM entry; settable: {settable}")
        entry = self._entries.get(key.to_bytes())
        if entry is None:
            return None
        entry.meta = entry.meta.copy(**changes)
        if self.listener is not None:
            self.listener.changed(key.to_bytes(), entry.meta)
        return entry.meta.copy()

    def resize(self, capacity_bytes: int) -> list[Evicted]:
        """A new capacity, applied at once: evicts down to it, or, when pinned and read entries hold
        more than it, evicts every other entry and stays over capacity until they are released."""
        if capacity_bytes <= 0:
            raise InvalidArgument(f"RAM tier capacity must be positive, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self._policy.resize(capacity_bytes)
        need = self._bytes - capacity_bytes
        if need <= 0:
            return []
        victims = self._policy.victims(need, self._protected)
        if victims is None:
            free = sum(e.size for k, e in self._entries.items() if not self._protected(k))
            victims = self._policy.victims(free, self._protected) or []
        return [self._evict(k) for k in victims]

    # buffers

    @property
    def free_bytes(self) -> int:
        """Capacity not in use: a put of more evicts."""
        return self.capacity_bytes - self._bytes

    def allocate(self, n: int) -> bytearray:
        """A buffer to receive a payload into: from the pool when there is one."""
        return self.pool.acquire(n) if self.pool else bytearray(n)

    def recycle(self, record: Record) -> None:
        """Return `record`'s payload to the pool; the caller must hold no view of it any more."""
        if self.pool is not None and type(record.payload) is bytearray:
            self.pool.release(record.payload)

    def stats(self) -> TierStats:
        extra: dict[str, float] = {"readers": self._readers}
        if self.pool is not None:
            p = self.pool.stats()
            extra.update(pool_hits=p.hits, pool_misses=p.misses, pool_bytes=p.pooled_bytes)
        return TierStats(
            entries=len(self._entries), bytes=self._bytes, capacity_bytes=self.capacity_bytes,
            hits=self._hits, misses=self._misses, evictions=self._evictions, extra=extra,
        )

    async def close(self) -> None:
        for kb in list(self._entries):
            if self.listener is not None:
                self.listener.dropped(kb)
            self._policy.remove(kb)
            self._retire(self._entries.pop(kb))
        self._order.clear()
        self._bytes = 0

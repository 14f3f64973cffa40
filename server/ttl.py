"""Expiry and pin leases: what a put inherits, sliding refresh on hits, and a bounded sweep.

Policy (as in diskcache): an expiry is an absolute timestamp in the entry's meta, checked lazily on
every read (`TieredStore.locate`); a background sweep removes expired entries in bounded batches so
unread ones do not sit on capacity forever. Due times wait in a heap; an entry whose meta moved
(sliding refresh, new TTL, unpin) is re-checked when popped, so stale heap items cost one lookup.

- TTL on a put: the chunk header's ttl_seconds, or the namespace default (quotas.Policies).
- Sliding TTL (Anthropic-style): every hit moves expires_at to now + ttl_seconds.
- Hard pin: `pinned` with pin_expires_at 0, never evicted. Soft pin: a pin lease that ends at
  pin_expires_at, after which the entry is an ordinary one again (Mooncake's lease, simplified).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable

from kvbucket.core.errors import InvalidArgument
from kvbucket.core.keys import EntryKey
from kvbucket.server.quotas import Policies
from kvbucket.server.store import TieredStore
from kvbucket.server.tiers.base import EntryMeta

_EXPIRE, _UNPIN = 0, 1
_CARRIED = ("pinned", "pin_expires_at", "expires_at", "ttl_seconds", "sliding")


def held(store: TieredStore, key: EntryKey) -> EntryMeta | None:
    """The meta of the fastest tier's copy of `key`, or None."""
    for t in store.tiers:
        if (m := t.meta(key)) is not None:
            return m
    return None


class Expiry:
    def __init__(self, store: TieredStore, policies: Policies, clock: Callable[[], float], batch: int = 1000) -> None:
        self.store = store
        self.policies = policies
        self.clock = clock
        self.batch = batch
        self._heap: list[tuple[float, int, int, EntryKey]] = []
        self._seq = itertools.count()
        self._next: dict[tuple[int, EntryKey], float] = {}  # the earliest item queued per (kind, key)

    def _due(self, when: float, kind: int, key: EntryKey) -> None:
        # One item per (kind, key): an earlier one re-checks the meta when popped and re-queues it at
        # the then-current time, so a later due time needs no item of its own (a hot sliding entry
        # would otherwise add one per refresh, and each would be re-queued for as long as it lives).
        if self._next.get((kind, key), math.inf) <= when:
            return
        self._next[(kind, key)] = when
        heapq.heappush(self._heap, (when, next(self._seq), kind, key))

    def _track(self, meta: EntryMeta, key: EntryKey | None = None) -> None:
        key = key or meta.key
        if meta.expires_at:
            self._due(meta.expires_at, _EXPIRE, key)
        if meta.pinned and meta.pin_expires_at:
            self._due(meta.pin_expires_at, _UNPIN, key)

    # -- the data path ------------------------------------------------------------------------

    def on_put(self, key: EntryKey, meta: EntryMeta, old: EntryMeta | None) -> EntryMeta:
        """The meta to store for a put of `key`, whose fastest copy now held is `old` (or None)."""
        if meta.ttl_seconds < 0:
            raise InvalidArgument(f"ttl_seconds must not be negative, got {meta.ttl_seconds}")
        now = self.clock()
        meta = meta.copy(created=now, last_access=now)
        if old is not None and old.expires_at and old.expires_at <= now:
            old = None  # expired, only not swept yet: this put is a new entry, not heir to a dead deadline
        if old is not None and not (meta.ttl_seconds or meta.pinned):  # a re-put keeps pin and TTL
            meta = meta.copy(**{f: getattr(old, f) for f in _CARRIED})
            if meta.sliding and meta.ttl_seconds:
                meta.expires_at = now + meta.ttl_seconds
        elif meta.ttl_seconds > 0:
            meta.expires_at = now + meta.ttl_seconds
        elif not meta.expires_at:
            p = self.policies.get(key.namespace)
            if p.default_ttl_seconds > 0:
                meta = meta.copy(ttl_seconds=p.default_ttl_seconds, sliding=p.default_sliding,
                                 expires_at=now + p.default_ttl_seconds)
        self._track(meta, key)
        return meta

    def on_hit(self, key: EntryKey, meta: EntryMeta) -> None:
        if not (meta.sliding and meta.ttl_seconds):
            return
        new = self.clock() + meta.ttl_seconds
        if new - meta.expires_at >= meta.ttl_seconds * 0.01:  # not a meta rewrite per hit
            self.store.set_meta(key, expires_at=new)
            self._due(new, _EXPIRE, key)

    # -- admin changes --------------------------------------------------------------------------

    def set_ttl(self, key: EntryKey, ttl: float, sliding: bool, expire_at: float, clear: bool) -> bool:
        if clear:
            changes = dict(expires_at=0.0, ttl_seconds=0.0, sliding=False)
        elif ttl > 0:
            changes = dict(expires_at=self.clock() + ttl, ttl_seconds=ttl, sliding=sliding)
        elif expire_at > 0:
            changes = dict(expires_at=expire_at, ttl_seconds=0.0, sliding=False)
        else:
            raise InvalidArgument("give ttl_seconds > 0, expire_at > 0, or clear")
        new = self.store.set_meta(key, **changes)
        if new is not None:
            self._track(new)
        return new is not None

    def pin(self, key: EntryKey, unpin: bool, lease: float) -> bool:
        if lease < 0:
            raise InvalidArgument("a pin lease must not be negative")
        if unpin:
            changes = dict(pinned=False, pin_expires_at=0.0)
        else:
            changes = dict(pinned=True, pin_expires_at=self.clock() + lease if lease else 0.0)
        new = self.store.set_meta(key, **changes)
        if new is not None:
            self._track(new)
        return new is not None

    # -- the sweep -----------------------------------------------------------------------------

    async def seed(self) -> None:
        """Track what the tiers already hold (NVMe after a restart, an S3 manifest)."""
        async for meta, _tiers in self.store.entries():
            self._track(meta)

    async def sweep(self) -> tuple[int, int]:
        """Remove up to `batch` expired entries and end due pin leases; (expired, unpinned)."""
        now = self.clock()
        expired = unpinned = 0
        for _ in range(self.batch):
            if not self._heap or self._heap[0][0] > now:
                break
            when, _seq, kind, key = heapq.heappop(self._heap)
            if self._next.get((kind, key)) != when:
                continue  # superseded by an earlier item for this key, already handled
            del self._next[(kind, key)]
            meta = held(self.store, key)
            if meta is None:
                continue
            if kind == _EXPIRE and meta.expires_at:
                if meta.expires_at <= now:
                    await self.store.delete(key)
                    expired += 1
                else:
                    self._due(meta.expires_at, _EXPIRE, key)
            elif kind == _UNPIN and meta.pinned and meta.pin_expires_at:
                if meta.pin_expires_at <= now:
                    self.store.set_meta(key, pinned=False, pin_expires_at=0.0)
                    unpinned += 1
                else:
                    self._due(meta.pin_expires_at, _UNPIN, key)
        return expired, unpinned

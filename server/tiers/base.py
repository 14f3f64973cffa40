"""The tier protocol: what RAM, NVMe and S3 storage each implement.

Tiers never know each other; `server/store.py` composes them. Every method is async; blocking
libraries run on a bounded executor inside the tier. A miss is `None`, never an exception.
"""

from __future__ import annotations

import abc
import contextlib
import operator
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, fields
from itertools import islice
from typing import ClassVar

from sortedcontainers import SortedList

from kvbucket.core.codecs import Codec
from kvbucket.core.keys import EntryKey
from kvbucket.core.record import Record


@dataclass(slots=True)
class EntryMeta:
    """What a tier's index knows about an entry, without reading its payload."""

    key: EntryKey
    tokens: int
    raw_bytes: int
    stored_bytes: int
    codec: Codec
    created: float
    last_access: float
    hits: int = 0
    expires_at: float = 0.0  # unix seconds; 0 = never
    pinned: bool = False
    dtype: str = ""
    shape: tuple[int, ...] = ()
    ttl_seconds: float = 0.0  # the TTL it was given; with `sliding`, every hit moves expires_at
    sliding: bool = False
    pin_expires_at: float = 0.0  # soft pin: pinned until then; 0 with `pinned` = hard pin

    def copy(self, **changes) -> EntryMeta:
        new = EntryMeta(*_META_FIELDS(self))  # a third of dataclasses.replace's cost: this runs per put
        for name, value in changes.items():
            setattr(new, name, value)  # an unknown name: AttributeError (slots)
        return new


_META_FIELDS = operator.attrgetter(*(f.name for f in fields(EntryMeta)))


@dataclass(frozen=True, slots=True)
class Evicted:
    """An entry a tier let go to make room; the store may demote it to a slower tier."""

    key: EntryKey
    record: Record
    meta: EntryMeta


@dataclass(slots=True)
class TierStats:
    entries: int = 0
    bytes: int = 0
    capacity_bytes: int = 0  # 0 = unbounded
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class Tier(abc.ABC):
    """One storage tier. Invariants every implementation keeps (tests/server/tier_conformance.py):

    - `put` is atomic: a concurrent or later `get` sees the whole record or nothing;
    - `contains` and `meta` answer from the index, never reading payloads;
    - a record that fails its checksum is never returned by the store (tiers may return it;
      the store verifies, counts and deletes it);
    - `put` returns the entries it evicted to make room, so the store can demote them.
    """

    name: ClassVar[str]  # "ram" | "nvme" | "s3"

    @abc.abstractmethod
    async def get(self, key: EntryKey) -> Record | None:
        """The record, or None. A hit is an access: it updates recency, last access and hit count."""

    @abc.abstractmethod
    async def put(self, key: EntryKey, record: Record, meta: EntryMeta) -> list[Evicted]:
        """Store `record`; raises ResourceExhausted when it cannot fit even after eviction."""

    @abc.abstractmethod
    async def delete(self, key: EntryKey) -> bool: ...

    @abc.abstractmethod
    def meta(self, key: EntryKey) -> EntryMeta | None:
        """Index lookup; no I/O. The result is the index's own object: read it, change it only
        through `set_meta` (Lookup calls this per key, so it must not copy)."""

    def contains(self, keys: Sequence[EntryKey]) -> list[bool]:
        return [self.meta(k) is not None for k in keys]

    @abc.abstractmethod
    def scan(self, prefix: bytes = b"", after: bytes = b"") -> AsyncIterator[EntryMeta]:
        """Entries whose `key.to_bytes()` starts with `prefix` and sorts after `after`, in key order,
        read from an index kept in order (`scan_ordered`): a page of a million entries costs a page.
        Between yields the index may change: an entry added meanwhile may be missed, one removed is
        not yielded."""

    @abc.abstractmethod
    def stats(self) -> TierStats: ...

    def touch(self, key: EntryKey, now: float) -> None:  # noqa: B027 (a no-op is a valid default)
        """Record an access without reading (recency for eviction, last access, hit count)."""

    def set_meta(self, key: EntryKey, **changes) -> EntryMeta | None:
        """Update index fields such as `expires_at` or `pinned`; returns the new meta."""
        return None

    @contextlib.asynccontextmanager
    async def reading(self, key: EntryKey) -> AsyncIterator[Record | None]:
        """Hold an entry while its bytes are streamed: it is not evicted or recycled meanwhile."""
        yield await self.get(key)

    async def close(self) -> None:
        return None


SCAN_BATCH = 256  # keys taken from the ordered index at a time; the index may change between batches


async def scan_ordered(order: SortedList, prefix: bytes, after: bytes,
                       meta_of: Callable[[bytes], EntryMeta | None]) -> AsyncIterator[EntryMeta]:
    """`Tier.scan` over `order`, the tier's key bytes kept sorted as entries come and go (a
    sortedcontainers SortedList: O(log n) to add or remove). Reads SCAN_BATCH keys at a time from
    where the last batch ended, so an index changing while the caller awaits is never iterated
    under a change; `meta_of(key bytes)` is None for a key gone meanwhile."""
    low, inclusive = (after, False) if after >= prefix else (prefix, True)
    while True:
        batch = list(islice(order.irange(minimum=low, inclusive=(inclusive, True)), SCAN_BATCH))
        for kb in batch:
            if not kb.startswith(prefix):
                return
            meta = meta_of(kb)
            if meta is not None:
                yield meta
        if len(batch) < SCAN_BATCH:
            return
        low, inclusive = batch[-1], False

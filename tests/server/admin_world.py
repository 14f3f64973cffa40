"""A small world for the admin-module tests: RAM + NVMe (RocksDB on tmp_path) composed by a real
TieredStore, a real CacheOwner as its hooks, and the daemon's own Clock on a frozen base, so a test
moves time with `w.clock.advance(s)` instead of sleeping.

Scenario helpers name entries by short strings: `await w.put("a", "b")`, `await w.get("a")`.
A test file's fixture: `async with World.open(tmp_path) as w: yield w`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from kvbucket.core.keys import EntryKey, Layout
from kvbucket.core.record import Record, make_record
from kvbucket.server.clock import Clock
from kvbucket.server.metrics import Metrics
from kvbucket.server.owner import CacheOwner
from kvbucket.server.store import TieredStore
from kvbucket.server.tiers.base import EntryMeta, Tier
from kvbucket.server.tiers.memory import MemoryTier
from kvbucket.server.tiers.rocks import RocksTier

T0 = 1_700_000_000.0
CHUNK = 1024  # raw bytes of every test chunk
TOKENS = 16  # tokens per test chunk
FP = Layout("uint8", (CHUNK,), tokens_per_chunk=TOKENS).fingerprint()
FP2 = Layout("uint8", (CHUNK // 2, 2), tokens_per_chunk=TOKENS).fingerprint()


def key(name: str, ns: str = "ns", model: str = "m", layout: str = FP) -> EntryKey:
    return EntryKey(ns, model, layout, name.encode())


def chunk(name: str, size: int = CHUNK, tokens: int = TOKENS) -> Record:
    return make_record(bytes([sum(name.encode()) % 256]) * size, "uint8", (size,), tokens)


def meta_for(k: EntryKey, rec: Record, **kw) -> EntryMeta:
    """What the servicer builds for a put; created/last_access are stamped by the owner."""
    h = rec.header
    return EntryMeta(key=k, tokens=h.tokens, raw_bytes=h.raw_length, stored_bytes=rec.stored_length,
                     codec=h.codec, created=0.0, last_access=0.0, dtype=h.dtype, shape=h.shape, **kw)


class World:
    def __init__(self, root: Path, ram_bytes: int = 64 * CHUNK, nvme_bytes: int = 0, s3: Tier | None = None,
                 clock: Clock | None = None, **owner_kw) -> None:
        """`s3`: an S3Tier (not yet opened) to put below NVMe; `clock`: share one between worlds."""
        self.root = root
        self.clock = clock or Clock(base=lambda: T0)
        self.ram = MemoryTier(ram_bytes, policy="lru", clock=self.clock)
        self.nvme = RocksTier(root / "nvme", nvme_bytes, clock=self.clock)
        self.s3 = s3
        tiers = [self.ram, self.nvme] + ([s3] if s3 is not None else [])
        self.store = TieredStore(tiers, Metrics(), clock=self.clock)
        self.owner = CacheOwner(self.store, self.clock, root / "data", **owner_kw)

    async def start(self) -> World:
        if self.s3 is not None:
            await self.s3.open()
        await self.store.start()
        return self

    async def close(self) -> None:
        await self.store.close()

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, root: Path, **kw) -> AsyncIterator[World]:
        w = await cls(root, **kw).start()
        try:
            yield w
        finally:
            await w.close()

    @property
    def now(self) -> float:
        return self.clock()

    async def put(self, *names: str, ns: str = "ns", model: str = "m", size: int = CHUNK,
                  tokens: int = TOKENS, flush: bool = True, **meta) -> None:
        for name in names:
            k, rec = key(name, ns, model), chunk(name, size, tokens)
            await self.store.put(k, rec, meta_for(k, rec, **meta))
        if flush:
            await self.store.flush()

    async def get(self, name: str, ns: str = "ns", model: str = "m") -> bytes | None:
        async with self.store.reading(key(name, ns, model)) as rec:
            return None if rec is None else bytes(rec.raw())

    def alive(self, *names: str, ns: str = "ns", model: str = "m") -> list[str]:
        """Which of `names` the store still serves (from the indexes, expiring lazily as Lookup does)."""
        return [n for n in names if self.store.locate(key(n, ns, model)) is not None]

    def held(self, name: str, ns: str = "ns", model: str = "m") -> list[str]:
        """Tiers whose index holds `name` (no lazy expiry)."""
        return [t.name for t in self.store.tiers if t.meta(key(name, ns, model)) is not None]

    def meta(self, name: str, ns: str = "ns", model: str = "m") -> EntryMeta | None:
        loc = self.store.locate(key(name, ns, model))
        return loc.meta if loc else None


async def settle() -> None:
    """Let tasks the store spawned (lazy-expiry deletes, NVMe meta rewrites) run to completion."""
    for _ in range(20):
        await asyncio.sleep(0.01)

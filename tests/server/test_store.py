"""TieredStore over real tiers: RAM + RocksDB on disk (+ an S3 endpoint that is down)."""

from __future__ import annotations

import asyncio
import os

import pytest

from kvbucket.core.codecs import Codec
from kvbucket.core.keys import EntryKey, Layout
from kvbucket.core.record import Record, make_record
from kvbucket.server.metrics import Metrics
from kvbucket.server.store import TieredStore
from kvbucket.server.tiers.base import EntryMeta
from kvbucket.server.tiers.memory import MemoryTier
from kvbucket.server.tiers.rocks import RocksTier

LAYOUT = Layout("uint8", (4096,), tokens_per_chunk=16)
FP = LAYOUT.fingerprint()


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def key(i: int | str) -> EntryKey:
    return EntryKey("ns", "model", FP, str(i).encode())


def chunk(i: int) -> tuple[Record, bytes]:
    data = os.urandom(4096) if i < 0 else bytes([i % 256]) * 4096
    return make_record(data, "uint8", (4096,), 16), data


def meta_for(k: EntryKey, rec: Record, now: float = 1000.0, **kw) -> EntryMeta:
    return EntryMeta(key=k, tokens=16, raw_bytes=4096, stored_bytes=rec.stored_length, codec=rec.header.codec,
                     created=now, last_access=now, dtype="uint8", shape=(4096,), **kw)


def metric(m: Metrics, name: str, **labels) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def store(tmp_path):
    clock = FakeClock()
    metrics = Metrics()
    ram = MemoryTier(4 * 4096, policy="lru", clock=clock)
    nvme = RocksTier(tmp_path / "nvme", 0, clock=clock)
    s = TieredStore([ram, nvme], metrics, clock=clock)
    await s.start()
    s.clock = clock
    yield s
    await s.close()


async def put(store: TieredStore, i: int, **meta) -> bytes:
    rec, data = chunk(i)
    await store.put(key(i), rec, meta_for(key(i), rec, **meta))
    return data


async def read(store: TieredStore, i: int) -> bytes | None:
    async with store.reading(key(i)) as rec:
        return None if rec is None else bytes(rec.raw())


async def test_write_through_reaches_disk_and_lookup_sees_tiers(store):
    for i in range(3):
        await put(store, i)
    assert store.lookup([key(0), key(1), key(2), key(3)]) == ["ram", "ram", "ram"]
    await store.flush()
    assert store.tier("nvme").contains([key(0), key(1), key(2)]) == [True] * 3


async def test_ram_evictions_are_served_from_disk_and_promoted(store):
    for i in range(6):  # RAM holds 4
        await put(store, i)
    await store.flush()
    ram = store.tier("ram")
    assert ram.meta(key(0)) is None and store.lookup([key(0)]) == ["nvme"]
    assert await read(store, 0) == chunk(0)[1]
    assert ram.meta(key(0)) is not None  # promoted
    assert metric(store.metrics, "kvbucket_store_promotions_total", tier="ram") == 1
    assert metric(store.metrics, "kvbucket_store_hits_total", tier="nvme") == 1


async def test_on_evict_demotion_without_write_through(tmp_path):
    metrics = Metrics()
    ram = MemoryTier(2 * 4096, policy="lru")
    nvme = RocksTier(tmp_path / "nvme", 0)
    s = TieredStore([ram, nvme], metrics, write_through=lambda tier, k, m: False)
    await s.start()
    try:
        for i in range(3):
            await put(s, i)
        await s.flush()
        assert nvme.contains([key(0), key(1), key(2)]) == [True, False, False]  # only the evicted one
        assert await read(s, 0) == chunk(0)[1]
    finally:
        await s.close()


async def test_concurrent_misses_read_the_slow_tier_once(store):
    for i in range(6):
        await put(store, i)
    await store.flush()
    nvme = store.tier("nvme")
    calls = 0
    original = nvme.get

    async def counting_get(k):
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return await original(k)

    nvme.get = counting_get
    results = await asyncio.gather(*(read(store, 0) for _ in range(8)))
    assert results == [chunk(0)[1]] * 8
    assert calls == 1


async def test_corrupt_record_in_a_slow_tier_is_removed_and_missed(store):
    nvme = store.tier("nvme")
    rec, data = chunk(7)
    bad = Record(rec.header, bytes([data[0] ^ 1]) + data[1:])  # payload no longer matches checksum
    await nvme.put(key(7), bad, meta_for(key(7), bad))
    assert store.lookup([key(7)]) == ["nvme"]
    assert await read(store, 7) is None
    assert nvme.meta(key(7)) is None
    assert metric(store.metrics, "kvbucket_store_corrupt_total", tier="nvme") == 1


async def test_compressed_records_below_are_served_raw(store):
    nvme = store.tier("nvme")
    data = bytes(range(256)) * 16
    rec = make_record(data, "uint8", (4096,), 16, Codec.ZSTD)
    await nvme.put(key(9), rec, meta_for(key(9), rec))
    assert await read(store, 9) == data
    async with store.reading(key(9)) as got:
        assert got.header.codec is Codec.NONE


async def test_delete_cancels_a_pending_copy(store):
    await put(store, 1)
    assert await store.delete(key(1))
    await store.flush()
    assert store.tier("nvme").meta(key(1)) is None
    assert store.lookup([key(1)]) == []


async def test_expired_entries_miss(store):
    await put(store, 1, expires_at=1010.0)
    assert store.lookup([key(1)]) == ["ram"]
    store.clock.t = 1011.0
    assert store.lookup([key(1)]) == []
    await asyncio.sleep(0.01)  # the lazy delete runs on the loop
    assert store.tier("ram").meta(key(1)) is None


async def test_a_dead_tier_degrades_to_misses_and_dropped_copies(tmp_path):
    from kvbucket.server.tiers.s3 import S3Tier

    metrics = Metrics()
    ram = MemoryTier(2 * 4096)
    dead = S3Tier("bucket", endpoint_url="http://127.0.0.1:9", timeout_s=0.5, max_attempts=1)
    s = TieredStore([ram, dead], metrics)
    await s.start()
    try:
        await put(s, 1)
        assert await read(s, 1) == chunk(1)[1]
        await s.flush(timeout=10)
        assert metric(metrics, "kvbucket_store_queue_dropped_total", tier="s3") >= 1
        assert await read(s, 2) is None
    finally:
        await s.close()


async def test_entries_merge_tiers(store):
    for i in range(5):
        await put(store, i)
    await store.flush()
    listed = [(m.key.hash, tiers) async for m, tiers in store.entries()]
    assert len(listed) == 5
    assert dict(listed)[b"4"] == ["ram", "nvme"]
    assert dict(listed)[b"0"] == ["nvme"]
    keys = [m.key.to_bytes() async for m, _ in store.entries()]
    assert keys == sorted(keys)  # one merged key order, each entry once
    after = [(m.key.hash, tiers) async for m, tiers in store.entries(after=keys[1])]
    assert after == listed[2:]  # a page resumes after the last key of the one before
    first = store.entries()
    assert (await anext(first))[0].key.to_bytes() == keys[0]
    await first.aclose()  # a listing stopped early (a full page) closes the tiers' scans

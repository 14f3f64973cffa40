"""The shared-memory catalog: the daemon's writer (server/catalog.py) against the client's reader
(core/catalog.py) over one real arena, and through the RAM tier that drives it."""

from __future__ import annotations

import time

import numpy as np
import pytest

from kvbucket.core import catalog
from kvbucket.core.codecs import Codec
from kvbucket.core.keys import EntryKey
from kvbucket.core.record import Record, RecordHeader, checksum
from kvbucket.server.arena import Arena
from kvbucket.server.tiers.base import EntryMeta
from kvbucket.server.tiers.memory import MemoryTier

N = 64 << 10


@pytest.fixture
def arena(tmp_path):
    a = Arena(16 << 20, tmp_path, reserve=False)
    yield a
    a.close()


def key(i: int) -> EntryKey:
    return EntryKey("ns", "m", "0123456789abcdef", b"h%d" % i)


def record_in(slot: np.ndarray, fill: int) -> Record:
    slot[:] = fill
    return Record(RecordHeader(Codec.NONE, "uint8", (len(slot),), len(slot), len(slot), checksum(slot), 7),
                  memoryview(slot))


def meta(k: EntryKey, expires_at: float = 0.0) -> EntryMeta:
    return EntryMeta(key=k, tokens=7, raw_bytes=N, stored_bytes=N, codec=Codec.NONE, created=1.0,
                     last_access=1.0, expires_at=expires_at)


def reader(a: Arena) -> catalog.Reader:
    return catalog.Reader(memoryview(a._mm), a.catalog_offset, a.catalog_buckets)


def test_a_listed_entry_is_found_with_its_slot_and_checksum(arena):
    cat, r = arena.catalog(), reader(arena)
    slot = arena.slot(N)
    rec = record_in(slot, 3)
    cat.stored(key(1).to_bytes(), rec, meta(key(1)))
    f = r.find(key(1).to_bytes(), now=100.0)
    assert f is not None and f.offset == arena.offset_of(slot) and f.length == N
    assert f.checksum == rec.header.checksum == checksum(r.view[f.offset : f.offset + f.length])
    assert r.unchanged(f) and r.now() is not None
    assert r.find(key(2).to_bytes(), now=100.0) is None
    assert len(cat) == 1


def test_any_change_to_an_entry_is_seen_by_a_reader_that_found_it(arena):
    cat, r = arena.catalog(), reader(arena)
    kb = key(1).to_bytes()
    first, second = arena.slot(N), arena.slot(N)
    cat.stored(kb, record_in(first, 1), meta(key(1)))
    f = r.find(kb, 0.0)
    cat.changed(kb, meta(key(1), expires_at=50.0))  # a sliding TTL's hit
    assert not r.unchanged(f)
    assert r.find(kb, 49.0) is not None and r.find(kb, 50.0) is None  # expired: not served
    f = r.find(kb, 0.0)
    cat.stored(kb, record_in(second, 2), meta(key(1)))  # replaced by a new value
    assert not r.unchanged(f) and r.find(kb, 0.0).offset != f.offset
    f = r.find(kb, 0.0)
    cat.dropped(kb)  # evicted or deleted: unlisted before the slot can be freed
    assert not r.unchanged(f) and r.find(kb, 0.0) is None and len(cat) == 0


def test_only_raw_payloads_in_arena_slots_are_listed(arena):
    cat, r = arena.catalog(), reader(arena)
    heap = np.zeros(N, dtype=np.uint8)
    cat.stored(key(1).to_bytes(), record_in(heap, 1), meta(key(1)))  # heap memory
    slot = arena.slot(N)
    rec = record_in(slot, 1)
    h = rec.header
    lz4 = Record(RecordHeader(Codec.LZ4, h.dtype, h.shape, h.raw_length, h.payload_length, h.checksum, 7),
                 rec.payload)
    cat.stored(key(2).to_bytes(), lz4, meta(key(2)))  # compressed bytes: not what a reader copies out
    assert r.find(key(1).to_bytes(), 0.0) is None and r.find(key(2).to_bytes(), 0.0) is None
    cat.stored(key(2).to_bytes(), rec, meta(key(2)))
    assert r.find(key(2).to_bytes(), 0.0) is not None
    cat.stored(key(2).to_bytes(), record_in(heap, 2), meta(key(2)))  # replaced from outside the arena
    assert r.find(key(2).to_bytes(), 0.0) is None


def test_two_full_buckets_leave_an_entry_unlisted_until_a_way_frees(tmp_path):
    a = Arena(1 << 20, tmp_path, reserve=False)  # the smallest table: 16 buckets
    cat, r = a.catalog(), reader(a)
    mask = a.catalog_buckets - 1
    kbs, i = [], 0
    while len(kbs) < 2 * catalog.WAYS + 1:  # keys whose two buckets are both bucket 0
        kb = key(i).to_bytes()
        lo, hi = catalog.tag_of(kb)
        if hi & mask == 0 and (lo >> 1) & mask == 0:
            kbs.append(kb)
        i += 1
    rec = record_in(a.slot(4096), 5)
    for kb in kbs[: catalog.WAYS + 1]:  # one more than a bucket holds
        cat.stored(kb, rec, meta(key(0)))
    assert cat.unlisted == 1 and len(cat) == catalog.WAYS
    assert r.find(kbs[catalog.WAYS], 0.0) is None and all(r.find(kb, 0.0) for kb in kbs[: catalog.WAYS])
    cat.dropped(kbs[0])
    cat.stored(kbs[catalog.WAYS], rec, meta(key(0)))
    assert r.find(kbs[catalog.WAYS], 0.0) is not None
    a.close()


def test_an_entry_whose_first_bucket_is_full_goes_to_its_second(tmp_path):
    a = Arena(1 << 20, tmp_path, reserve=False)
    cat, r = a.catalog(), reader(a)
    mask = a.catalog_buckets - 1
    first, other, i = [], None, 0
    while len(first) < catalog.WAYS or other is None:
        kb = key(i).to_bytes()
        lo, hi = catalog.tag_of(kb)
        if hi & mask == 0 and len(first) < catalog.WAYS:
            first.append(kb)
        elif hi & mask == 0 and (lo >> 1) & mask != 0:
            other = kb
        i += 1
    rec = record_in(a.slot(4096), 5)
    for kb in first:
        cat.stored(kb, rec, meta(key(0)))
    cat.stored(other, rec, meta(key(0)))  # bucket 0 is full: it lands in its second bucket
    assert cat.unlisted == 0 and r.find(other, 0.0) is not None
    a.close()


def test_readers_keep_the_daemons_time_and_a_closed_catalog_tells_them_to_ask_the_daemon(arena):
    cat, r = arena.catalog(), reader(arena)
    assert abs(r.now() - time.time()) < 60
    cat.clock_moved(3600.0)  # a test's daemon clock, an hour ahead
    assert r.now() - time.time() > 3500
    cat.close()
    assert r.now() is None


def test_a_reader_refuses_a_table_that_does_not_fit_the_mapping(arena):
    with pytest.raises(ValueError):
        catalog.Reader(memoryview(arena._mm), arena.catalog_offset, 3)
    with pytest.raises(ValueError):
        catalog.Reader(memoryview(arena._mm), arena.size, arena.catalog_buckets)


def test_an_arena_without_a_catalog_puts_its_slots_right_after_the_header(tmp_path):
    a = Arena(1 << 20, tmp_path, reserve=False, catalog=False)
    assert a.catalog() is None and a.catalog_buckets == 0
    assert a.offset_of(a.slot(4096)) == 4096
    a.close()


def test_catalog_sizing_is_a_power_of_two_with_room_to_spare():
    for size in (1 << 20, 1 << 30, 8 << 30, 3 << 30):
        b = catalog.buckets_for(size)
        assert b >= 16 and b & (b - 1) == 0
        assert b * catalog.WAYS >= 2 * size // catalog.SLOT_BYTES
    assert catalog.table_bytes(catalog.buckets_for(8 << 30)) <= (16 << 20) + 64


async def test_the_ram_tier_drives_the_catalog_through_every_way_an_entry_leaves(arena):
    cat, r = arena.catalog(), reader(arena)
    tier = MemoryTier(3 * N, policy="lru")
    tier.listener = cat

    async def put(i: int) -> None:
        await tier.put(key(i), record_in(arena.slot(N), i), meta(key(i)))

    for i in range(3):
        await put(i)
    assert all(r.find(key(i).to_bytes(), 0.0) for i in range(3))
    await put(3)  # evicts key 0 (least recently used)
    assert r.find(key(0).to_bytes(), 0.0) is None and r.find(key(3).to_bytes(), 0.0) is not None
    assert await tier.delete(key(1))
    assert r.find(key(1).to_bytes(), 0.0) is None
    tier.set_meta(key(2), expires_at=10.0)
    assert r.find(key(2).to_bytes(), 9.0) is not None and r.find(key(2).to_bytes(), 10.0) is None
    assert tier.resize(N)  # evicts down to one entry
    assert len(cat) == 1
    await tier.close()
    assert len(cat) == 0

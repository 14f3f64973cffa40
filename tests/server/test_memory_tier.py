from __future__ import annotations

import pytest

from kvbucket.core.buffers import BufferPool
from kvbucket.core.errors import InvalidArgument, ResourceExhausted
from kvbucket.core.record import Record
from kvbucket.server.tiers.memory import MemoryTier
from kvbucket.tests.server.tier_conformance import T0, TierConformance, make_entry, make_key, scan_list

KiB = 1024


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("policy", ["s3fifo", "lru"])
class TestMemoryTierConformance(TierConformance):
    @pytest.fixture
    async def tier(self, policy: str):
        tier = MemoryTier(64 << 20, policy=policy, pool=BufferPool(16 << 20))
        yield tier
        await tier.close()


async def fill(tier: MemoryTier, names: str, size: int = 1 * KiB) -> dict[str, object]:
    """Put one entry per character of `names`; returns name -> key."""
    keys = {}
    for i, name in enumerate(names):
        key = make_key(name.encode())
        record, meta, _ = make_entry(key, size, seed=i)
        assert await tier.put(key, record, meta) == []
        keys[name] = key
    return keys


async def put(tier: MemoryTier, name: str, size: int = 1 * KiB) -> list[str]:
    """Put `name`; returns the names it evicted."""
    key = make_key(name.encode())
    record, meta, _ = make_entry(key, size)
    return [e.key.hash.decode() for e in await tier.put(key, record, meta)]


async def test_lru_eviction_order():
    tier = MemoryTier(4 * KiB, policy="lru")
    keys = await fill(tier, "abcd")
    await tier.get(keys["a"])
    assert await put(tier, "e") == ["b"]
    assert await put(tier, "f", 2 * KiB) == ["c", "d"]
    assert tier.contains([keys[n] for n in "abcd"]) == [True, False, False, False]
    stats = tier.stats()
    assert (stats.entries, stats.bytes, stats.evictions) == (3, 4 * KiB, 3)


async def test_s3fifo_evicts_one_hit_wonders_first():
    tier = MemoryTier(4 * KiB, policy="s3fifo")
    keys = await fill(tier, "abcd")
    await tier.get(keys["a"])
    await tier.get(keys["c"])
    assert await put(tier, "e", 2 * KiB) == ["b", "d"]


async def test_evicted_entries_carry_record_and_meta():
    tier = MemoryTier(2 * KiB, policy="lru")
    key = make_key(b"a")
    record, meta, raw = make_entry(key, 2 * KiB)
    await tier.put(key, record, meta.copy(hits=0))
    (evicted,) = await tier.put(make_key(b"b"), *make_entry(make_key(b"b"), 1 * KiB)[:2])
    assert evicted.key == key and evicted.record is record
    assert evicted.meta.stored_bytes == 2 * KiB
    assert bytes(evicted.record.raw()) == raw


async def test_readers_are_protected_from_eviction():
    tier = MemoryTier(3 * KiB, policy="lru")
    keys = await fill(tier, "abc")
    async with tier.reading(keys["a"]) as held:
        assert held is not None
        assert await put(tier, "d") == ["b"]
        assert tier.stats().extra["readers"] == 1
    assert tier.stats().extra["readers"] == 0
    assert await put(tier, "e") == ["c"]  # b gone, a was just read: c is oldest


async def test_pinned_entries_are_never_evicted():
    tier = MemoryTier(3 * KiB, policy="s3fifo")
    keys = await fill(tier, "abc")
    tier.set_meta(keys["a"], pinned=True)
    tier.set_meta(keys["b"], pinned=True)
    assert await put(tier, "d") == ["c"]
    assert await put(tier, "e") == ["d"]
    assert tier.contains([keys["a"], keys["b"]]) == [True, True]


async def test_resource_exhausted_when_only_pinned_or_read_entries_remain():
    tier = MemoryTier(3 * KiB, policy="lru")
    keys = await fill(tier, "abc")
    tier.set_meta(keys["a"], pinned=True)
    tier.set_meta(keys["b"], pinned=True)
    before = tier.stats()
    async with tier.reading(keys["c"]):
        with pytest.raises(ResourceExhausted, match="pinned or being read") as exc:
            await put(tier, "d")
    assert "raise the RAM capacity" in str(exc.value)
    after = tier.stats()
    assert (after.entries, after.bytes, after.evictions) == (before.entries, before.bytes, 0)
    assert tier.meta(make_key(b"d")) is None
    assert [m.key for m in await scan_list(tier)] == [keys[n] for n in "abc"]
    assert await put(tier, "d") == ["c"]  # the reader is done


async def test_chunk_larger_than_capacity_is_resource_exhausted():
    tier = MemoryTier(4 * KiB)
    with pytest.raises(ResourceExhausted, match="larger than the whole RAM tier"):
        await put(tier, "a", 5 * KiB)
    assert tier.stats().entries == 0


async def test_overwrite_of_a_big_entry_frees_its_own_bytes():
    tier = MemoryTier(4 * KiB, policy="lru")
    await fill(tier, "ab", 2 * KiB)
    assert await put(tier, "a", 3 * KiB) == ["b"]
    assert tier.stats().bytes == 3 * KiB


async def test_payload_length_must_match_header():
    tier = MemoryTier(4 * KiB)
    key = make_key(b"a")
    record, meta, _ = make_entry(key, 1 * KiB)
    with pytest.raises(InvalidArgument):
        await tier.put(key, Record(record.header, bytes(record.payload)[:-1]), meta)


async def test_resize_shrinks_by_evicting():
    tier = MemoryTier(8 * KiB, policy="lru")
    keys = await fill(tier, "abcdefgh")
    evicted = tier.resize(5 * KiB)
    assert [e.key for e in evicted] == [keys[n] for n in "abc"]
    stats = tier.stats()
    assert (stats.capacity_bytes, stats.bytes, stats.entries) == (5 * KiB, 5 * KiB, 5)
    assert tier.resize(16 * KiB) == []
    assert await put(tier, "z", 10 * KiB) == []


async def test_resize_below_pinned_bytes_evicts_the_rest_and_stays_over():
    tier = MemoryTier(4 * KiB, policy="s3fifo")
    keys = await fill(tier, "abcd")
    for n in "ab":
        tier.set_meta(keys[n], pinned=True)
    evicted = tier.resize(1 * KiB)
    assert sorted(e.key.hash for e in evicted) == [b"c", b"d"]
    assert tier.stats().bytes == 2 * KiB
    with pytest.raises(ResourceExhausted):
        await put(tier, "e")
    with pytest.raises(InvalidArgument):
        tier.resize(0)


async def test_fake_clock_sets_created_and_last_access():
    clock = FakeClock()
    tier = MemoryTier(4 * KiB, clock=clock)
    key = make_key(b"a")
    record, meta, _ = make_entry(key, 1 * KiB)
    await tier.put(key, record, meta.copy(created=0.0, last_access=0.0))
    assert (tier.meta(key).created, tier.meta(key).last_access) == (T0, T0)
    clock.now = T0 + 30
    await tier.get(key)
    assert tier.meta(key).last_access == T0 + 30
    assert tier.meta(key).hits == 1
    tier.touch(key, T0 + 99)
    assert (tier.meta(key).last_access, tier.meta(key).hits, tier.meta(key).created) == (T0 + 99, 2, T0)
    stats = tier.stats()
    assert (stats.hits, stats.misses) == (1, 0)
    await tier.get(make_key(b"zz"))
    assert tier.stats().misses == 1


async def test_set_meta_changes_pins_and_rejects_other_fields():
    tier = MemoryTier(4 * KiB)
    keys = await fill(tier, "a")
    assert tier.set_meta(keys["a"], pinned=True).pinned is True
    assert tier.meta(keys["a"]).pinned is True
    with pytest.raises(InvalidArgument, match="settable"):
        tier.set_meta(keys["a"], stored_bytes=1)


async def test_delete_while_reading_keeps_the_readers_record_and_recycles_after():
    pool = BufferPool(1 << 20)
    tier = MemoryTier(64 * KiB, pool=pool)
    key = make_key(b"a")
    record, meta, raw = make_entry(key, 4 * KiB)
    buf = tier.allocate(len(record.payload))
    buf[:] = record.payload
    await tier.put(key, Record(record.header, buf), meta)
    async with tier.reading(key) as held:
        assert await tier.delete(key) is True
        assert tier.meta(key) is None and await tier.get(key) is None
        assert pool.stats().pooled_bytes == 0  # still held by the reader
        assert bytes(held.raw()) == raw
    assert pool.stats().pooled_bytes == 4 * KiB
    assert tier.allocate(4 * KiB) is buf


async def test_overwrite_recycles_the_old_buffer_but_eviction_leaves_it_to_the_caller():
    pool = BufferPool(1 << 20)
    tier = MemoryTier(8 * KiB, policy="lru", pool=pool)

    async def put_pooled(name: str, size: int) -> list:
        key = make_key(name.encode())
        record, meta, _ = make_entry(key, size)
        buf = tier.allocate(size)
        buf[:] = record.payload
        return await tier.put(key, Record(record.header, buf), meta)

    await put_pooled("a", 4 * KiB)
    await put_pooled("a", 4 * KiB)  # the first buffer goes back to the pool
    assert pool.stats().pooled_bytes == 4 * KiB
    await put_pooled("b", 4 * KiB)  # takes the pooled buffer
    (evicted,) = await put_pooled("c", 4 * KiB)
    assert pool.stats().pooled_bytes == 0  # the evicted buffer is the store's to demote
    tier.recycle(evicted.record)
    assert pool.stats().pooled_bytes == 4 * KiB


async def test_bytes_payloads_are_never_pooled():
    pool = BufferPool(1 << 20)
    tier = MemoryTier(8 * KiB, pool=pool)
    keys = await fill(tier, "ab")
    await tier.delete(keys["a"])
    await tier.close()
    assert pool.stats().pooled_bytes == 0
    assert tier.stats().entries == 0 and tier.stats().bytes == 0


def test_unknown_policy_and_bad_capacity():
    with pytest.raises(ValueError, match="lru, s3fifo"):
        MemoryTier(1024, policy="clock")
    with pytest.raises(InvalidArgument):
        MemoryTier(0)


def test_an_entry_meta_copy_carries_every_field_changes_only_those_named_and_refuses_unknown_ones():
    _, meta, _ = make_entry(make_key(b"m"))
    meta.pinned, meta.expires_at, meta.hits, meta.shape = True, 42.0, 3, (2, 4)
    copy = meta.copy(hits=9)
    assert copy is not meta and copy.hits == 9 and meta.hits == 3
    copy.hits = 3
    assert copy == meta
    with pytest.raises(AttributeError):
        meta.copy(no_such_field=1)

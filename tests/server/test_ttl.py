"""server/ttl.py: what a put inherits, sliding refresh on hits, pins and leases, the bounded sweep.

Scenarios run over RAM + NVMe with the owner's Expiry wired into the store, on a frozen clock.
"""

from __future__ import annotations

import pytest

from kvbucket.core.errors import InvalidArgument
from kvbucket.server.tiers.rocks import RocksTier
from kvbucket.server.ttl import Expiry
from kvbucket.tests.server.admin_world import World, key, settle


@pytest.fixture
async def world(tmp_path):
    async with World.open(tmp_path) as w:
        yield w


async def test_put_ttl_is_absolute_from_put_time(world):
    # put a ttl 10; put b; t+9 -> a b; t+10 -> b (a gone, lazily, and from every tier)
    await world.put("a", ttl_seconds=10)
    await world.put("b")
    assert world.meta("a").expires_at == world.now + 10
    assert world.meta("b").expires_at == 0
    world.clock.advance(9)
    assert world.alive("a", "b") == ["a", "b"]
    world.clock.advance(1)
    assert world.alive("a", "b") == ["b"]
    await settle()
    assert world.held("a") == []


async def test_absolute_ttl_is_not_moved_by_hits(world):
    # put a ttl 10 absolute; t+5 get a; t+10 -> a gone
    await world.put("a", ttl_seconds=10)
    world.clock.advance(5)
    assert await world.get("a") is not None
    world.clock.advance(5)
    assert world.alive("a") == []
    assert await world.get("a") is None


async def test_sliding_ttl_moves_with_every_hit(world):
    # put a ttl 10 sliding; t+5 get a; t+12 -> a alive (expires t+15); t+15 -> gone
    await world.put("a", ttl_seconds=10, sliding=True)
    world.clock.advance(5)
    assert await world.get("a") is not None
    assert world.meta("a").expires_at == world.now + 10
    world.clock.advance(7)
    assert world.alive("a") == ["a"]
    world.clock.advance(3)
    assert world.alive("a") == []


async def test_sliding_refresh_is_not_a_meta_rewrite_per_hit(world):
    # a hit within 1% of the TTL of the last refresh leaves expires_at alone
    await world.put("a", ttl_seconds=1000, sliding=True)
    first = world.meta("a").expires_at
    world.clock.advance(5)  # 0.5% of the TTL
    await world.get("a")
    assert world.meta("a").expires_at == first
    world.clock.advance(10)
    await world.get("a")
    assert world.meta("a").expires_at == world.now + 1000


async def test_sliding_refresh_reaches_every_tier(world):
    await world.put("a", ttl_seconds=10, sliding=True)
    world.clock.advance(8)
    await world.get("a")
    assert world.ram.meta(key("a")).expires_at == world.now + 10
    assert world.nvme.meta(key("a")).expires_at == world.now + 10


async def test_namespace_default_applies_to_puts_without_ttl(world):
    # default ns 30s sliding; put a (none) b (ttl 5) in ns, c in other -> a 30s sliding, b 5s, c never
    world.owner.policies.set("ns", default_ttl_seconds=30, default_sliding=True)
    await world.put("a")
    await world.put("b", ttl_seconds=5)
    await world.put("c", ns="other")
    a, b, c = world.meta("a"), world.meta("b"), world.meta("c", ns="other")
    assert (a.ttl_seconds, a.sliding, a.expires_at) == (30, True, world.now + 30)
    assert (b.ttl_seconds, b.sliding, b.expires_at) == (5, False, world.now + 5)
    assert (c.ttl_seconds, c.expires_at) == (0, 0)
    # t+20 get a; t+40 -> a alive (slid to t+50), b gone, c alive
    world.clock.advance(20)
    await world.get("a")
    world.clock.advance(20)
    assert world.alive("a", "b") == ["a"]
    assert world.alive("c", ns="other") == ["c"]


async def test_absolute_namespace_default(world):
    world.owner.policies.set("ns", default_ttl_seconds=30)
    await world.put("a")
    world.clock.advance(20)
    await world.get("a")
    world.clock.advance(10)
    assert world.alive("a") == []


async def test_default_changes_do_not_touch_existing_entries(world):
    await world.put("a")
    world.owner.policies.set("ns", default_ttl_seconds=5)
    await world.put("b")
    world.clock.advance(6)
    assert world.alive("a", "b") == ["a"]


async def test_reput_keeps_pin_and_ttl(world):
    # put a ttl 10 sliding, pin a; t+4 put a again (no TTL) -> still pinned, slid to t+14
    await world.put("a", ttl_seconds=10, sliding=True)
    world.owner.expiry.pin(key("a"), unpin=False, lease=0)
    world.clock.advance(4)
    await world.put("a")
    m = world.meta("a")
    assert m.pinned and m.sliding and m.ttl_seconds == 10
    assert m.expires_at == world.now + 10
    assert m.created == world.now


async def test_reput_with_its_own_ttl_replaces_the_old_one(world):
    await world.put("a", ttl_seconds=100)
    world.clock.advance(1)
    await world.put("a", ttl_seconds=5)
    assert world.meta("a").expires_at == world.now + 5


async def test_reput_after_expiry_starts_a_fresh_life(world):
    # put a ttl 10; t+20 (no read, no sweep) put a again -> a is alive, not born expired
    world.owner.policies.set("ns", default_ttl_seconds=100)
    await world.put("a", ttl_seconds=10)
    world.clock.advance(20)
    await world.put("a")
    assert world.alive("a") == ["a"]
    assert world.meta("a").expires_at == world.now + 100  # a new entry: the namespace default


async def test_negative_ttl_is_refused(world):
    with pytest.raises(InvalidArgument, match="ttl_seconds"):
        await world.put("a", ttl_seconds=-1)
    assert world.held("a") == []


# -- admin changes --------------------------------------------------------------------------------


@pytest.mark.parametrize("sliding", [False, True])
async def test_set_ttl_relative(world, sliding):
    await world.put("a", "b")
    assert world.owner.expiry.set_ttl(key("a"), 10, sliding, 0, False)
    m = world.meta("a")
    assert (m.ttl_seconds, m.sliding, m.expires_at) == (10, sliding, world.now + 10)
    world.clock.advance(6)
    await world.get("a")
    world.clock.advance(6)
    assert world.alive("a", "b") == (["a", "b"] if sliding else ["b"])


async def test_set_ttl_absolute_and_clear(world):
    # put a b; a expires at t+50; b ttl 5 then cleared; t+60 -> b alive, a gone
    await world.put("a", "b")
    expiry = world.owner.expiry
    assert expiry.set_ttl(key("a"), 0, True, world.now + 50, False)
    assert (world.meta("a").sliding, world.meta("a").ttl_seconds) == (False, 0)  # absolute: never slides
    assert expiry.set_ttl(key("b"), 5, True, 0, False)
    assert expiry.set_ttl(key("b"), 0, False, 0, True)
    assert (world.meta("b").expires_at, world.meta("b").ttl_seconds, world.meta("b").sliding) == (0, 0, False)
    world.clock.advance(60)
    assert await expiry.sweep() == (1, 0)  # a; b's heap item is stale
    assert world.alive("a", "b") == ["b"]


async def test_set_ttl_needs_something_and_misses_unknown_keys(world):
    with pytest.raises(InvalidArgument):
        world.owner.expiry.set_ttl(key("a"), 0, False, 0, False)
    assert world.owner.expiry.set_ttl(key("nope"), 10, False, 0, False) is False


async def test_hard_pin_soft_pin_and_unpin(world):
    await world.put("a", "b", "c")
    expiry = world.owner.expiry
    assert expiry.pin(key("a"), unpin=False, lease=0)  # hard
    assert expiry.pin(key("b"), unpin=False, lease=30)  # soft: a 30 s lease
    assert (world.meta("a").pinned, world.meta("a").pin_expires_at) == (True, 0)
    assert (world.meta("b").pinned, world.meta("b").pin_expires_at) == (True, world.now + 30)
    assert expiry.pin(key("nope"), unpin=False, lease=0) is False
    with pytest.raises(InvalidArgument):
        expiry.pin(key("c"), unpin=False, lease=-1)
    # t+29 sweep -> b still pinned; t+30 sweep -> b's lease ended, a still pinned
    world.clock.advance(29)
    assert await expiry.sweep() == (0, 0)
    assert world.meta("b").pinned
    world.clock.advance(1)
    assert await expiry.sweep() == (0, 1)
    assert not world.meta("b").pinned and world.meta("b").pin_expires_at == 0
    assert world.meta("a").pinned
    assert not world.nvme.meta(key("b")).pinned  # every tier
    assert expiry.pin(key("a"), unpin=True, lease=0)
    assert not world.meta("a").pinned


async def test_lease_extended_or_made_hard_before_it_ends(world):
    await world.put("a", "b")
    expiry = world.owner.expiry
    expiry.pin(key("a"), unpin=False, lease=10)
    expiry.pin(key("b"), unpin=False, lease=10)
    world.clock.advance(5)
    expiry.pin(key("a"), unpin=False, lease=20)  # now ends at t+25
    expiry.pin(key("b"), unpin=False, lease=0)  # hard from now on
    world.clock.advance(10)
    assert await expiry.sweep() == (0, 0)
    assert world.meta("a").pinned and world.meta("b").pinned
    world.clock.advance(10)
    assert await expiry.sweep() == (0, 1)
    assert not world.meta("a").pinned and world.meta("b").pinned


async def test_pinned_entries_still_expire(world):
    # a pin protects from eviction, not from its TTL
    await world.put("a", ttl_seconds=10, pinned=True)
    world.clock.advance(10)
    assert await world.owner.expiry.sweep() == (1, 0)
    assert world.held("a") == []


# -- the sweep ------------------------------------------------------------------------------------


async def test_sweep_removes_unread_expired_entries_from_every_tier(world):
    # put a ttl 5, b ttl 15, c; t+10 sweep -> a removed (1 expired); t+20 -> b removed
    await world.put("a", ttl_seconds=5)
    await world.put("b", ttl_seconds=15)
    await world.put("c")
    expiry = world.owner.expiry
    assert await expiry.sweep() == (0, 0)
    world.clock.advance(10)
    assert await expiry.sweep() == (1, 0)
    assert world.held("a") == [] and world.held("b") == ["ram", "nvme"]
    world.clock.advance(10)
    assert await expiry.sweep() == (1, 0)
    assert [m.key.hash async for m, _ in world.store.entries()] == [b"c"]


async def test_sweep_is_bounded_by_its_batch(tmp_path):
    async with World.open(tmp_path, sweep_batch=3) as w:
        names = [f"k{i}" for i in range(8)]
        await w.put(*names, ttl_seconds=1)
        w.clock.advance(2)
        counts = [await w.owner.expiry.sweep() for _ in range(4)]
        assert counts == [(3, 0), (3, 0), (2, 0), (0, 0)]
        assert [m async for m, _ in w.store.entries()] == []


async def test_sweep_reschedules_entries_that_slid(world):
    # put a ttl 10 sliding; t+8 get a; t+11 sweep -> a stays; t+18 sweep -> gone
    await world.put("a", ttl_seconds=10, sliding=True)
    world.clock.advance(8)
    await world.get("a")
    world.clock.advance(3)
    assert await world.owner.expiry.sweep() == (0, 0)
    assert world.held("a") == ["ram", "nvme"]
    world.clock.advance(7)
    assert await world.owner.expiry.sweep() == (1, 0)
    assert world.held("a") == []


async def test_hot_sliding_entry_keeps_one_heap_item(world):
    # a sliding entry hit 1000 times must not grow the sweep's heap by one item per refresh
    await world.put("a", ttl_seconds=100, sliding=True)
    expiry = world.owner.expiry
    for _ in range(1000):
        world.clock.advance(2)
        await world.get("a")
        await expiry.sweep()
    assert len(expiry._heap) <= 2
    assert world.alive("a") == ["a"]


async def test_sweep_skips_entries_deleted_or_cleared_meanwhile(world):
    await world.put("a", "b", ttl_seconds=5)
    await world.store.delete(key("a"))
    world.owner.expiry.set_ttl(key("b"), 0, False, 0, True)
    world.clock.advance(10)
    assert await world.owner.expiry.sweep() == (0, 0)
    assert world.alive("b") == ["b"]


async def test_seed_tracks_what_nvme_held_before_a_restart(tmp_path):
    # put a ttl 10 (persisted on NVMe); restart with a fresh Expiry over that NVMe; t+10 sweep -> gone
    w = await World(tmp_path).start()
    await w.put("a", ttl_seconds=10)
    await w.put("b")
    await w.close()
    nvme = RocksTier(tmp_path / "nvme", 0, clock=w.clock)
    from kvbucket.server.metrics import Metrics
    from kvbucket.server.quotas import Policies
    from kvbucket.server.store import TieredStore

    store = TieredStore([nvme], Metrics(), clock=w.clock)
    await store.start()
    try:
        expiry = Expiry(store, Policies(None), w.clock)
        await expiry.seed()
        w.clock.advance(10)
        assert await expiry.sweep() == (1, 0)
        assert nvme.meta(key("a")) is None and nvme.meta(key("b")) is not None
    finally:
        await store.close()

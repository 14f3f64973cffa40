"""server/owner.py: the hooks' order on a put, the census feeding quotas and usage (and how often it
runs), hydrate's choice, reset markers from another daemon, and counters saved at stop."""

from __future__ import annotations

import asyncio

import pytest

from kvbucket.core.errors import ResourceExhausted
from kvbucket.server.clock import Clock
from kvbucket.server.maintenance import evict, reset
from kvbucket.server.selectors import Selector
from kvbucket.server.tiers.s3 import S3Tier
from kvbucket.tests.server.admin_world import CHUNK, T0, World, key, settle

CREDS = {"access_key": "test", "secret_key": "test"}


@pytest.fixture
async def world(tmp_path):
    async with World.open(tmp_path) as w:
        yield w


def s3tier(endpoint: str, bucket: str, clock) -> S3Tier:
    return S3Tier(bucket, endpoint_url=endpoint, create_bucket=True, manifest_refresh_s=0, clock=clock,
                  **CREDS)


async def test_recount_sums_models_per_namespace(world):
    await world.put("a", "b")
    await world.put("c", model="m2", size=2 * CHUNK)
    await world.put("d", ns="other")
    await world.owner.recount()
    assert world.owner.quotas.used("ns") == 4 * CHUNK
    assert world.owner.quotas.used("other") == CHUNK
    assert world.owner.usage.stored[("ns", "m2")].raw_bytes == 2 * CHUNK


async def test_refused_put_leaves_no_trace(world):
    # quota refuses after the TTL hook ran: nothing stored, the sweep's stale item is harmless
    world.owner.policies.set("ns", quota_bytes=CHUNK, default_ttl_seconds=5)
    await world.put("a")
    with pytest.raises(ResourceExhausted):
        await world.put("b")
    world.clock.advance(10)
    assert await world.owner.expiry.sweep() == (1, 0)
    assert world.held("b") == []


async def test_start_seeds_expiry_and_stop_saves_usage(tmp_path):
    async with World.open(tmp_path, sweep_seconds=3600) as w:  # the loop never runs a round here
        await w.owner.start()
        await w.put("a", ttl_seconds=10)
        await w.get("a")
        await w.owner.stop()
    async with World.open(tmp_path, sweep_seconds=3600) as w:
        await w.owner.start()
        w.clock.advance(10)
        assert await w.owner.expiry.sweep() == (1, 0)  # known from the NVMe index, not from a put
        await w.get("a")
        await w.owner.stop()
    async with World.open(tmp_path) as w:
        c = w.owner.usage.counters[("ns", "m")]
        assert (c.hits, c.misses) == (1, 1)


async def test_hydrate_warms_the_most_recent_s3_entries(tmp_path, s3_server, s3_bucket):
    # put a b c at t0, t0+10, t0+20; drop the local copies; hydrate 2 -> b c in RAM, not counted as reads
    clock = Clock(base=lambda: T0)
    async with World.open(tmp_path, s3=s3tier(s3_server, s3_bucket, clock), clock=clock) as w:
        for n in "abc":
            await w.put(n)
            clock.advance(10)
        await evict(w.store, Selector(namespace="ns"), {"ram", "nvme"}, w.now)
        assert await w.owner.hydrate(2) == 2
        assert [n for n in "abc" if "ram" in w.held(n)] == ["b", "c"]
        assert w.owner.usage.counters == {}
        assert await w.owner.hydrate(5) == 1  # only a is left to warm


async def test_reset_markers_from_another_daemon_drop_local_copies(tmp_path, s3_server, s3_bucket):
    clock = Clock(base=lambda: T0)
    async with (World.open(tmp_path / "A", s3=s3tier(s3_server, s3_bucket, clock), clock=clock) as a,
                World.open(tmp_path / "B", s3=s3tier(s3_server, s3_bucket, clock), clock=clock) as b):
        await b.put("x", "y")
        await b.put("z", ns="other")
        clock.advance(1)
        _ = [s async for s in reset(a.store, "ns", "", a.now)]
        await b.s3.refresh()
        b.owner.apply_reset_markers()
        await settle()
        assert [n for n in "xy" if b.held(n)] == []
        assert b.held("z", ns="other") == ["ram", "nvme", "s3"]
        assert b.store.locate(key("x")) is None


async def test_a_long_census_runs_less_often(tmp_path, monkeypatch):
    # A census walks every index: at a million entries it takes seconds of the event loop, so the
    # next one waits CENSUS_DUTY times as long as the last took, whatever census_seconds says.
    async with World.open(tmp_path, sweep_seconds=0.01, census_seconds=0.01) as w:
        calls = []

        async def slow_recount():
            calls.append(asyncio.get_running_loop().time())
            await asyncio.sleep(0.05)  # 20 x 0.05 s: the next census no sooner than 1 s after this one

        monkeypatch.setattr(w.owner, "recount", slow_recount)
        await w.owner.start()  # the first census
        try:
            assert len(calls) == 1 and w.owner.census_took >= 0.05
            await asyncio.sleep(0.5)  # ~40 sweeps, each past census_seconds
            assert len(calls) == 1
        finally:
            await w.owner.stop()

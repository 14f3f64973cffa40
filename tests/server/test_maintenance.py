"""server/maintenance.py: evict by selector, reset a scope, drop another daemon's reset, drain to S3;
over RAM + NVMe (and a real S3 endpoint, moto_server, for reset markers and drain)."""

from __future__ import annotations

import asyncio

import pytest

from kvbucket.core.errors import FailedPrecondition
from kvbucket.proto import admin_pb2 as apb
from kvbucket.server.clock import Clock
from kvbucket.server.maintenance import drain, drop_local, evict, reset
from kvbucket.server.selectors import Selector
from kvbucket.server.tiers.s3 import S3Tier
from kvbucket.tests.server.admin_world import CHUNK, T0, World, key

CREDS = {"access_key": "test", "secret_key": "test"}


@pytest.fixture
async def world(tmp_path):
    async with World.open(tmp_path) as w:
        yield w


def s3tier(endpoint: str, bucket: str, clock) -> S3Tier:
    return S3Tier(bucket, endpoint_url=endpoint, create_bucket=True, manifest_refresh_s=0, clock=clock,
                  **CREDS)


async def hashes(w: World, prefix: bytes = b"") -> list[str]:
    return [m.key.hash.decode() async for m, _ in w.store.entries(prefix)]


async def run(steps) -> list:
    return [(s.phase, s.tier, s.done, s.total, s.finished) async for s in steps]


# -- evict -------------------------------------------------------------------------------------


async def test_evict_refuses_an_empty_selector(world):
    await world.put("a")
    with pytest.raises(FailedPrecondition):
        await evict(world.store, Selector(), set(), world.now)
    with pytest.raises(FailedPrecondition):
        await evict(world.store, Selector(namespace="ns", scoped=True), set(), world.now)
    assert await hashes(world) == ["a"]
    out = await evict(world.store, Selector(all=True), set(), world.now)
    assert out.entries == 1 and await hashes(world) == []


async def test_evict_from_every_tier_counts_entries_and_bytes(world):
    # put a b c; evict hashes a b -> 2 entries, from ram and nvme, bytes = their stored sizes
    await world.put("a", "b", "c")
    ram_size, nvme_size = world.ram.meta(key("a")).stored_bytes, world.nvme.meta(key("a")).stored_bytes
    out = await evict(world.store, Selector(hashes=frozenset([b"a", b"b"])), set(), world.now)
    assert (out.entries, out.skipped_pinned) == (2, 0)
    assert out.tier_entries == {"ram": 2, "nvme": 2}
    assert out.tier_bytes == {"ram": 2 * ram_size, "nvme": 2 * nvme_size}
    assert out.bytes == 2 * (ram_size + nvme_size)
    assert await hashes(world) == ["c"]


async def test_evict_from_one_tier_keeps_the_other_copy(world):
    # evict --from ram: a stays on NVMe and is served (and promoted) from there
    await world.put("a", "b")
    out = await evict(world.store, Selector(namespace="ns"), {"ram"}, world.now)
    assert out.tier_entries == {"ram": 2} and "nvme" not in out.tier_bytes
    assert world.held("a") == ["nvme"]
    assert await world.get("a") is not None
    assert world.held("a") == ["ram", "nvme"]


async def test_evict_from_a_tier_that_does_not_hold_it_is_nothing(world):
    await world.put("a")
    await world.ram.delete(key("a"))
    out = await evict(world.store, Selector(namespace="ns"), {"ram"}, world.now)
    assert (out.entries, out.bytes) == (0, 0)
    assert world.held("a") == ["nvme"]


async def test_pinned_entries_are_skipped_and_counted(world):
    await world.put("a", "b", "c")
    world.owner.expiry.pin(key("a"), unpin=False, lease=0)
    out = await evict(world.store, Selector(namespace="ns"), set(), world.now)
    assert (out.entries, out.skipped_pinned) == (2, 1)
    assert await hashes(world) == ["a"]


async def test_dry_run_counts_without_removing(world):
    await world.put("a", "b")
    world.owner.expiry.pin(key("b"), unpin=False, lease=0)
    dry = await evict(world.store, Selector(namespace="ns"), set(), world.now, dry_run=True)
    assert await hashes(world) == ["a", "b"]
    real = await evict(world.store, Selector(namespace="ns"), set(), world.now)
    assert (dry.entries, dry.bytes, dry.skipped_pinned, dry.tier_entries) == (
        real.entries, real.bytes, real.skipped_pinned, real.tier_entries)


async def test_evict_idle_entries_by_the_clock(world):
    # put a b; t+100 get a; t+3600 evict idle 3600 -> b only
    await world.put("a", "b")
    world.clock.advance(100)
    await world.get("a")
    world.clock.advance(3500)
    out = await evict(world.store, Selector(namespace="ns", idle_seconds=3600), set(), world.now)
    assert out.entries == 1 and await hashes(world) == ["a"]


async def test_evict_cancels_a_queued_copy(world):
    # put a without waiting for write-behind; evict it everywhere -> NVMe never gets it
    await world.put("a", flush=False)
    await evict(world.store, Selector(hashes=frozenset([b"a"])), set(), world.now)
    await world.store.flush()
    assert world.held("a") == []


# -- reset -------------------------------------------------------------------------------------


async def test_reset_a_model_pinned_included_other_scopes_kept(world):
    # ns/m: a b (b pinned), ns/m2: c, other/m: d; reset ns/m -> c d remain
    await world.put("a", "b")
    await world.put("c", model="m2")
    await world.put("d", ns="other")
    world.owner.expiry.pin(key("b"), unpin=False, lease=0)
    steps = await run(reset(world.store, "ns", "m", world.now))
    assert steps[0] == ("delete", "ram", 0, 2, False)
    assert ("delete", "ram", 2, 2, False) in steps and ("delete", "nvme", 2, 2, False) in steps
    assert steps[-1][0] == "done" and steps[-1][4] is True
    assert await hashes(world) == ["c", "d"]


async def test_reset_a_namespace_or_everything(world):
    await world.put("a")
    await world.put("c", model="m2")
    await world.put("d", ns="other")
    await run(reset(world.store, "ns", "", world.now))
    assert await hashes(world) == ["d"]
    await run(reset(world.store, "", "", world.now))
    assert await hashes(world) == []


async def test_reset_is_bounded_by_its_name_not_a_string_prefix(world):
    # reset of namespace "ns" leaves "ns2" alone
    await world.put("a")
    await world.put("b", ns="ns2")
    await run(reset(world.store, "ns", "", world.now))
    assert await hashes(world) == ["b"]


async def test_reset_reports_progress_and_bytes(world):
    names = [f"k{i:03d}" for i in range(130)]
    await world.put(*names, size=64)
    ram_bytes = world.ram.stats().bytes
    steps = [(s.tier, s.done, s.total, s.bytes, s.failed)
             async for s in reset(world.store, "ns", "", world.now)]
    ram = [s for s in steps if s[0] == "ram"]
    assert ram[0][1:3] == (0, 130)
    assert ram[-1] == ("ram", 130, 130, ram_bytes, 0)
    assert [s[1] for s in ram if 0 < s[1] < 130] == [64, 128]  # progress every 64
    assert world.ram.stats().bytes == 0


async def test_reset_drops_queued_copies(world):
    await world.put("a", "b", flush=False)
    await run(reset(world.store, "ns", "", world.now))
    await world.store.flush()
    assert await hashes(world) == []


async def test_a_copy_being_written_when_its_scope_is_reset_does_not_stay(world):
    # the NVMe copy of a is being written (not queued any more) when ns is reset
    await world.put("a", flush=False)
    wb = world.store._behind["nvme"]
    for _ in range(10_000):
        if wb._writing is not None:
            break
        await asyncio.sleep(0)
    assert wb._writing is not None
    await run(reset(world.store, "ns", "", world.now))
    await world.store.flush()
    assert world.held("a") == []


async def test_drop_local_drops_queued_copies(world):
    # a b put at t0, their NVMe copies still queued when another daemon's reset arrives
    await world.put("a", "b", flush=False)
    n = await drop_local(world.store, "ns", "m", T0 + 5)
    await world.store.flush()
    assert n >= 2  # from RAM, and from NVMe what was being written as the reset came
    assert await hashes(world) == []


async def test_drop_local_applies_another_daemons_reset(world):
    # put a b at t0; t+10 put c; a marker "reset ns/m at t0+5" -> a b go, c (created later) stays
    await world.put("a", "b")
    world.clock.advance(10)
    await world.put("c")
    await world.put("z", ns="other")
    n = await drop_local(world.store, "ns", "m", T0 + 5)
    assert n == 4  # a and b, from RAM and NVMe
    assert await hashes(world) == ["c", "z"]


# -- with S3 (moto_server) -----------------------------------------------------------------------


async def test_drain_needs_s3(world):
    with pytest.raises(FailedPrecondition, match="no S3 tier"):
        await run(drain(world.store, ""))


async def test_drain_copies_what_s3_lacks(tmp_path, s3_server, s3_bucket):
    # a b only in RAM/NVMe (S3 copy evicted); drain ns -> both on S3, already-held c untouched
    clock = Clock(base=lambda: T0)
    async with World.open(tmp_path, s3=s3tier(s3_server, s3_bucket, clock), clock=clock) as w:
        await w.put("a", "b", "c")
        await w.put("x", ns="other")
        await evict(w.store, Selector(namespace="ns", hashes=frozenset([b"a", b"b"])), {"s3"}, w.now)
        await evict(w.store, Selector(namespace="other"), {"s3"}, w.now)
        assert [n for n in "abc" if "s3" in w.held(n)] == ["c"]
        steps = [s async for s in drain(w.store, "ns")]
        last = steps[-1]
        assert (last.finished, last.done, last.failed, last.total) == (True, 2, 0, 2)
        assert last.bytes == 2 * CHUNK
        assert all("s3" in w.held(n) for n in "abc")
        assert "s3" not in w.held("x", ns="other")


async def test_reset_reaches_s3_and_leaves_a_marker_for_other_daemons(tmp_path, s3_server, s3_bucket):
    # daemons A and B share a bucket; A resets ns -> S3 emptied of ns; B sees the marker and drops its copies
    clock = Clock(base=lambda: T0)
    async with (World.open(tmp_path / "A", s3=s3tier(s3_server, s3_bucket, clock), clock=clock) as a,
                World.open(tmp_path / "B", s3=s3tier(s3_server, s3_bucket, clock), clock=clock) as b):
        await a.put("p", "q")
        await a.put("keep", ns="other")
        await b.put("p", "r")
        clock.advance(1)
        steps = [s async for s in reset(a.store, "ns", "", a.now)]
        assert any(s.phase == "marker" for s in steps)
        assert await hashes(a) == ["keep"]
        await b.s3.refresh()
        marks = b.s3.take_resets()
        assert marks == [("ns", "", a.now)]
        assert [n for n in ("p", "r") if "s3" in b.held(n)] == []
        await drop_local(b.store, *marks[0])
        assert await hashes(b, b"ns\x1f") == []
        assert await hashes(b) == ["keep"]


async def test_evict_of_pinned_selector_removes_nothing(world):
    await world.put("a", "b")
    world.owner.expiry.pin(key("a"), unpin=False, lease=0)
    out = await evict(world.store, Selector(pinned=apb.PIN_PINNED), set(), world.now)
    assert (out.entries, out.skipped_pinned) == (0, 1)
    out = await evict(world.store, Selector(pinned=apb.PIN_UNPINNED), set(), world.now)
    assert (out.entries, out.skipped_pinned) == (1, 0)
    assert await hashes(world) == ["a"]

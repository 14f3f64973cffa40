"""server/quotas.py: namespace policies persisted, and the quota check on puts, through the owner's
hooks on a real store (RAM + NVMe), with the census (owner.recount) that resets the accounting."""

from __future__ import annotations

import json

import pytest

from kvbucket.core.errors import InvalidArgument, ResourceExhausted
from kvbucket.server.maintenance import evict
from kvbucket.server.quotas import NamespacePolicy, Policies, Quotas
from kvbucket.server.selectors import Selector
from kvbucket.tests.server.admin_world import CHUNK, World, chunk, key, meta_for


@pytest.fixture
async def world(tmp_path):
    async with World.open(tmp_path, ram_bytes=4 * CHUNK) as w:
        yield w


# -- Policies ----------------------------------------------------------------------------------


def test_policies_default_set_persist_and_reload(tmp_path):
    path = tmp_path / "data" / "policies.json"
    p = Policies(path)
    assert p.get("ns") == NamespacePolicy()
    assert p.set("ns", quota_bytes=5 << 20) == NamespacePolicy(quota_bytes=5 << 20)
    p.set("ns", default_ttl_seconds=60, default_sliding=True)  # changes merge into what is there
    p.set("other", default_ttl_seconds=5)
    assert p.get("ns") == NamespacePolicy(5 << 20, 60, True)
    again = Policies(path)
    assert again.items() == [("ns", NamespacePolicy(5 << 20, 60, True)),
                             ("other", NamespacePolicy(0, 5, False))]
    assert not path.with_suffix(".tmp").exists()


def test_policy_back_to_defaults_is_forgotten(tmp_path):
    p = Policies(tmp_path / "policies.json")
    p.set("ns", quota_bytes=100)
    p.set("ns", quota_bytes=0)
    assert p.items() == []
    assert json.loads((tmp_path / "policies.json").read_text()) == {}


@pytest.mark.parametrize("changes", [dict(quota_bytes=-1), dict(default_ttl_seconds=-5)])
def test_negative_policies_are_refused(tmp_path, changes):
    p = Policies(tmp_path / "policies.json")
    with pytest.raises(InvalidArgument, match="negative"):
        p.set("ns", **changes)
    assert p.items() == []


def test_policy_needs_a_valid_namespace():
    with pytest.raises(InvalidArgument):
        Policies(None).set("bad name!", quota_bytes=1)


@pytest.mark.parametrize("text", ["{not json", '{"ns": {"quota_bytes": 1, "bogus": 2}}', '["a list"]'])
def test_unreadable_policies_start_empty(tmp_path, text):
    path = tmp_path / "policies.json"
    path.write_text(text)
    assert Policies(path).items() == []


# -- the check ---------------------------------------------------------------------------------


async def test_puts_count_until_the_quota_refuses(world):
    # quota 3 chunks; put a b c -> used 3 chunks; put d -> refused, nothing stored
    world.owner.policies.set("ns", quota_bytes=3 * CHUNK)
    await world.put("a", "b", "c")
    assert world.owner.quotas.used("ns") == 3 * CHUNK
    with pytest.raises(ResourceExhausted) as exc:
        await world.put("d")
    assert world.held("d") == []
    assert world.owner.quotas.used("ns") == 3 * CHUNK  # a refused put is not counted
    msg = str(exc.value)
    assert "namespace 'ns' is over its quota" in msg
    assert "0.0 MiB used + 0.0 MiB > 0.0 MiB" in msg  # 1 KiB chunks round to 0.0 MiB
    assert "kvbucket evict --namespace ns" in msg and "kvbucket quota set ns SIZE" in msg


async def test_refusal_message_in_mib(tmp_path):
    q = Quotas(Policies(None))
    q.policies.set("big", quota_bytes=10 << 20)
    q.recounted({"big": 9 << 20})
    k = key("x", ns="big")
    meta = meta_for(k, chunk("x")).copy(raw_bytes=3 << 19)
    with pytest.raises(ResourceExhausted, match=r"9\.0 MiB used \+ 1\.5 MiB > 10\.0 MiB"):
        q.check(k, meta, is_new=True)
    q.check(k, meta.copy(raw_bytes=1 << 20), is_new=True)  # exactly at the quota fits
    assert q.used("big") == 10 << 20


async def test_quota_is_per_namespace_and_zero_means_none(world):
    world.owner.policies.set("ns", quota_bytes=CHUNK)
    await world.put("a")
    await world.put("x", "y", "z", ns="other")  # no quota there
    with pytest.raises(ResourceExhausted):
        await world.put("b")
    world.owner.policies.set("ns", quota_bytes=0)
    await world.put("b")
    assert world.owner.quotas.used("other") == 3 * CHUNK


async def test_overwrites_do_not_count_twice(world):
    world.owner.policies.set("ns", quota_bytes=2 * CHUNK)
    await world.put("a", "b")
    await world.put("a", "b")  # the same keys again: not new
    assert world.owner.quotas.used("ns") == 2 * CHUNK


async def test_quota_counts_raw_bytes_across_tiers_once(world):
    # RAM holds 4 chunks; put 6 -> 2 demoted to NVMe only; census still counts 6 chunks, once each
    await world.put("a", "b", "c", "d", "e", "f")
    await world.owner.recount()
    assert world.owner.quotas.used("ns") == 6 * CHUNK
    assert sum(1 for n in "abcdef" if world.held(n) == ["nvme"]) == 2


async def test_deletes_are_overcounted_until_the_census(world):
    # quota 2; put a b; delete a -> still counted (errs on refusing); recount -> c fits
    world.owner.policies.set("ns", quota_bytes=2 * CHUNK)
    await world.put("a", "b")
    await world.store.delete(key("a"))
    with pytest.raises(ResourceExhausted):
        await world.put("c")
    await world.owner.recount()
    assert world.owner.quotas.used("ns") == CHUNK
    await world.put("c")
    assert world.owner.quotas.used("ns") == 2 * CHUNK


async def test_admin_evict_then_census_frees_quota(world):
    world.owner.policies.set("ns", quota_bytes=3 * CHUNK)
    await world.put("a", "b", "c")
    out = await evict(world.store, Selector(namespace="ns", hashes=frozenset([b"a", b"b"])), set(), world.now)
    assert out.entries == 2
    await world.owner.recount()
    assert world.owner.quotas.used("ns") == CHUNK
    await world.put("d", "e")
    with pytest.raises(ResourceExhausted):
        await world.put("f")


async def test_evicted_from_ram_still_counts(world):
    # an entry evicted from RAM lives on in NVMe: it still takes quota
    world.owner.policies.set("ns", quota_bytes=100 * CHUNK)
    await world.put(*"abcdefgh")  # RAM holds 4
    await world.owner.recount()
    assert world.owner.quotas.used("ns") == 8 * CHUNK
    out = await evict(world.store, Selector(namespace="ns"), {"ram"}, world.now)
    assert out.entries == 4 and out.tier_entries == {"ram": 4}
    await world.owner.recount()
    assert world.owner.quotas.used("ns") == 8 * CHUNK


async def test_expired_entries_leave_the_census(world):
    world.owner.policies.set("ns", quota_bytes=2 * CHUNK)
    await world.put("a", "b", ttl_seconds=10)
    world.clock.advance(10)
    await world.owner.expiry.sweep()
    await world.owner.recount()
    assert world.owner.quotas.used("ns") == 0
    await world.put("c", "d")

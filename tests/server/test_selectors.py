"""server/selectors.py: every filter alone and combined, empty-selector refusal, tenant scoping and
the proto conversion, matched against real RAM + NVMe indexes."""

from __future__ import annotations

import pytest

from kvbucket.core.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from kvbucket.proto import admin_pb2 as apb
from kvbucket.proto import store_pb2 as pb
from kvbucket.server.auth import Authenticator, Caller
from kvbucket.server.selectors import Selector, from_proto, select
from kvbucket.tests.server.admin_world import FP, FP2, World, chunk, key, meta_for


@pytest.fixture
async def world(tmp_path):
    """ns/m: a b c (a read 3 times, b pinned, c ttl 500); ns/m2: d; ns/m with layout FP2: e; other/m: f.
    a b c d f are put (and a read) at t0, e at t0+100 (now). RAM and NVMe hold everything but d (NVMe
    only) and f (RAM only)."""
    async with World.open(tmp_path) as w:
        await w.put("a", "b")
        await w.put("c", ttl_seconds=500)
        await w.put("d", model="m2")
        await w.put("f", ns="other")
        w.owner.expiry.pin(key("b"), unpin=False, lease=0)
        for _ in range(3):
            await w.get("a")
        w.clock.advance(100)
        k, rec = key("e", layout=FP2), chunk("e")
        await w.store.put(k, rec, meta_for(k, rec))
        await w.store.flush()
        await w.ram.delete(key("d", model="m2"))  # d only on NVMe now
        await w.nvme.delete(key("f", ns="other"))  # f only in RAM
        yield w


async def names(w: World, sel: Selector, after: bytes = b"") -> list[str]:
    return [m.key.hash.decode() async for m, _ in select(w.store, sel, w.now, after)]


@pytest.mark.parametrize(
    "sel, want",
    [
        (Selector(), ["a", "b", "c", "e", "d", "f"]),
        (Selector(namespace="ns"), ["a", "b", "c", "e", "d"]),
        (Selector(namespace="other"), ["f"]),
        (Selector(namespace="n"), []),  # a namespace is a whole name, not a prefix
        (Selector(model="m2"), ["d"]),
        (Selector(namespace="ns", model="m"), ["a", "b", "c", "e"]),
        (Selector(layout=FP2), ["e"]),
        (Selector(namespace="ns", model="m", layout=FP), ["a", "b", "c"]),
        (Selector(namespace="ns", layout=FP), ["a", "b", "c", "d"]),  # layout without model
        (Selector(hashes=frozenset([b"a", b"d", b"zz"])), ["a", "d"]),
        (Selector(hash_prefix=b"c"), ["c"]),
        (Selector(tiers=frozenset(["nvme"])), ["a", "b", "c", "e", "d"]),
        (Selector(tiers=frozenset(["ram"])), ["a", "b", "c", "e", "f"]),
        (Selector(tiers=frozenset(["s3"])), []),
        (Selector(tiers=frozenset(["s3", "nvme"]), namespace="ns", model="m2"), ["d"]),
        (Selector(min_hits=3), ["a"]),
        (Selector(min_hits=4), []),
        (Selector(idle_seconds=100), ["a", "b", "c", "d", "f"]),  # a was read at t0 too: idle exactly 100
        (Selector(idle_seconds=101), []),
        (Selector(pinned=apb.PIN_PINNED), ["b"]),
        (Selector(pinned=apb.PIN_UNPINNED, namespace="ns", model="m"), ["a", "c", "e"]),
        (Selector(expires_before=1e12), ["c"]),  # entries that never expire are not "expiring"
        (Selector(namespace="ns", model="m", tiers=frozenset(["ram"]), pinned=apb.PIN_UNPINNED,
                  hashes=frozenset([b"a", b"b", b"e"]), min_hits=1), ["a"]),
        (Selector(namespace="ns", hash_prefix=b"e", layout=FP2, tiers=frozenset(["nvme"])), ["e"]),
    ],
    ids=lambda v: v.describe() if isinstance(v, Selector) else None,
)
async def test_filters_alone_and_combined(world, sel, want):
    assert sorted(await names(world, sel)) == sorted(want)


async def test_idle_and_expiry_are_relative_to_now(world):
    t = world.now
    c_expires = world.meta("c").expires_at
    assert await names(world, Selector(idle_seconds=50)) == ["a", "b", "c", "d", "f"]  # a: last read at t0
    assert await names(world, Selector(expires_before=c_expires)) == []  # strictly before
    assert await names(world, Selector(expires_before=c_expires + 1)) == ["c"]
    assert await names(world, Selector(idle_seconds=1)) == ["a", "b", "c", "d", "f"]  # not e, just put
    assert world.now == t


async def test_each_entry_once_in_key_order_with_its_tiers(world):
    got = [(m.key.to_bytes(), tiers) async for m, tiers in select(world.store, Selector(), world.now)]
    assert [k for k, _ in got] == sorted(k for k, _ in got)
    by_name = {k.rsplit(b"\x1f", 1)[1].decode(): t for k, t in got}
    assert by_name == {"a": ["ram", "nvme"], "b": ["ram", "nvme"], "c": ["ram", "nvme"],
                       "e": ["ram", "nvme"], "d": ["nvme"], "f": ["ram"]}


async def test_paging_after_a_key(world):
    sel = Selector(namespace="ns")
    every = [m.key.to_bytes() async for m, _ in select(world.store, sel, world.now)]
    assert await names(world, sel, after=every[1]) == [k.rsplit(b"\x1f", 1)[1].decode() for k in every[2:]]
    assert await names(world, sel, after=every[-1]) == []


@pytest.mark.parametrize(
    "sel",
    [Selector(), Selector(all=False), Selector(namespace="team-a", scoped=True)],
    ids=["nothing", "all-false", "own-tenant-only"],
)
def test_empty_selector_is_refused_unless_all(sel):
    assert sel.empty
    with pytest.raises(FailedPrecondition, match="empty selector"):
        sel.require_explicit("evict")
    Selector(namespace=sel.namespace, scoped=sel.scoped, all=True).require_explicit("evict")


@pytest.mark.parametrize(
    "sel",
    [
        Selector(namespace="ns"), Selector(model="m"), Selector(layout=FP),
        Selector(hashes=frozenset([b"a"])), Selector(hash_prefix=b"a"), Selector(tiers=frozenset(["ram"])),
        Selector(min_hits=1),
        Selector(idle_seconds=1), Selector(pinned=apb.PIN_PINNED), Selector(pinned=apb.PIN_UNPINNED),
        Selector(expires_before=1), Selector(namespace="team-a", model="m", scoped=True),
    ],
    ids=lambda s: s.describe(),
)
def test_any_filter_makes_a_selector_explicit(sel):
    assert not sel.empty
    sel.require_explicit("evict")


def test_prefix_narrows_the_scan_only_as_far_as_names_allow():
    assert Selector().prefix() == b""
    assert Selector(model="m").prefix() == b""  # a model alone is no key prefix
    assert Selector(namespace="ns").prefix() == b"ns\x1f"
    assert Selector(namespace="ns", layout=FP).prefix() == b"ns\x1f"  # a layout needs its model
    assert Selector(namespace="ns", model="m", layout=FP).prefix() == key("x").to_bytes()[:-1]


def test_describe_names_what_is_set():
    assert Selector().describe() == "(empty)"
    s = Selector(namespace="ns", hashes=frozenset([b"a", b"b"]), hash_prefix=b"\xab",
                 tiers=frozenset(["nvme", "ram"]), pinned=apb.PIN_UNPINNED, idle_seconds=60, all=True)
    assert s.describe() == ("namespace=ns idle_seconds=60 all=True hashes=2 hash_prefix=ab tiers=nvme,ram"
                            " unpinned")


# -- from_proto: validation and tenant scoping -------------------------------------------------


OPEN = Authenticator(None)
AUTH = Authenticator({"ta": Caller("team-a", False), "op": Caller("ops", True)})
TEAM_A, OPS = Caller("team-a", False), Caller("ops", True)


def test_from_proto_maps_every_field():
    msg = apb.Selector(namespace="ns", model="m", layout=FP, hashes=[b"a"], hash_prefix=b"h",
                       tiers=[pb.TIER_RAM, pb.TIER_S3], min_hits=2, idle_seconds=5, pinned=apb.PIN_PINNED,
                       expires_before=9, all=True)
    sel = from_proto(msg, OPEN, OPEN.authenticate(None))
    assert sel == Selector(namespace="ns", model="m", layout=FP, hashes=frozenset([b"a"]), hash_prefix=b"h",
                           tiers=frozenset(["ram", "s3"]), min_hits=2, idle_seconds=5, pinned=apb.PIN_PINNED,
                           expires_before=9, all=True)
    assert not sel.scoped


def test_non_admin_is_confined_to_its_tenant():
    sel = from_proto(apb.Selector(), AUTH, TEAM_A)
    assert (sel.namespace, sel.scoped, sel.empty) == ("team-a", True, True)
    with pytest.raises(FailedPrecondition):
        sel.require_explicit("evict")  # "my whole tenant" still needs all=true
    assert from_proto(apb.Selector(namespace="team-a"), AUTH, TEAM_A).namespace == "team-a"
    with pytest.raises(PermissionDenied):
        from_proto(apb.Selector(namespace="team-b"), AUTH, TEAM_A)


def test_admin_sees_everything_or_what_it_names():
    assert from_proto(apb.Selector(), AUTH, OPS).namespace == ""
    sel = from_proto(apb.Selector(namespace="team-b"), AUTH, OPS)
    assert (sel.namespace, sel.scoped, sel.empty) == ("team-b", False, False)


@pytest.mark.parametrize(
    "msg, match",
    [
        (apb.Selector(namespace="bad name!"), "namespace"),
        (apb.Selector(model="bad\x1fmodel"), "model"),
        (apb.Selector(layout="abc"), "layout"),
        (apb.Selector(tiers=[99]), "unknown tier"),
        (apb.Selector(idle_seconds=-1), "negative"),
        (apb.Selector(expires_before=-1), "negative"),
    ],
)
def test_from_proto_refuses_bad_input(msg, match):
    with pytest.raises(InvalidArgument, match=match):
        from_proto(msg, OPEN, OPEN.authenticate(None))

"""server/usage.py: the census of real tier indexes, read counters, token-hours on an injected clock,
money saved, persistence across a restart, and bounded Prometheus labels."""

from __future__ import annotations

import json

import pytest

from kvbucket.server.clock import Clock
from kvbucket.server.usage import OTHER, Counters, Stored, Usage, census
from kvbucket.tests.server.admin_world import CHUNK, T0, TOKENS, World


@pytest.fixture
async def world(tmp_path):
    async with World.open(tmp_path, ram_bytes=4 * CHUNK) as w:
        yield w


def frozen() -> Clock:
    return Clock(base=lambda: T0)


def samples(usage: Usage) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in usage.collect() for s in fam.samples}


# -- census ------------------------------------------------------------------------------------


async def test_census_counts_each_entry_once_and_bytes_per_tier(world):
    # RAM holds 4 chunks: put a..f in ns/m -> 4 in RAM + NVMe, 2 in NVMe only; put g in ns/m2 (2x tokens)
    await world.put(*"abcdef")
    await world.put("g", model="m2", tokens=2 * TOKENS)
    stored = await census(world.store)
    m, m2 = stored[("ns", "m")], stored[("ns", "m2")]
    assert (m.entries, m.tokens, m.raw_bytes) == (6, 6 * TOKENS, 6 * CHUNK)
    assert (m2.entries, m2.tokens) == (1, 2 * TOKENS)
    ram_bytes = world.ram.meta(next(k for k in (world.meta(n).key for n in "abcdef")
                                    if world.ram.meta(k))).stored_bytes
    nvme_bytes = world.nvme.meta(world.meta("a").key).stored_bytes  # record header + payload
    assert m.tier_entries["nvme"] == 6 and m.tier_bytes["nvme"] == 6 * nvme_bytes
    assert m.tier_entries["ram"] + m2.tier_entries["ram"] == 4
    assert m.tier_bytes["ram"] == m.tier_entries["ram"] * ram_bytes


async def test_census_of_an_empty_store(world):
    assert await census(world.store) == {}


# -- read counters -----------------------------------------------------------------------------


async def test_reads_through_the_store_count_hits_misses_and_tokens(world):
    # put a b; get a a b x -> 3 hits, 1 miss, 3 chunks of tokens served
    await world.put("a", "b")
    for n in ("a", "a", "b", "x"):
        await world.get(n)
    c = world.owner.usage.counters[("ns", "m")]
    assert (c.hits, c.misses, c.tokens_served) == (3, 1, 3 * TOKENS)


async def test_hits_below_ram_count_too(world):
    # a demoted to NVMe only; get a -> a hit served from NVMe (and promoted)
    await world.put(*"abcde")
    cold = next(n for n in "abcde" if world.held(n) == ["nvme"])
    assert await world.get(cold) is not None
    assert world.owner.usage.counters[("ns", "m")].hits == 1


def test_hit_rate_and_money_saved_arithmetic():
    # the README's example: a 32k-token prefix served 2,000 times a day at $0.15/M is ~$288/month
    u = Usage(None, frozen(), price_per_million=0.15)
    for _ in range(2000 * 30):
        u.read("ns", "m", 32_000)
    u.read("ns", "m", None)
    c = u.counters[("ns", "m")]
    assert c.tokens_served == 1_920_000_000
    assert u.saved(c) == pytest.approx(288.0)
    assert c.hits / (c.hits + c.misses) == pytest.approx(60_000 / 60_001)
    assert Usage(None, frozen()).saved(c) == 0.0  # no price configured: nothing claimed


# -- token-hours -------------------------------------------------------------------------------


def test_token_hours_integrate_what_was_stored_over_each_interval():
    # census 1000 tokens; t+2h census 3000; t+3h census 0; t+5h -> 1000*2 + 3000*1 = 5000 token-hours
    clock = frozen()
    u = Usage(None, clock)
    u.sample({("ns", "m"): Stored(tokens=1000)})
    clock.advance(2 * 3600)
    u.sample({("ns", "m"): Stored(tokens=3000)})
    assert u.counters[("ns", "m")].token_hours == pytest.approx(2000)
    clock.advance(3600)
    u.sample({})
    clock.advance(2 * 3600)
    u.sample({})
    assert u.counters[("ns", "m")].token_hours == pytest.approx(5000)


def test_first_census_integrates_nothing_and_new_pairs_get_rows():
    clock = frozen()
    u = Usage(None, clock)
    clock.advance(3600)
    u.sample({("ns", "m"): Stored(tokens=500)})
    assert u.counters[("ns", "m")] == Counters()


async def test_token_hours_through_the_owner(world):
    # put 4 chunks (64 tokens); census; t+30min census -> 32 token-hours
    await world.put(*"abcd")
    await world.owner.recount()
    world.clock.advance(1800)
    await world.owner.recount()
    assert world.owner.usage.counters[("ns", "m")].token_hours == pytest.approx(4 * TOKENS / 2)


# -- persistence -------------------------------------------------------------------------------


async def test_counters_survive_a_restart(tmp_path):
    # hits and token-hours saved at a census, reloaded by a new owner over the same data dir
    async with World.open(tmp_path) as w:
        await w.put("a", "b")
        await w.get("a")
        await w.get("zz")
        await w.owner.recount()
        w.clock.advance(3600)
        await w.owner.recount()  # saves usage.json
        since = w.owner.usage.since
    async with World.open(tmp_path) as w2:
        c = w2.owner.usage.counters[("ns", "m")]
        assert (c.hits, c.misses, c.tokens_served) == (1, 1, TOKENS)
        assert c.token_hours == pytest.approx(2 * TOKENS)
        assert w2.owner.usage.since == since
        await w2.get("b")
        assert w2.owner.usage.counters[("ns", "m")].hits == 2


def test_save_is_atomic_and_reload_keeps_every_field(tmp_path):
    path = tmp_path / "usage.json"
    u = Usage(path, frozen(), price_per_million=1.0)
    u.counters[("a", "x")] = Counters(hits=3, misses=1, tokens_served=48, token_hours=1.5)
    u.counters[("b", "y")] = Counters(misses=7)
    u.save()
    assert not path.with_suffix(".tmp").exists()
    again = Usage(path, frozen())
    assert again.counters == u.counters
    assert json.loads(path.read_text())["since"] == T0


@pytest.mark.parametrize("text", ["{oops", '{"rows": [{"namespace": "a"}]}', "[1, 2]", '"text"'])
def test_unreadable_counters_start_from_zero(tmp_path, text):
    path = tmp_path / "usage.json"
    path.write_text(text)
    u = Usage(path, frozen())
    assert u.counters == {} and u.since == T0


# -- Prometheus --------------------------------------------------------------------------------


def test_label_pairs_are_bounded_and_the_rest_summed_as_other():
    u = Usage(None, frozen(), price_per_million=1.0, max_label_pairs=2)
    for ns in ("a", "b", "c", "d"):
        u.read(ns, "m", 1_000_000)
    u.read("d", "m", None)
    u.sample({("a", "m"): Stored(entries=2, tier_bytes={"ram": 10}), ("c", "m"): Stored(entries=1),
              ("d", "m"): Stored(entries=3, tier_bytes={"ram": 5, "nvme": 7})})
    s = samples(u)
    lab = lambda ns, m, **kw: tuple(sorted({"namespace": ns, "model": m, **kw}.items()))  # noqa: E731
    assert u.label(("a", "m")) == ("a", "m") and u.label(("c", "m")) == OTHER
    assert s[("kvbucket_usage_hits_total", lab("a", "m"))] == 1
    assert s[("kvbucket_usage_hits_total", lab("other", "other"))] == 2  # c and d
    assert s[("kvbucket_usage_misses_total", lab("other", "other"))] == 1
    assert s[("kvbucket_usage_saved_total", lab("other", "other"))] == pytest.approx(2.0)
    assert s[("kvbucket_usage_entries", lab("other", "other"))] == 4
    assert s[("kvbucket_usage_bytes", lab("other", "other", tier="ram"))] == 5
    assert s[("kvbucket_usage_bytes", lab("a", "m", tier="ram"))] == 10
    assert {lab_ for name, lab_ in s if name == "kvbucket_usage_hits_total"} == {
        lab("a", "m"), lab("b", "m"), lab("other", "other")}

"""The conformance suite every tier passes (the invariants listed on `server.tiers.base.Tier`).

Subclass it in a test module and provide the `tier` fixture; the class name must start with `Test`:

    from kvbucket.tests.server.tier_conformance import TierConformance

    class TestNVMeTierConformance(TierConformance):
        @pytest.fixture
        async def tier(self, tmp_path):
            t = NVMeTier(tmp_path, capacity_bytes=64 << 20)
            yield t
            await t.close()

The tier must hold at least `min_capacity_bytes`. The module is importable as
`kvbucket.tests.server.tier_conformance` (the repository root is the `kvbucket` package), which works
under pytest's importlib import mode. Helpers `make_key` and `make_entry` are for subclasses too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import ClassVar

import numpy as np
import pytest

from kvbucket.core.codecs import Codec
from kvbucket.core.keys import EntryKey, Layout, scope_prefix
from kvbucket.core.record import Record, make_record
from kvbucket.server.tiers.base import SCAN_BATCH, EntryMeta, Tier

LAYOUT = Layout("float16", (2, 16, 4, 64), tokens_per_chunk=16)
FP = LAYOUT.fingerprint()
T0 = 1_700_000_000.0


def make_key(h: bytes | int, namespace: str = "ns", model: str = "m", layout: str = FP) -> EntryKey:
    """A key whose hash is `h` (an int becomes 8 big-endian bytes, so ints sort like bytes)."""
    if isinstance(h, int):
        h = h.to_bytes(8, "big")
    return EntryKey(namespace, model, layout, h)


def make_entry(
    key: EntryKey, nbytes: int = 4096, codec: Codec = Codec.NONE, seed: int = 0, now: float = T0
) -> tuple[Record, EntryMeta, bytes]:
    """A record of `nbytes` raw bytes, its meta and the raw bytes themselves.

    Uncompressed records carry random bytes; compressed ones carry float16 noise of small magnitude,
    which compresses the way KV tensors do (a skewed exponent byte).
    """
    rng = np.random.default_rng(seed)
    if codec is Codec.NONE:
        raw = rng.bytes(nbytes)
    else:
        raw = (rng.standard_normal(nbytes // 2) * 0.05).astype(np.float16).tobytes()
    shape = (nbytes // 2,)
    record = make_record(raw, "float16", shape, tokens=16, codec=codec)
    h = record.header
    meta = EntryMeta(
        key=key, tokens=h.tokens, raw_bytes=h.raw_length, stored_bytes=h.payload_length, codec=h.codec,
        created=now, last_access=now, dtype=h.dtype, shape=h.shape,
    )
    return record, meta, raw


def failing_record() -> Record:
    """A record whose payload cannot be read: any tier's `put` of it must raise."""
    record, _, _ = make_entry(make_key(0), 1024)
    view = memoryview(bytearray(record.payload))
    view.release()
    return Record(record.header, view)


def assert_same_record(got: Record | None, want: Record, raw: bytes) -> None:
    assert got is not None, "expected a record, got a miss"
    assert got.header == want.header
    assert bytes(got.payload) == bytes(want.payload)
    assert bytes(got.raw()) == raw


async def scan_list(tier: Tier, prefix: bytes = b"") -> list[EntryMeta]:
    return [m async for m in tier.scan(prefix)]


class TierConformance:
    """Tests every tier passes. Subclasses provide the `tier` fixture."""

    min_capacity_bytes: ClassVar[int] = 32 << 20
    large_record_bytes: ClassVar[int] = 8 << 20

    @pytest.fixture
    async def tier(self) -> AsyncIterator[Tier]:
        raise NotImplementedError("a TierConformance subclass must provide the `tier` fixture")
        yield  # pragma: no cover

    async def test_round_trip_random_bytes(self, tier: Tier) -> None:
        key = make_key(1)
        record, meta, raw = make_entry(key, 64 << 10, seed=1)
        await tier.put(key, record, meta)
        assert_same_record(await tier.get(key), record, raw)

    async def test_round_trip_zstd(self, tier: Tier) -> None:
        key = make_key(2)
        record, meta, raw = make_entry(key, 256 << 10, codec=Codec.ZSTD, seed=2)
        assert record.header.payload_length < record.header.raw_length  # really compressed
        await tier.put(key, record, meta)
        got = await tier.get(key)
        assert_same_record(got, record, raw)
        assert got.header.codec is Codec.ZSTD

    async def test_large_record_round_trip(self, tier: Tier) -> None:
        key = make_key(3)
        record, meta, raw = make_entry(key, self.large_record_bytes, seed=3)
        await tier.put(key, record, meta)
        assert_same_record(await tier.get(key), record, raw)

    async def test_get_missing_is_none(self, tier: Tier) -> None:
        assert await tier.get(make_key(404)) is None
        assert tier.meta(make_key(404)) is None

    async def test_contains_and_meta_from_index(self, tier: Tier) -> None:
        key, other = make_key(4), make_key(5)
        record, meta, _ = make_entry(key, 8192, codec=Codec.LZ4, seed=4)
        await tier.put(key, record, meta)
        assert tier.contains([key, other]) == [True, False]
        got = tier.meta(key)
        assert got is not None
        assert got.key == key
        assert (got.tokens, got.raw_bytes, got.codec) == (16, 8192, Codec.LZ4)
        assert got.stored_bytes >= record.header.payload_length
        assert (got.dtype, got.shape) == ("float16", (4096,))

    async def test_delete(self, tier: Tier) -> None:
        key = make_key(6)
        record, meta, _ = make_entry(key, seed=6)
        await tier.put(key, record, meta)
        assert await tier.delete(key) is True
        assert await tier.get(key) is None
        assert tier.meta(key) is None
        assert tier.contains([key]) == [False]
        assert await tier.delete(key) is False
        assert tier.stats().entries == 0

    async def test_overwrite_same_key(self, tier: Tier) -> None:
        key = make_key(7)
        first, meta1, _ = make_entry(key, 4096, seed=71)
        second, meta2, raw2 = make_entry(key, 2048, seed=72)
        await tier.put(key, first, meta1)
        await tier.put(key, second, meta2)
        assert_same_record(await tier.get(key), second, raw2)
        assert tier.meta(key).raw_bytes == 2048
        stats = tier.stats()
        assert stats.entries == 1
        assert stats.bytes == sum(m.stored_bytes for m in await scan_list(tier))

    async def test_scan_by_scope_prefix_in_key_order(self, tier: Tier) -> None:
        keys = [
            make_key(h, namespace=ns, model=model)
            for ns in ("beta", "alpha")
            for model in ("m2", "m1")
            for h in (b"\x09", b"\x01\x02", b"\xff", b"\x01")
        ]
        for i, key in enumerate(keys):
            record, meta, _ = make_entry(key, 512, seed=i)
            await tier.put(key, record, meta)

        everything = [m.key for m in await scan_list(tier)]
        assert everything == sorted(keys, key=EntryKey.to_bytes)

        alpha = [m.key for m in await scan_list(tier, scope_prefix("alpha"))]
        assert alpha == sorted((k for k in keys if k.namespace == "alpha"), key=EntryKey.to_bytes)

        beta_m1 = [m.key for m in await scan_list(tier, scope_prefix("beta", "m1", FP))]
        assert beta_m1 == sorted((k for k in keys if k.namespace == "beta" and k.model == "m1"),
                                 key=EntryKey.to_bytes)
        assert len(beta_m1) == 4
        assert await scan_list(tier, scope_prefix("gamma")) == []

    async def test_scan_after_a_key_resumes_in_order_across_batches(self, tier: Tier) -> None:
        n = SCAN_BATCH + 44  # more than one batch read from the ordered index
        keys = [make_key(i, namespace=ns) for ns in ("b", "a") for i in range(n // 2)]
        for i, key in enumerate(keys):
            record, meta, _ = make_entry(key, 64, seed=i)
            await tier.put(key, record, meta)
        everything = [m.key for m in await scan_list(tier)]
        assert everything == sorted(keys, key=EntryKey.to_bytes)
        mid = everything[100].to_bytes()
        assert [m.key async for m in tier.scan(after=mid)] == everything[101:]
        assert [m.key async for m in tier.scan(after=everything[-1].to_bytes())] == []
        b = scope_prefix("b")
        in_b = [k for k in everything if k.namespace == "b"]
        assert [m.key async for m in tier.scan(b, after=mid)] == in_b  # `after` sorts before the prefix
        assert [m.key async for m in tier.scan(b, after=in_b[9].to_bytes())] == in_b[10:]
        seen = []
        async for m in tier.scan():  # entries deleted while the scan awaits, across a batch boundary
            seen.append(m.key)
            if len(seen) == SCAN_BATCH - 1:
                for k in everything[SCAN_BATCH - 1 : SCAN_BATCH + 3]:
                    await tier.delete(k)
        gone = set(everything[SCAN_BATCH - 1 : SCAN_BATCH + 3])
        assert seen == [k for k in everything if k not in gone]

    async def test_concurrent_puts_of_one_key_leave_one_whole_record(self, tier: Tier) -> None:
        key = make_key(8)
        entries = [make_entry(key, 32 << 10, seed=80 + i) for i in range(8)]
        await asyncio.gather(*(tier.put(key, record, meta) for record, meta, _ in entries))
        got = await tier.get(key)
        assert got is not None
        matches = [raw for record, _, raw in entries if bytes(got.payload) == bytes(record.payload)]
        assert len(matches) == 1
        assert bytes(got.raw()) == matches[0]
        stats = tier.stats()
        assert stats.entries == 1
        assert len(await scan_list(tier)) == 1

    async def test_failed_put_leaves_no_entry(self, tier: Tier) -> None:
        kept, fresh = make_key(9), make_key(10)
        record, meta, raw = make_entry(kept, seed=9)
        await tier.put(kept, record, meta)
        before = tier.stats()

        bad = failing_record()
        bad_meta = make_entry(fresh)[1]
        with pytest.raises(Exception):  # noqa: B017 (any error will do; the point is what is left behind)
            await tier.put(fresh, bad, bad_meta)
        with pytest.raises(Exception):  # noqa: B017
            await tier.put(kept, bad, bad_meta.copy(key=kept))

        assert tier.meta(fresh) is None
        assert await tier.get(fresh) is None
        assert_same_record(await tier.get(kept), record, raw)
        after = tier.stats()
        assert (after.entries, after.bytes) == (before.entries, before.bytes)

    async def test_stats_entries_and_bytes_consistent(self, tier: Tier) -> None:
        sizes = [1000, 2000, 4096, 10_000, 123]
        keys = [make_key(100 + i) for i in range(len(sizes))]
        for i, (key, size) in enumerate(zip(keys, sizes)):
            record, meta, _ = make_entry(key, size, seed=i)
            await tier.put(key, record, meta)
        stats = tier.stats()
        metas = await scan_list(tier)
        assert stats.entries == len(metas) == len(sizes)
        assert stats.bytes == sum(m.stored_bytes for m in metas)
        assert stats.bytes >= sum(sizes)

        await tier.delete(keys[0])
        await tier.delete(keys[3])
        stats = tier.stats()
        metas = await scan_list(tier)
        assert stats.entries == len(metas) == 3
        assert stats.bytes == sum(m.stored_bytes for m in metas)

    async def test_reading_yields_the_record(self, tier: Tier) -> None:
        key = make_key(11)
        record, meta, raw = make_entry(key, seed=11)
        await tier.put(key, record, meta)
        async with tier.reading(key) as held:
            assert_same_record(held, record, raw)
        async with tier.reading(make_key(12)) as missing:
            assert missing is None

    async def test_set_meta_pin_and_expiry(self, tier: Tier) -> None:
        key = make_key(13)
        record, meta, _ = make_entry(key, seed=13)
        await tier.put(key, record, meta)
        updated = tier.set_meta(key, pinned=True, expires_at=T0 + 60)
        if updated is None:
            pytest.skip(f"{type(tier).__name__} keeps no pin or expiry in its index")
        assert (updated.pinned, updated.expires_at) == (True, T0 + 60)
        assert (tier.meta(key).pinned, tier.meta(key).expires_at) == (True, T0 + 60)
        assert tier.set_meta(make_key(14), pinned=True) is None


"""S3Tier against a real moto_server process: conformance, sharing, corruption, outages."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiobotocore.session import get_session

from kvbucket.core.codecs import Codec
from kvbucket.core.errors import DataLoss, Unavailable
from kvbucket.core.keys import scope_prefix
from kvbucket.server.tiers.s3 import S3Tier
from kvbucket.tests.server.tier_conformance import TierConformance, make_entry, make_key

CREDS = {"access_key": "test", "secret_key": "test"}


def s3tier(endpoint: str, bucket: str, **kw) -> S3Tier:
    kw.setdefault("manifest_refresh_s", 0)  # tests refresh explicitly instead of waiting
    return S3Tier(bucket, endpoint_url=endpoint, create_bucket=True, **CREDS, **kw)


class TestS3TierConformance(TierConformance):
    """codec=None: the suite checks that records come back byte for byte, headers included."""

    large_record_bytes = 4 << 20

    @pytest.fixture
    async def tier(self, s3_server, s3_bucket):
        t = await s3tier(s3_server, s3_bucket, codec=None).open()
        yield t
        await t.close()


@pytest.fixture
async def tier(s3_server, s3_bucket):
    t = await s3tier(s3_server, s3_bucket).open()
    yield t
    await t.close()


async def raw_client(endpoint: str):
    return get_session().create_client("s3", region_name="us-east-1", endpoint_url=endpoint,
                                       aws_access_key_id="test", aws_secret_access_key="test")


async def test_cold_records_are_recoded_to_zstd(tier):
    key = make_key(1)
    record, meta, raw = make_entry(key, 64 << 10, codec=Codec.LZ4)
    await tier.put(key, record, meta)
    got = await tier.get(key)
    assert got.header.codec is Codec.ZSTD and bytes(got.raw()) == raw
    assert tier.meta(key).codec is Codec.ZSTD and tier.meta(key).raw_bytes == 64 << 10


async def test_object_names_quote_namespace_and_model(tier, s3_server):
    key = make_key(b"\xab\x01", namespace="team/a", model="org/llama-3")
    await tier.put(key, *make_entry(key, 2048)[:2])
    name = tier.object_name(key)
    assert name == f"kvbucket/team%2Fa/org%2Fllama-3/{key.layout}/ab01"
    async with await raw_client(s3_server) as c:
        head = await c.head_object(Bucket=tier.bucket, Key=name)
    assert head["Metadata"]["tokens"] == "16" and head["Metadata"]["raw-bytes"] == "2048"


async def test_second_daemon_sees_first_daemons_chunk_after_refresh(s3_server, s3_bucket):
    a = await s3tier(s3_server, s3_bucket).open()
    b = await s3tier(s3_server, s3_bucket).open()
    try:
        key = make_key(7, namespace="shared", model="org/m")
        record, meta, raw = make_entry(key, 8192, seed=7)
        await a.put(key, record, meta)
        assert b.contains([key]) == [False]
        assert await b.refresh()
        assert b.contains([key]) == [True]
        m = b.meta(key)  # details from the object's user metadata (HEAD), not its body
        assert (m.tokens, m.raw_bytes, m.dtype, m.shape) == (16, 8192, "float16", (4096,))
        assert bytes((await b.get(key)).raw()) == raw
        await a.delete(key)
        assert await b.refresh() and b.contains([key]) == [False]
    finally:
        await a.close()
        await b.close()


async def test_bytes_held_follow_listings_heads_and_writes(s3_server, s3_bucket):
    # stats().bytes is a running total (a metrics scrape must not sum a manifest of millions): it
    # must match the manifest after a listing brings another daemon's objects, their HEADs, and writes.
    a = await s3tier(s3_server, s3_bucket).open()
    b = await s3tier(s3_server, s3_bucket).open()

    async def held(t) -> int:
        return sum([m.stored_bytes async for m in t.scan()])

    try:
        for i, n in enumerate((1024, 4096, 8192)):
            key = make_key(30 + i)
            await a.put(key, *make_entry(key, n, seed=i)[:2])
        own = make_key(40)
        await b.put(own, *make_entry(own, 2048)[:2])
        assert b.stats().bytes == await held(b)
        assert await b.refresh()
        assert b.stats().entries == 4 and b.stats().bytes == await held(b)
        await b.delete(make_key(31))
        await b.put(own, *make_entry(own, 512, seed=9)[:2])  # replaced by a smaller one
        assert b.stats().entries == 3 and b.stats().bytes == await held(b)
    finally:
        await a.close()
        await b.close()


async def test_a_listing_updates_the_sorted_index_by_its_differences(s3_server, s3_bucket):
    # A refresh must leave scan() listing exactly what the bucket holds, in key order: other daemons'
    # writes and deletes found by the listing, and this daemon's own put made while it ran. A few
    # changes among many entries update the index in place (rebuilding it stopped the event loop for
    # seconds at a million entries); most entries changing rebuild it, with the same result.
    a = await s3tier(s3_server, s3_bucket).open()
    b = await s3tier(s3_server, s3_bucket, list_page_size=2).open()  # pages: the listing yields between them

    async def scanned(t) -> list[bytes]:
        # scan() skips index keys without an entry: the index itself must hold no stale ones either
        assert list(t._order) == sorted(t._by_bytes) == sorted(k.to_bytes() for k in t._manifest)
        return [m.key.to_bytes() async for m in t.scan()]

    try:
        keys = [make_key(100 + i) for i in range(16)]
        for k in keys:
            await a.put(k, *make_entry(k, 512)[:2])
        assert await b.refresh()  # all new: the index is built
        assert await scanned(b) == sorted(k.to_bytes() for k in keys)
        index = b._order
        await a.delete(keys[3])
        await a.delete(keys[9])
        late = make_key(200)
        await a.put(late, *make_entry(late, 512)[:2])
        own = make_key(201)
        ok, _ = await asyncio.gather(b.refresh(), b.put(own, *make_entry(own, 512)[:2]))
        assert ok
        want = sorted(k.to_bytes() for k in [*keys[:3], *keys[4:9], *keys[10:], late, own])
        assert await scanned(b) == want and b.stats().entries == len(want)
        assert b._order is index  # three changes among seventeen: updated in place, not rebuilt
        for k in keys[:12]:
            await a.delete(k)
        assert await b.refresh()
        want = sorted(k.to_bytes() for k in [*keys[12:], late, own])
        assert await scanned(b) == want and b.stats().entries == len(want)
        assert b.contains([keys[0], own]) == [False, True]
    finally:
        await a.close()
        await b.close()


async def test_background_refresh_picks_up_other_writers(s3_server, s3_bucket):
    a = await s3tier(s3_server, s3_bucket).open()
    b = await s3tier(s3_server, s3_bucket, manifest_refresh_s=0.1).open()
    try:
        key = make_key(8)
        await a.put(key, *make_entry(key, 1024)[:2])
        refreshes = b.stats().extra["refreshes"]
        deadline = time.monotonic() + 20
        while b.stats().extra["refreshes"] < refreshes + 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the background task runs on its own timer: nothing to await
        assert b.contains([key]) == [True]
    finally:
        await a.close()
        await b.close()


async def test_corrupt_payload_is_never_a_good_record(tier, s3_server):
    key = make_key(2)
    record, meta, _ = make_entry(key, 16 << 10, seed=2)
    await tier.put(key, record, meta)
    name = tier.object_name(key)
    async with await raw_client(s3_server) as c:
        body = bytearray(await (await c.get_object(Bucket=tier.bucket, Key=name))["Body"].read())
        body[-10] ^= 0x55
        await c.put_object(Bucket=tier.bucket, Key=name, Body=bytes(body))
    got = await tier.get(key)
    assert got is None or _fails_checksum(got)


def _fails_checksum(record) -> bool:
    try:
        record.raw()
    except DataLoss:
        return True
    return False


async def test_garbage_object_is_deleted_and_counted(tier, s3_server):
    key = make_key(3)
    await tier.put(key, *make_entry(key, 4096)[:2])
    async with await raw_client(s3_server) as c:
        await c.put_object(Bucket=tier.bucket, Key=tier.object_name(key), Body=b"garbage, not a record")
        assert await tier.get(key) is None
        assert tier.stats().extra["corrupt"] == 1
        assert tier.meta(key) is None
        listed = await c.list_objects_v2(Bucket=tier.bucket, Prefix=tier.object_name(key))
        assert listed.get("KeyCount", 0) == 0


async def test_foreign_objects_under_the_prefix_are_ignored(tier, s3_server):
    async with await raw_client(s3_server) as c:
        await c.put_object(Bucket=tier.bucket, Key="kvbucket/README.txt", Body=b"hello")
        await c.put_object(Bucket=tier.bucket, Key="kvbucket/a/b/c/not-hex", Body=b"hello")
    assert await tier.refresh()
    assert tier.stats().entries == 0


async def test_listing_paginates(s3_server, s3_bucket):
    t = await s3tier(s3_server, s3_bucket, list_page_size=7).open()
    try:
        keys = [make_key(i) for i in range(40)]
        record, _, raw = make_entry(keys[0], 256)
        async with await raw_client(s3_server) as c:  # written by "another daemon"
            for k in keys:
                await c.put_object(Bucket=s3_bucket, Key=t.object_name(k), Body=record.to_bytes())
        assert await t.refresh()
        assert t.contains(keys) == [True] * len(keys)
        assert bytes((await t.get(keys[-1])).raw()) == raw
    finally:
        await t.close()


async def test_delete_prefix_uses_bulk_deletes(tier):
    for i in range(30):
        key = make_key(i, namespace="gone" if i % 2 else "kept")
        await tier.put(key, *make_entry(key, 256, seed=i)[:2])
    assert await tier.delete_prefix(scope_prefix("gone")) == 15
    assert await tier.refresh()
    assert {m.key.namespace async for m in tier.scan()} == {"kept"}
    assert tier.stats().entries == 15


async def test_outage_get_misses_put_unavailable_then_recovers(s3_process, s3_bucket):
    t = await s3tier(s3_process.endpoint, s3_bucket).open()
    try:
        key = make_key(5)
        record, meta, raw = make_entry(key, 4096, seed=5)
        await t.put(key, record, meta)
        s3_process.stop()
        try:
            assert await t.get(key) is None  # connection refused: a miss, not an error
            with pytest.raises(Unavailable, match="cannot write"):
                await t.put(make_key(6), *make_entry(make_key(6), 1024)[:2])
            assert await t.refresh() is False  # the manifest is kept while S3 is away
            assert t.contains([key]) == [True]
            assert t.stats().extra["errors"] >= 2 and t.stats().extra["refresh_errors"] == 1
        finally:
            s3_process.start()  # moto keeps state in memory: the restarted server is empty
        async with await raw_client(s3_process.endpoint) as c:
            await c.create_bucket(Bucket=s3_bucket)
        await t.put(key, record, meta)
        assert bytes((await t.get(key)).raw()) == raw
        assert await t.refresh()
    finally:
        await t.close()


async def test_dead_endpoint_at_open_is_logged_not_raised():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = S3Tier("nobucket", endpoint_url=f"http://127.0.0.1:{port}", timeout_s=1.0, manifest_refresh_s=0, **CREDS)
    await t.open()
    try:
        assert t.stats().extra["refresh_errors"] == 1
        assert await t.get(make_key(1)) is None
        with pytest.raises(Unavailable):
            await t.put(make_key(1), *make_entry(make_key(1), 256)[:2])
    finally:
        await t.close()


async def test_put_before_open_is_unavailable():
    t = S3Tier("bucket")
    with pytest.raises(Unavailable, match="not open"):
        await t.put(make_key(1), *make_entry(make_key(1), 256)[:2])
    assert await t.get(make_key(1)) is None

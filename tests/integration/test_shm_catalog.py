"""Gets through the shared-memory catalog (core/catalog.py) against real daemons: no call to the daemon,
yet counted, ordered, expired, deleted and verified exactly as a ShmGet would be."""

from __future__ import annotations

import mmap
import os
import time

import grpc
import numpy as np
import pytest
from shm_helpers import CHUNK, CLOCK, LAYOUT, chunk, metric, request_mix, requests, unix_target, unix_url

from kvbucket import Client, Layout
from kvbucket.clients.sdk import AsyncClient
from kvbucket.core import catalog
from kvbucket.core.errors import DataLoss, PermissionDenied
from kvbucket.core.keys import EntryKey
from kvbucket.proto import store_pb2 as pb
from kvbucket.proto import store_pb2_grpc

from daemon import start_daemon

COUNTED = 'kvbucket_shm_catalog_reads_total{outcome="counted"}'


@pytest.fixture
def lru_daemon(tmp_path):
    """Room in RAM for three chunks, an arena for more: the fourth put evicts the least recently used."""
    d = start_daemon(tmp_path / "d", "--unix-socket", str(tmp_path / "kv.sock"), "--shm-size", "32MiB",
                     "--ram-capacity", str(3 * CHUNK), "--ram-policy", "lru", env=CLOCK)
    yield d
    d.stop()


class Mapped:
    """This process's own mapping of the daemon's arena and catalog, to look at (and damage) slots."""

    def __init__(self, d, token: str = "") -> None:
        md = (("authorization", f"Bearer {token}"),) if token else ()
        with grpc.insecure_channel(unix_target(d)) as ch:
            self.attach = store_pb2_grpc.KVBucketShmStub(ch).ShmAttach(pb.ShmAttachRequest(), metadata=md)
        fd = os.open(self.attach.path, os.O_RDWR)
        self.mm = mmap.mmap(fd, self.attach.size)
        os.close(fd)
        self.reader = catalog.Reader(memoryview(self.mm), self.attach.catalog_offset, self.attach.catalog_buckets)

    def find(self, h: bytes, namespace: str = "default") -> catalog.Found | None:
        kb = EntryKey(namespace, "m", LAYOUT.fingerprint(), h).to_bytes()
        return self.reader.find(kb, self.reader.now())


def test_catalog_reads_are_counted_as_hits_and_keep_recency(lru_daemon):
    d = lru_daemon
    with Client(unix_url(d), model="m", layout=LAYOUT) as c:
        for h in (b"a", b"b", b"c"):
            assert c.put(h, chunk(h[0]))
        assert bytes(c.get(b"a")) == chunk(ord("a"))  # from the catalog: "a" is now the most recent
        assert c.put(b"d", chunk(ord("d")))  # evicts "b", the least recently used
        assert c.get(b"b") is None  # not listed any more: asked the daemon (ShmGet), a miss
        assert bytes(c.get(b"a")) == chunk(ord("a"))
        assert requests(d, "shm_get") == 1, request_mix(d)
        assert metric(d, COUNTED) == 2  # "a" twice
        assert metric(d, "kvbucket_store_misses_total") == 1
        ram = next(t for t in c.stats().tiers if t.tier == pb.TIER_RAM)
        assert ram.hits == 2
        assert metric(d, 'kvbucket_store_hits_total{tier="ram"}') == 2
        assert metric(d, "kvbucket_store_tokens_served_total") == 2 * LAYOUT.tokens_per_chunk
        assert metric(d, 'kvbucket_server_bytes_total{direction="out"}') == 2 * CHUNK
        usage = c.usage()
        assert sum(r.hits for r in usage.rows) == 2 and sum(r.tokens_served for r in usage.rows) == 512


def test_a_prefix_partly_listed_reads_the_rest_by_one_shm_get(lru_daemon):
    d = lru_daemon
    with Client(unix_url(d), model="m", layout=LAYOUT) as c, \
            Client(d.url, model="m", layout=LAYOUT, shm=False, codec="lz4") as tcp:
        assert c.put(b"p0", chunk(0)) and c.put(b"p1", chunk(1))
        assert tcp.put(b"p2", chunk(2))  # decompressed into heap memory: not in the arena, not listed
        out = [bytearray(CHUNK) for _ in range(4)]
        got = c.get_many([b"p0", b"p1", b"p2", b"p3"], out=out, stop_at_first_miss=True)
        assert [bytes(g) if g is not None else None for g in got] == [chunk(0), chunk(1), chunk(2), None]
        assert got[0].obj is out[0] and got[2].obj is out[2]  # into the caller's buffers, both ways
        assert metric(d, COUNTED) == 2 and requests(d, "shm_get") == 1, request_mix(d)


def test_deleted_and_overwritten_entries_are_never_read_from_the_catalog(lru_daemon):
    d = lru_daemon
    m = Mapped(d)
    with Client(unix_url(d), model="m", layout=LAYOUT) as c:
        assert c.put(b"x", chunk(1)) and bytes(c.get(b"x")) == chunk(1)
        first = m.find(b"x")
        assert c.put(b"x", chunk(2))  # overwritten: a new slot, the entry re-listed
        assert not m.reader.unchanged(first)
        assert bytes(c.get(b"x")) == chunk(2)
        assert c.delete([b"x"]) == 1
        assert m.find(b"x") is None
        assert c.get(b"x") is None
        assert metric(d, COUNTED) == 2 and requests(d, "shm_get") == 1, request_mix(d)


def test_a_corrupted_slot_is_never_served(lru_daemon):
    d = lru_daemon
    m = Mapped(d)
    with Client(unix_url(d), model="m", layout=LAYOUT) as c:
        assert c.put(b"bad", chunk(5))
        f = m.find(b"bad")
        m.mm[f.offset + CHUNK // 2] ^= 0xFF  # a stray write into the slot
        with pytest.raises(DataLoss):
            c.get(b"bad")  # the catalog read fails its checksum; the daemon's copy is the same bytes
        assert metric(d, COUNTED) == 0


def test_expiry_and_sliding_ttls_hold_for_catalog_reads(lru_daemon):
    d = lru_daemon
    with Client(unix_url(d), model="m", layout=LAYOUT) as c:
        assert c.put_many([(b"ttl", chunk(1))], ttl_seconds=100)
        assert c.put_many([(b"slide", chunk(2))], ttl_seconds=100, ttl_sliding=True)
        assert c.get(b"ttl") is not None and c.get(b"slide") is not None  # both from the catalog
        c.advance_clock(60)
        assert bytes(c.get(b"slide")) == chunk(2)  # a hit at +60 slides its expiry to +160
        c.exists([b"slide"])  # a call on the same connection: the one-way ShmHits is handled by now
        c.advance_clock(50)  # +110: "ttl" has expired, "slide" has not
        assert c.get(b"ttl") is None
        assert bytes(c.get(b"slide")) == chunk(2)
        assert metric(d, COUNTED) == 4


def test_other_namespaces_are_refused_as_by_shm_get(tmp_path):
    tokens = tmp_path / "tokens.toml"
    tokens.write_text('[[tokens]]\ntoken = "ta"\ntenant = "team-a"\n\n'
                      '[[tokens]]\ntoken = "tb"\ntenant = "team-b"\n')
    d = start_daemon(tmp_path / "d", "--unix-socket", str(tmp_path / "kv.sock"), "--shm-size", "32MiB",
                     "--tokens-file", str(tokens))
    try:
        with Client(unix_url(d), model="m", layout=LAYOUT, token="ta") as a, \
                Client(unix_url(d), model="m", layout=LAYOUT, token="tb") as b:
            assert a.put(b"secret", chunk(3))
            assert Mapped(d, "ta").find(b"secret", "team-a") is not None  # listed, under team-a's namespace
            assert bytes(a.get(b"secret")) == chunk(3)
            assert b.get(b"secret") is None  # team-b's own namespace has no such entry
            with pytest.raises(PermissionDenied):
                b.scoped(namespace="team-a").get(b"secret")
            assert metric(d, COUNTED) == 1
    finally:
        d.stop()


def test_a_daemon_that_stops_closes_its_catalog(tmp_path):
    sock = tmp_path / "kv.sock"
    d = start_daemon(tmp_path / "d", "--unix-socket", str(sock), "--shm-size", "16MiB")
    m = Mapped(d)
    with Client(unix_url(d), model="m", layout=LAYOUT) as c:
        assert c.put(b"a", chunk(1)) and c.get(b"a") is not None
    assert m.reader.now() is not None
    d.stop()
    assert m.reader.now() is None  # readers still mapping the old arena ask the daemon instead
    assert np.frombuffer(m.mm, dtype=np.uint8, count=8)[0] != 0  # the mapping itself stays valid


def test_many_threads_read_through_the_catalog_while_entries_churn(lru_daemon):
    """Readers racing evictions and overwrites get the right bytes or a miss, never other bytes."""
    import threading

    d = lru_daemon
    stop = time.monotonic() + 3.0
    bad: list[str] = []
    with Client(unix_url(d), model="m", layout=LAYOUT) as c:
        def writer() -> None:
            i = 0
            while time.monotonic() < stop:
                c.put(b"k%d" % (i % 5), chunk(i % 5))
                i += 1

        def reader() -> None:
            while time.monotonic() < stop:
                for j in range(5):
                    got = c.get(b"k%d" % j)
                    if got is not None and bytes(got) != chunk(j):
                        bad.append(f"k{j}")

        threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not bad
    assert metric(d, COUNTED) > 0


def test_entries_promoted_from_nvme_after_a_restart_are_read_from_the_catalog(tmp_path):
    args = ("--nvme", "--unix-socket", str(tmp_path / "kv.sock"), "--shm-size", "32MiB")
    d = start_daemon(tmp_path / "d", *args)
    try:
        with Client(unix_url(d), model="m", layout=LAYOUT) as c:
            assert c.put_many([(b"p0", chunk(0)), (b"p1", chunk(1))]) == [True, True]
        d.stop()  # write-behind copies reach RocksDB on the way down
        d = start_daemon(tmp_path / "d", *args)
        with Client(unix_url(d), model="m", layout=LAYOUT) as c:
            got = c.get_many([b"p0", b"p1"])  # not in RAM: ShmGet reads them from NVMe and promotes them
            assert [bytes(g) for g in got] == [chunk(0), chunk(1)]
            assert requests(d, "shm_get") == 1 and metric(d, COUNTED) == 0, request_mix(d)
            assert metric(d, 'kvbucket_store_promotions_total{tier="ram"}') == 2
            # Decoded straight into arena slots: no copy-in for the read, and listed for the next one.
            assert metric(d, "kvbucket_shm_copied_in_total") == 0
            assert metric(d, "kvbucket_shm_catalog_entries") == 2
            assert [bytes(g) for g in c.get_many([b"p0", b"p1"])] == [chunk(0), chunk(1)]
            assert requests(d, "shm_get") == 1 and metric(d, COUNTED) == 2, request_mix(d)
    finally:
        d.stop()


def test_without_the_fast_wire_catalog_reads_are_told_by_shm_hits_calls(lru_daemon):
    d = lru_daemon
    with Client(unix_url(d), model="m", layout=LAYOUT, fast=False) as c:
        assert c.put(b"a", chunk(1))
        for _ in range(3):
            assert bytes(c.get(b"a")) == chunk(1)
        assert requests(d, "shm_get") == 0, request_mix(d)
    # close() waited for the calls still out
    assert requests(d, "shm_hits") == 3 and metric(d, COUNTED) == 3, request_mix(d)


async def test_async_client_reads_the_catalog_too(lru_daemon):
    d = lru_daemon
    async with AsyncClient(unix_url(d), model="m", layout=LAYOUT) as c:
        assert await c.put_many([(b"a", chunk(1)), (b"b", chunk(2))]) == [True, True]
        got = await c.get_many([b"a", b"b", b"nope"])
        assert bytes(got[0]) == chunk(1) and bytes(got[1]) == chunk(2) and got[2] is None
        assert requests(d, "shm_get") == 1, request_mix(d)  # only for the one not listed
    assert requests(d, "shm_hits") == 1 and metric(d, COUNTED) == 2, request_mix(d)


def test_a_read_of_more_hashes_than_one_call_may_name_is_told_in_parts(tmp_path):
    small = Layout("uint8", (4096,), tokens_per_chunk=16)
    n = 4096 + 3
    d = start_daemon(tmp_path / "d", "--unix-socket", str(tmp_path / "kv.sock"), "--shm-size", "512MiB")
    try:
        with Client(unix_url(d), model="m", layout=small) as c:
            keys = [b"s%d" % i for i in range(n)]
            for i in range(0, n, 4096):
                c.put_many([(k, bytes([j % 251]) * 4096) for j, k in enumerate(keys[i : i + 4096], i)])
            assert metric(d, "kvbucket_shm_catalog_entries") == n
            got = c.get_many(keys)
            assert all(bytes(g) == bytes([j % 251]) * 4096 for j, g in enumerate(got))
            c.exists([b"s0"])  # a call on the same connection: the one-way messages are handled by now
        assert requests(d, "shm_get") == 0, request_mix(d)
        assert metric(d, COUNTED) == n
        assert metric(d, 'kvbucket_shm_catalog_reads_total{outcome="refused"}') == 0
    finally:
        d.stop()

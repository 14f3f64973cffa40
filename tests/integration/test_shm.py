"""The same-host shared-memory data plane against real daemons (subprocesses): SDK and raw RPCs."""

from __future__ import annotations

import asyncio
import json
import logging
import mmap
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from admin_helpers import cli
from shm_helpers import CHUNK, CLOCK, LAYOUT, chunk, metric, request_mix, requests, unix_target, unix_url

from kvbucket import Client, Layout
from kvbucket.clients import fastwire, shm
from kvbucket.clients.sdk import AsyncClient
from kvbucket.core.errors import DataLoss, FailedPrecondition, InvalidArgument, ResourceExhausted
from kvbucket.core.record import checksum
from kvbucket.proto import store_pb2 as pb
from kvbucket.proto import store_pb2_grpc

from daemon import start_daemon

LEASE = 5.0  # seconds of the daemon's (advanceable) clock


@pytest.fixture
def shm_daemon(tmp_path):
    sock = tmp_path / "kv.sock"
    d = start_daemon(tmp_path / "d", "--unix-socket", str(sock), "--shm-size", "32MiB",
                     "--shm-lease-seconds", str(LEASE), "--ram-capacity", "64MiB", "--ram-policy", "lru",
                     env=CLOCK)
    yield d
    d.stop()


class Raw:
    """Raw KVBucketShm RPCs and this process's own mapping of the arena."""

    def __init__(self, d) -> None:
        self.channel = grpc.insecure_channel(unix_target(d))
        self.stub = store_pb2_grpc.KVBucketShmStub(self.channel)
        self.attach = self.stub.ShmAttach(pb.ShmAttachRequest())
        fd = os.open(self.attach.path, os.O_RDWR)
        self.mm = mmap.mmap(fd, self.attach.size)
        os.close(fd)
        self.scope = pb.Scope(model="m", layout=pb.Layout(dtype=LAYOUT.dtype, shape=LAYOUT.shape,
                                                          tokens_per_chunk=LAYOUT.tokens_per_chunk))

    def header(self, h: bytes, **kw) -> pb.ChunkHeader:
        return pb.ChunkHeader(scope=self.scope, hash=h, raw_length=CHUNK, payload_length=CHUNK,
                              dtype=LAYOUT.dtype, shape=LAYOUT.shape, **kw)

    def stats(self) -> pb.ShmStats:
        return self.stub.ShmAttach(pb.ShmAttachRequest()).stats  # every shm call sweeps expired leases

    def reserve(self, h: bytes) -> pb.ShmReserveResponse:
        return self.stub.ShmReserve(pb.ShmReserveRequest(chunks=[self.header(h)]))

    def close(self) -> None:
        self.mm.close()
        self.channel.close()


@pytest.fixture
def raw(shm_daemon):
    r = Raw(shm_daemon)
    yield r
    r.close()


def test_round_trip_is_bit_exact_and_moves_no_bytes_over_grpc(shm_daemon):
    data = [chunk(i) for i in range(4)]
    with Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        assert c.put_many([(b"k%d" % i, d) for i, d in enumerate(data)]) == [True] * 4
        assert c.put(b"np", np.frombuffer(data[0], dtype=np.uint8))
        got = c.get_many([b"k0", b"missing", b"k3"])
        assert bytes(got[0]) == data[0] and got[1] is None and bytes(got[2]) == data[3]
        out = bytearray(CHUNK)
        assert c.get_into(b"k2", out) and out == data[2]
        assert bytes(c.get(b"np")) == data[0]
        assert c.shm_region() is not None
    assert metric(shm_daemon, "kvbucket_shm_slots") == 5  # five entries live in the arena
    assert metric(shm_daemon, 'kvbucket_server_requests_total{op="put"') == 0
    assert metric(shm_daemon, 'kvbucket_server_requests_total{op="get"') == 0
    assert metric(shm_daemon, "kvbucket_shm_leases") == 0


def test_puts_and_gets_copy_with_numpy_where_the_c_copy_is_not_built(shm_daemon, monkeypatch, caplog):
    monkeypatch.setattr(shm, "stream_copy", None)  # clients/_streamcopy.c is optional at install
    monkeypatch.setattr(shm, "copy_xxh3", None)
    shm._say_how_copies_run.cache_clear()  # said once per process: this one may have said it already
    data = [chunk(i) for i in range(5)]
    with caplog.at_level(logging.WARNING, logger="kvbucket.clients.shm"), \
            Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        assert c.put(b"k0", data[0])
        assert c.put_many([(b"k1", data[1]), (b"k2", data[2])]) == [True, True]
        assert c.put_many((h, d) for h, d in [(b"k3", data[3]), (b"k4", data[4])]) == [True, True]
        assert [bytes(g) for g in c.get_many([b"k%d" % i for i in range(5)])] == data
    assert metric(shm_daemon, 'kvbucket_server_requests_total{op="put"') == 0
    assert [r.message for r in caplog.records if "_streamcopy.c is not built" in r.message] != []
    assert shm.put_copy() == "numpy (clients/_streamcopy.c not built)"
    shm._say_how_copies_run.cache_clear()


def test_entry_put_over_grpc_lands_in_the_arena_and_is_served_without_a_copy(shm_daemon):
    with Client(shm_daemon.url, model="m", layout=LAYOUT, shm=False) as tcp, \
            Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        assert tcp.put(b"g", chunk(7))
        assert metric(shm_daemon, "kvbucket_shm_slots") == 1  # the gRPC put was received into a slot
        assert bytes(c.get(b"g")) == chunk(7)
        assert bytes(tcp.get(b"g")) == chunk(7)
    assert metric(shm_daemon, "kvbucket_shm_copied_in_total") == 0


def test_entry_held_outside_the_arena_is_copied_in_for_the_read(shm_daemon):
    # A compressed put is decompressed into a plain buffer, outside the arena.
    with Client(shm_daemon.url, model="m", layout=LAYOUT, shm=False, codec="lz4") as tcp, \
            Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        assert tcp.put(b"z", chunk(8))
        assert metric(shm_daemon, "kvbucket_shm_slots") == 0
        assert bytes(c.get(b"z")) == chunk(8)
    assert metric(shm_daemon, "kvbucket_shm_copied_in_total") == 1
    assert metric(shm_daemon, "kvbucket_shm_slots") == 0  # the temporary copy went with the lease


def test_many_concurrent_clients(shm_daemon):
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            with Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
                for i in range(3):
                    key = b"w%d-%d" % (w, i)
                    assert c.put(key, chunk(100 * w + i))
                    assert bytes(c.get(key)) == chunk(100 * w + i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors

    async def async_clients() -> None:
        async def one(w: int) -> None:
            async with AsyncClient(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
                assert await c.put(b"a%d" % w, chunk(w))
                assert bytes(await c.get(b"a%d" % w)) == chunk(w)

        await asyncio.gather(*(one(w) for w in range(4)))

    asyncio.run(async_clients())
    assert metric(shm_daemon, "kvbucket_shm_leases") == 0


CRASH = """
import mmap, os, sys, grpc
from kvbucket.proto import store_pb2 as pb, store_pb2_grpc
stub = store_pb2_grpc.KVBucketShmStub(grpc.insecure_channel(sys.argv[1]))
a = stub.ShmAttach(pb.ShmAttachRequest())
fd = os.open(a.path, os.O_RDWR); mm = mmap.mmap(fd, a.size)
layout = pb.Layout(dtype="bfloat16", shape=[2, 2, 256, 8, 128], tokens_per_chunk=256)
scope = pb.Scope(model="m", layout=layout)
n = 2 * 2 * 2 * 256 * 8 * 128
if sys.argv[2] == "put":
    r = stub.ShmReserve(pb.ShmReserveRequest(chunks=[pb.ChunkHeader(scope=scope, hash=b"crash", raw_length=n,
        payload_length=n, dtype="bfloat16", shape=[2, 2, 256, 8, 128])]))
    mm[r.slots[0].offset : r.slots[0].offset + n // 2] = b"x" * (n // 2)
    print(r.slots[0].offset, flush=True)
else:
    r = stub.ShmGet(pb.ShmGetRequest(scope=scope, hashes=[sys.argv[3].encode()]))
    print(r.chunks[0].offset, flush=True)
os.kill(os.getpid(), 9)
"""


def crash_client(d, *args: str) -> int:
    cmd = [sys.executable, "-c", CRASH, unix_target(d), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert p.returncode == -9, p.stderr
    return int(p.stdout.split()[0])


def test_client_killed_mid_put_leaks_nothing_after_lease_expiry(shm_daemon, raw):
    offset = crash_client(shm_daemon, "put")
    s = raw.stats()
    assert (s.slots, s.leases, s.used_bytes) == (1, 1, CHUNK)  # the reservation is still held
    with Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        c.advance_clock(LEASE + 1)
        s = raw.stats()
        assert (s.slots, s.leases, s.used_bytes, s.expired_leases) == (0, 0, 0, 1)
        assert c.exists([b"crash"]) == [False]  # nothing half-written became visible
        r = raw.reserve(b"again")
        assert r.slots[0].offset == offset  # the slot is reused
        raw.stub.ShmRelease(pb.ShmReleaseRequest(lease=r.lease))


def test_client_killed_mid_get_holds_its_slot_until_expiry(shm_daemon, raw):
    data = chunk(1)
    with Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        assert c.put(b"held", data)
    # (closed: its slot pool went back, so the arena holds only what this test counts)
    with Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        offset = crash_client(shm_daemon, "get", "held")
        assert c.delete([b"held"]) == 1
        s = raw.stats()
        assert (s.slots, s.leases) == (1, 1)  # deleted, but the dead reader's lease keeps the slot
        r = raw.reserve(b"other")
        assert r.slots[0].offset != offset  # never reused under a reader
        assert raw.mm[offset : offset + CHUNK] == data
        raw.stub.ShmRelease(pb.ShmReleaseRequest(lease=r.lease))
        c.advance_clock(LEASE + 1)
        s = raw.stats()
        assert (s.slots, s.leases, s.used_bytes) == (0, 0, 0)
        r = raw.reserve(b"third")
        assert r.slots[0].offset == offset


def test_slot_under_a_read_lease_survives_eviction(shm_daemon, raw):
    """The arena holds 16 chunks: filling it evicts arena entries, but not the slot a reader holds."""
    data = chunk(5)
    with Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        assert c.put(b"first", data)
        g = raw.stub.ShmGet(pb.ShmGetRequest(scope=raw.scope, hashes=[b"first"]))
        offset = g.chunks[0].offset
        for i in range(40):  # 2.5x the arena: "first" is evicted on the way
            assert c.put(b"fill%d" % i, chunk(1000 + i))
        assert c.exists([b"first"]) == [False]
        assert metric(shm_daemon, 'kvbucket_store_evictions_total{tier="ram"}') > 0
        assert raw.mm[offset : offset + CHUNK] == data  # not overwritten while the lease is held
        assert raw.stub.ShmRelease(pb.ShmReleaseRequest(lease=g.lease)).released
        assert c.put(b"after", chunk(2)) and bytes(c.get(b"after")) == chunk(2)
        assert bytes(c.get(b"fill39")) == chunk(1039)


def test_checksum_mismatch_on_commit_is_data_loss_and_stores_nothing(shm_daemon, raw):
    r = raw.reserve(b"bad")
    off = r.slots[0].offset
    data = chunk(3)
    raw.mm[off : off + CHUNK] = data
    with pytest.raises(grpc.RpcError) as exc:
        raw.stub.ShmCommit(pb.ShmCommitRequest(lease=r.lease, checksums=[checksum(data) ^ 1]))
    assert exc.value.code() == grpc.StatusCode.DATA_LOSS
    with Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        assert c.exists([b"bad"]) == [False]
    s = raw.stats()
    assert (s.slots, s.leases) == (0, 0)
    with pytest.raises(grpc.RpcError) as exc:  # the lease is gone with the failed commit
        raw.stub.ShmCommit(pb.ShmCommitRequest(lease=r.lease, checksums=[checksum(data)]))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_bad_input_statuses_match_put(raw):
    cases = [
        raw.header(b"x", codec=pb.CODEC_LZ4),  # shm carries raw bytes
        pb.ChunkHeader(scope=raw.scope, hash=b"x", raw_length=CHUNK, payload_length=CHUNK, dtype="float16",
                       shape=LAYOUT.shape),  # dtype differs from the layout
        pb.ChunkHeader(scope=raw.scope, hash=b"", raw_length=CHUNK, payload_length=CHUNK, dtype=LAYOUT.dtype,
                       shape=LAYOUT.shape),  # empty hash
    ]
    for h in cases:
        with pytest.raises(grpc.RpcError) as exc:
            raw.stub.ShmReserve(pb.ShmReserveRequest(chunks=[h]))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, h
    r = raw.reserve(b"y")
    with pytest.raises(grpc.RpcError) as exc:
        raw.stub.ShmCommit(pb.ShmCommitRequest(lease=r.lease, checksums=[]))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not raw.stub.ShmRelease(pb.ShmReleaseRequest(lease=12345)).released


def test_fallback_to_grpc_when_the_daemon_has_no_arena(daemon, caplog):
    caplog.set_level(logging.WARNING, logger="kvbucket.clients.shm")
    with Client(daemon.url, model="m", layout=LAYOUT, shm=True) as c:
        assert c.put(b"f", chunk(4))
        assert bytes(c.get(b"f")) == chunk(4)
        assert c.put(b"g", chunk(5))
        assert c.shm_region() is None
    warnings = [r for r in caplog.records if "shared-memory data plane unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "FAILED_PRECONDITION" in warnings[0].getMessage()


def test_fallback_to_grpc_when_the_arena_file_cannot_be_opened(shm_daemon, caplog):
    caplog.set_level(logging.WARNING, logger="kvbucket.clients.shm")
    Path(shm_daemon.info["shm"]).unlink()  # as if on another host: the name opens nothing here
    with Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        assert c.put(b"f", chunk(4))
        assert bytes(c.get(b"f")) == chunk(4)
    assert any("cannot map" in r.getMessage() for r in caplog.records)
    assert metric(shm_daemon, 'kvbucket_server_requests_total{op="put"') == 1, request_mix(shm_daemon)


def test_client_attaches_again_after_a_daemon_restart(tmp_path):
    sock = tmp_path / "kv.sock"
    args = ("--unix-socket", str(sock), "--shm-size", "16MiB")
    d = start_daemon(tmp_path / "d1", *args)
    try:
        with Client(unix_url(d), model="m", layout=LAYOUT) as c:
            assert c.put(b"a", chunk(1))
            first = c.shm_region()
            d.stop()
            d = start_daemon(tmp_path / "d2", *args)
            assert c.ping(timeout=10)
            assert c.put(b"b", chunk(2))  # the new arena is detected: this call goes by Put
            assert c.put(b"c", chunk(3)) and bytes(c.get(b"c")) == chunk(3)  # attached to the new one
            assert c.shm_region() is not first
        assert metric(d, 'kvbucket_server_requests_total{op="put"') == 1, request_mix(d)
        assert metric(d, "kvbucket_shm_slots") == 2  # "b" went by gRPC Put, received into a slot too
    finally:
        d.stop()


def test_steady_state_is_one_round_trip_per_put_and_none_per_get(shm_daemon):
    with Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        for i in range(6):
            assert c.put(b"r%d" % i, chunk(i))
        for i in range(6):
            assert bytes(c.get(b"r%d" % i)) == chunk(i)
        mix = request_mix(shm_daemon)
        assert requests(shm_daemon, "shm_put") == 7, mix  # one to stock the pool, then one per put
        for op in ("shm_get", "shm_reserve", "shm_commit", "shm_release", "put", "get"):
            assert requests(shm_daemon, op) == 0, mix
        # Every get was read from the catalog and told to the daemon afterwards (one-way ShmHits).
        assert metric(shm_daemon, 'kvbucket_shm_catalog_reads_total{outcome="counted"}') == 6
        assert metric(shm_daemon, "kvbucket_shm_leases") == 1  # the pool
        assert metric(shm_daemon, "kvbucket_shm_slots") == 6 + 1  # six entries, one spare slot in the pool
    assert requests(shm_daemon, "shm_release") == 1  # closing releases the pool
    assert metric(shm_daemon, "kvbucket_shm_leases") == 0
    assert metric(shm_daemon, "kvbucket_shm_slots") == 6


def test_without_the_catalog_a_get_is_one_round_trip(tmp_path):
    d = start_daemon(tmp_path / "d", "--unix-socket", str(tmp_path / "kv.sock"), "--shm-size", "32MiB",
                     "--no-shm-catalog")
    try:
        with Client(unix_url(d), model="m", layout=LAYOUT) as c:
            for i in range(6):
                assert c.put(b"r%d" % i, chunk(i))
            for i in range(6):
                assert bytes(c.get(b"r%d" % i)) == chunk(i)
            assert requests(d, "shm_get") == 6, request_mix(d)
            # Each get lease is released by the next request: only the last one is still open, plus the pool.
            assert metric(d, "kvbucket_shm_leases") == 2
        assert requests(d, "shm_release") == 2  # closing releases the last get lease and the pool
        assert metric(d, "kvbucket_shm_catalog_entries") == 0  # no such gauge without a catalog
    finally:
        d.stop()


def pool_put(raw, pool: int, hashes_offsets, checksums=None, **kw) -> pb.ShmPutResponse:
    chunks = [raw.header(h, checksum=c) for (h, _), c in
              zip(hashes_offsets, checksums or [0] * len(hashes_offsets), strict=True)]
    return raw.stub.ShmPut(pb.ShmPutRequest(pool=pool, chunks=chunks, offsets=[o for _, o in hashes_offsets], **kw))


def test_pool_put_faults_store_nothing_and_leak_nothing(shm_daemon, raw):
    data = chunk(3)
    with Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        opened = raw.stub.ShmPut(pb.ShmPutRequest(refill=[CHUNK, CHUNK]))
        pool, (a, b) = opened.pool, [s.offset for s in opened.slots]
        assert pool and raw.stats().slots == 2
        raw.mm[a : a + CHUNK] = data
        # A wrong checksum: DATA_LOSS, nothing stored, the slot freed (not back in the pool).
        with pytest.raises(grpc.RpcError) as e:
            pool_put(raw, pool, [(b"bad", a)], [checksum(data) ^ 1])
        assert e.value.code() == grpc.StatusCode.DATA_LOSS
        assert c.exists([b"bad"]) == [False] and raw.stats().slots == 1
        # A slot that is not (any more) in the pool, and a chunk of the wrong length: INVALID_ARGUMENT.
        with pytest.raises(grpc.RpcError) as e:
            pool_put(raw, pool, [(b"reused", a)], [checksum(data)])
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a spare slot" in e.value.details()
        short = pb.ChunkHeader(scope=raw.scope, hash=b"short", raw_length=CHUNK // 2, payload_length=CHUNK // 2,
                               dtype=LAYOUT.dtype, shape=[1, 2, 256, 8, 128])
        with pytest.raises(grpc.RpcError) as e:
            raw.stub.ShmPut(pb.ShmPutRequest(pool=pool, chunks=[short], offsets=[b]))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "holds" in e.value.details()
        assert raw.stats().slots == 0 and c.exists([b"reused", b"short"]) == [False, False]
        # Chunks without a pool, and a pool that is not there.
        with pytest.raises(grpc.RpcError) as e:
            pool_put(raw, 0, [(b"x", a)])
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as e:
            raw.stub.ShmPut(pb.ShmPutRequest(pool=12345, refill=[CHUNK]))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # The happy path, then expiry: an idle pool goes with its spare slots.
        r = raw.stub.ShmPut(pb.ShmPutRequest(pool=pool, refill=[CHUNK, CHUNK]))
        a, b = [s.offset for s in r.slots]
        raw.mm[a : a + CHUNK] = data
        ok = pool_put(raw, pool, [(b"good", a)], [checksum(data)])
        assert [x.stored for x in ok.results] == [True] and bytes(c.get(b"good")) == data
        assert raw.stats().slots == 2  # "good", and the spare slot b
        c.advance_clock(LEASE + 1)
        s = raw.stats()
        assert (s.slots, s.leases) == (1, 0)
        with pytest.raises(grpc.RpcError) as e:
            pool_put(raw, pool, [(b"late", b)], [checksum(data)])
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_pool_refill_is_bounded_per_client(shm_daemon, raw):
    # The arena holds 16 chunks; a pool may hold at most a quarter of it.
    r = raw.stub.ShmPut(pb.ShmPutRequest(refill=[CHUNK] * 8))
    assert [s.fallback for s in r.slots] == [False] * 4 + [True] * 4
    raw.stub.ShmRelease(pb.ShmReleaseRequest(lease=r.pool))
    assert raw.stats().slots == 0


def test_socket_puts_into_a_full_cache_land_in_the_arena(shm_daemon):
    """Arena 16 chunks, RAM 32 (LRU). Once the RAM tier is full a socket put evicts anyway: it is
    received into an arena slot (freed by evicting an arena entry if need be), not into freshly
    faulted heap memory -- a shared-memory get of it then needs no copy into the arena."""
    with Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        assert c.put_many([(b"a%d" % i, chunk(i)) for i in range(16)]) == [True] * 16
    with Client(shm_daemon.url, model="m", layout=LAYOUT, shm=False) as tcp:
        assert tcp.put_many([(b"t%d" % i, chunk(100 + i)) for i in range(16)]) == [True] * 16
        assert metric(shm_daemon, 'kvbucket_store_evictions_total{tier="ram"}') == 0  # now full
        assert tcp.put_many([(b"u%d" % i, chunk(200 + i)) for i in range(6)]) == [True] * 6
    assert metric(shm_daemon, 'kvbucket_store_evictions_total{tier="ram"}') >= 6
    copied = metric(shm_daemon, "kvbucket_shm_copied_in_total")
    with Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        assert [bytes(x) for x in c.get_many([b"u%d" % i for i in range(6)])] == [chunk(200 + i) for i in range(6)]
    assert metric(shm_daemon, "kvbucket_shm_copied_in_total") == copied


def test_a_full_arena_still_refills_the_pool_one_round_trip_per_put(shm_daemon):
    """The arena holds 16 chunks; 40 puts fill it 2.5 times, and every one is a single ShmPut."""
    with Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        for i in range(40):
            assert c.put(b"f%d" % i, chunk(2000 + i))
        assert bytes(c.get(b"f39")) == chunk(2039)
    assert metric(shm_daemon, 'kvbucket_store_evictions_total{tier="ram"}') > 0
    assert metric(shm_daemon, 'kvbucket_server_requests_total{op="shm_put",status="OK"}') == 41  # + stocking
    assert metric(shm_daemon, 'kvbucket_server_requests_total{op="shm_reserve"') == 0
    assert metric(shm_daemon, 'kvbucket_server_requests_total{op="put"') == 0


def test_client_forgets_a_pool_idle_for_half_its_lease():
    from kvbucket.clients.shm import SlotPool

    pool = SlotPool(lease_seconds=0.2)
    pool.stock(pb.ShmPutResponse(pool=7, slots=[pb.ShmSlot(offset=4096, length=10)]), time.monotonic())
    assert pool.take([10, 10]) is None and pool.take([10]) == [4096]
    pool.stock(pb.ShmPutResponse(pool=7, slots=[pb.ShmSlot(offset=8192, length=10)]), time.monotonic())
    time.sleep(0.15)
    assert pool.take([10]) is None and pool.id == 0  # never written into: the daemon may have dropped it


def test_get_views_are_zero_copy_read_only_and_released(shm_daemon, raw):
    data = [chunk(20), chunk(21)]
    with Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        assert c.put_many([(b"v0", data[0]), (b"v1", data[1])]) == [True, True]
        with c.get_views([b"v0", b"nope", b"v1"]) as views:
            assert bytes(views[0]) == data[0] and views[1] is None and bytes(views[2]) == data[1]
            assert views[0].readonly
            with pytest.raises(TypeError):
                views[0][0] = 1
            # The view *is* the arena: a byte changed there shows through (no copy was made).
            offset = raw.stub.ShmGet(pb.ShmGetRequest(scope=raw.scope, hashes=[b"v0"])).chunks[0].offset
            assert np.frombuffer(views[0], np.uint8).ctypes.data == \
                np.frombuffer(c.shm_region(), np.uint8).ctypes.data + offset
            kept = views[0]
        with pytest.raises(ValueError):
            bytes(kept)  # released with the block
        # A corrupted slot is caught by the verification (on by default).
        raw.mm[offset] ^= 0xFF
        with pytest.raises(DataLoss):
            c.get_views([b"v0"])
        raw.mm[offset] ^= 0xFF
        with c.get_views([b"v0"]) as views:
            assert bytes(views[0]) == data[0]
        assert c.exists([b"v0"]) == [True]  # the next request released the lease
        assert requests(shm_daemon, "get") == 0
    assert metric(shm_daemon, "kvbucket_shm_leases") == 1  # the raw ShmGet above, never released


def test_get_views_over_grpc_are_views_of_fetched_buffers(shm_daemon):
    with Client(shm_daemon.url, model="m", layout=LAYOUT, shm=False) as c:
        assert c.put(b"g", chunk(30))
        with c.get_views([b"g", b"missing"]) as views:
            assert bytes(views[0]) == chunk(30) and views[1] is None
    assert requests(shm_daemon, "get") >= 1 and requests(shm_daemon, "shm_get") == 0
    assert "unexpected error" not in shm_daemon.log()


def test_one_large_reserved_chunk_is_stored_whole(tmp_path):
    """32 MiB in one reservation (a vLLM save of one chunk) takes the commit's worker-thread hash
    (server/shm.py `_checksums`: larger than THREAD_BYTES): stored whole, read back equal."""
    big = Layout("bfloat16", (32, 2, 256, 8, 128), tokens_per_chunk=256)
    data = np.random.default_rng(5).integers(0, 256, big.chunk_bytes, dtype=np.uint8)
    d = start_daemon(tmp_path / "d", "--unix-socket", str(tmp_path / "kv.sock"), "--shm-size", "256MiB",
                     "--ram-capacity", "256MiB")
    try:
        with Client(unix_url(d), model="m", layout=big) as c:
            with c.reserve([(b"big", big.chunk_bytes)]) as r:
                assert r.in_arena == [True]
                np.frombuffer(r.views[0], np.uint8)[:] = data
                assert r.commit() == [True]
            out = bytearray(big.chunk_bytes)
            assert c.get_into(b"big", out) and out == data.tobytes()
            with c.get_views([b"big"]) as views:
                assert views[0] == data.tobytes()
        assert requests(d, "put") == 0  # no socket put: the bytes stayed in the arena
    finally:
        d.stop()


def test_reserve_write_in_place_commit(shm_daemon):
    data = chunk(40)
    with Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        with c.reserve([(b"in-place", CHUNK), (b"other", CHUNK)]) as r:
            assert all(r.in_arena) and all(not v.readonly for v in r.views)
            np.frombuffer(r.views[0], np.uint8)[:] = np.frombuffer(data, np.uint8)  # e.g. a kernel's write
            r.views[1][:] = chunk(41)
            assert r.commit() == [True, True]
        assert bytes(c.get(b"in-place")) == data and bytes(c.get(b"other")) == chunk(41)
        with pytest.raises(FailedPrecondition):
            r.commit()
        # An aborted reservation stores nothing and its slots go back.
        with c.reserve([(b"aborted", CHUNK)]) as r:
            r.views[0][:] = data
        assert c.exists([b"aborted"]) == [False]
        # Too slow: the lease expired, the slots may be someone else's now.
        r = c.reserve([(b"late", CHUNK)])
        c.advance_clock(LEASE + 1)
        with pytest.raises(FailedPrecondition):
            r.commit()
        # Bad input is refused at reservation, as Put refuses it.
        with pytest.raises(InvalidArgument):
            c.reserve([(b"short", CHUNK - 1)])
    assert requests(shm_daemon, "put") == 0
    assert metric(shm_daemon, "kvbucket_shm_leases") == 0
    assert metric(shm_daemon, "kvbucket_shm_slots") == 2


def test_reserve_without_shared_memory_sends_by_put(shm_daemon):
    with Client(shm_daemon.url, model="m", layout=LAYOUT, shm=False) as c:
        with c.reserve([(b"tcp", CHUNK)]) as r:
            assert r.in_arena == [False]
            r.views[0][:] = chunk(50)
            assert r.commit() == [True]
        assert bytes(c.get(b"tcp")) == chunk(50)
    assert requests(shm_daemon, "put") == 1


def test_async_views_and_reservations(shm_daemon):
    async def main() -> None:
        async with AsyncClient(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
            r = await c.reserve([(b"a-res", CHUNK)])
            r.views[0][:] = chunk(60)
            assert await r.commit() == [True]
            with await c.get_views([b"a-res"]) as views:
                assert bytes(views[0]) == chunk(60)

    asyncio.run(main())
    assert requests(shm_daemon, "put") == requests(shm_daemon, "get") == 0


def test_an_arena_that_cannot_be_made_turns_auto_shared_memory_off_not_the_daemon(tmp_path):
    nowhere = {"KVBUCKET_SHM__DIRECTORY": str(tmp_path / "missing")}
    d = start_daemon(tmp_path / "auto", "--unix-socket", str(tmp_path / "kv.sock"), env=nowhere)
    try:
        assert d.info["shm"] is None and "shared memory off" in d.log()
        with Client(unix_url(d), model="m", layout=LAYOUT) as c:
            assert c.put(b"s", chunk(70)) and bytes(c.get(b"s")) == chunk(70)
            assert c.shm_region() is None
    finally:
        d.stop()
    with pytest.raises(RuntimeError, match="exited"):  # asked for explicitly: refuse to start
        start_daemon(tmp_path / "explicit", "--shm-size", "16MiB", env=nowhere)


def test_socket_puts_leave_a_quarter_of_the_arena_to_shared_memory_puts(shm_daemon):
    """The arena holds 16 chunks: puts over the sockets take slots only while 8 MiB would stay free."""
    with Client(shm_daemon.url, model="m", layout=LAYOUT, shm=False) as tcp:
        assert tcp.put_many([(b"t%d" % i, chunk(i)) for i in range(14)]) == [True] * 14
    assert metric(shm_daemon, "kvbucket_shm_slots") == 11  # the other three are plain buffers
    with Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        assert c.put(b"local", chunk(99))
        assert c.exists([b"t%d" % i for i in range(14)] + [b"local"]) == [True] * 15  # nothing evicted
    assert metric(shm_daemon, 'kvbucket_store_evictions_total{tier="ram"}') == 0


def test_an_arena_as_large_as_the_ram_tier_takes_every_socket_put(tmp_path):
    """Arena = RAM tier (the sizing the README advises): the quarter kept free for shared-memory puts
    shrinks to the RAM tier's remaining room, so no socket put lands in freshly faulted heap memory."""
    sock = tmp_path / "kv.sock"
    d = start_daemon(tmp_path / "d", "--unix-socket", str(sock), "--shm-size", "32MiB", "--ram-capacity", "32MiB",
                     "--ram-policy", "lru")
    try:
        with Client(d.url, model="m", layout=LAYOUT, shm=False) as tcp:
            assert tcp.put_many([(b"t%d" % i, chunk(i)) for i in range(15)]) == [True] * 15
            assert metric(d, "kvbucket_shm_slots") == 15  # each in the arena (a quarter rule: 12)
            assert metric(d, 'kvbucket_store_evictions_total{tier="ram"}') == 0
            assert tcp.put(b"t15", chunk(15))  # the RAM tier is full now
        assert metric(d, "kvbucket_shm_slots") == 16
        with Client(unix_url(d), model="m", layout=LAYOUT) as c:
            assert c.put(b"local", chunk(99)) and bytes(c.get(b"local")) == chunk(99)
            # Room for that put and the client's spare slots was made by policy (LRU): the oldest went.
            present = c.exists([b"t%d" % i for i in range(16)])
            assert present == sorted(present) and not present[0] and present[-1]
            assert all(bytes(c.get(b"t%d" % i)) == chunk(i) for i in range(16) if present[i])
    finally:
        d.stop()


# -- checksums by the daemon, and pieces announced while the writer copies (ShmWritten) ----------------


def fast_conn(d):
    from kvbucket.clients.fastwire import Conn

    return Conn(d.info["unix_url"].removeprefix("kvbucket+unix://") + ".fast", None, 10)


def announce(conn, pool: int, offset: int, written: int) -> None:
    from kvbucket.core.fastwire import Method

    conn.notify(Method.SHM_WRITTEN, pb.ShmWritten(pool=pool, offset=offset, written=written))


def announced(d, outcome: str) -> float:
    return metric(d, f'kvbucket_shm_announced_pieces_total{{outcome="{outcome}"}}')


def test_announced_pieces_are_hashed_as_they_land_and_the_stored_checksum_is_the_bytes(shm_daemon, raw):
    from kvbucket.core.fastwire import Method

    data = chunk(80)
    conn = fast_conn(shm_daemon)
    opened = raw.stub.ShmPut(pb.ShmPutRequest(refill=[CHUNK]))
    pool, off = opened.pool, opened.slots[0].offset
    quarter = CHUNK // 4
    for end in range(quarter, CHUNK + 1, quarter):  # copy a piece, announce it
        raw.mm[off + end - quarter : off + end] = data[end - quarter : end]
        announce(conn, pool, off, end)
    req = pb.ShmPutRequest(pool=pool, chunks=[raw.header(b"ann")], offsets=[off], daemon_checksums=True)
    assert conn.unary(Method.SHM_PUT, req, pb.ShmPutResponse, 10).results[0].stored
    assert announced(shm_daemon, "hashed") == 4 and announced(shm_daemon, "ignored") == 0
    with Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        assert bytes(c.get(b"ann")) == data  # shared memory: verified against the daemon's checksum
    with Client(shm_daemon.url, model="m", layout=LAYOUT, shm=False) as tcp:
        assert bytes(tcp.get(b"ann")) == data  # the socket: verified again after the transfer
    conn.close()


def test_a_byte_changed_after_its_announcement_is_refused_at_commit_or_never_served(shm_daemon, raw):
    from kvbucket.core.fastwire import Method

    data = chunk(81)
    conn = fast_conn(shm_daemon)
    for name, given in ((b"verified", True), (b"trusted", False)):
        opened = raw.stub.ShmPut(pb.ShmPutRequest(refill=[CHUNK, CHUNK]))
        pool, (off, other) = opened.pool, [s.offset for s in opened.slots]
        raw.mm[off : off + CHUNK] = data
        raw.mm[other : other + CHUNK] = data
        announce(conn, pool, off, CHUNK // 2)
        announce(conn, pool, other, CHUNK)
        # One worker hashes pieces in order: once `other` is stored, the half of `off` was hashed.
        req = pb.ShmPutRequest(pool=pool, chunks=[raw.header(name + b"-other")], offsets=[other],
                               daemon_checksums=True)
        assert conn.unary(Method.SHM_PUT, req, pb.ShmPutResponse, 10).results[0].stored
        raw.mm[off + 5] ^= 0xFF  # the writer scribbles on bytes it announced
        header = raw.header(name, checksum=checksum(raw.mm[off : off + CHUNK]) if given else 0)
        req = pb.ShmPutRequest(pool=pool, chunks=[header], offsets=[off], daemon_checksums=not given)
        if given:  # the writer's checksum is of the bytes now there; the daemon hashed the old ones
            with pytest.raises(DataLoss):
                conn.unary(Method.SHM_PUT, req, pb.ShmPutResponse, 10)
        else:  # stored with what the daemon read: every reader checks it, none is given wrong bytes
            assert conn.unary(Method.SHM_PUT, req, pb.ShmPutResponse, 10).results[0].stored
    conn.close()
    with Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        assert c.exists([b"verified", b"trusted"]) == [False, True]
        with pytest.raises(DataLoss):
            c.get(b"trusted")
    with Client(shm_daemon.url, model="m", layout=LAYOUT, shm=False) as tcp, pytest.raises(DataLoss):
        tcp.get(b"trusted")


def test_announcements_that_do_not_fit_are_ignored_and_the_slot_is_hashed_whole(shm_daemon, raw):
    from kvbucket.core.fastwire import Method

    data = chunk(82)
    conn = fast_conn(shm_daemon)
    opened = raw.stub.ShmPut(pb.ShmPutRequest(refill=[CHUNK]))
    pool, off = opened.pool, opened.slots[0].offset
    raw.mm[off : off + CHUNK] = data
    announce(conn, pool, off, CHUNK // 2)
    announce(conn, pool, off, CHUNK // 4)  # not growing: this slot's progress is dropped
    announce(conn, pool, off, CHUNK + 1)  # past the slot
    announce(conn, pool, off + 4096, 10)  # not a slot of the pool
    announce(conn, 12345, off, 10)  # not a pool
    announce(conn, pool, off, CHUNK)  # starts over: hashed from byte 0 after all
    conn.notify(Method.SHM_WRITTEN, pb.ShmReleaseRequest(lease=1))  # not a ShmWritten at all
    req = pb.ShmPutRequest(pool=pool, chunks=[raw.header(b"odd", checksum=checksum(data))], offsets=[off])
    assert conn.unary(Method.SHM_PUT, req, pb.ShmPutResponse, 10).results[0].stored  # no reply was queued
    assert announced(shm_daemon, "ignored") == 5 and announced(shm_daemon, "hashed") == 2
    with Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        assert bytes(c.get(b"odd")) == data
    conn.close()


def test_commit_with_daemon_checksums_and_its_bad_input(shm_daemon, raw):
    data = chunk(83)
    r = raw.reserve(b"gpu")  # what a GPU writer does: reserve, a kernel fills the slot, commit
    raw.mm[r.slots[0].offset : r.slots[0].offset + CHUNK] = data
    with pytest.raises(grpc.RpcError) as e:
        raw.stub.ShmCommit(pb.ShmCommitRequest(lease=r.lease, checksums=[checksum(data)], daemon_checksums=True))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not both" in e.value.details()
    r = raw.reserve(b"gpu")
    raw.mm[r.slots[0].offset : r.slots[0].offset + CHUNK] = data
    assert raw.stub.ShmCommit(pb.ShmCommitRequest(lease=r.lease, daemon_checksums=True)).results[0].stored
    with Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        assert bytes(c.get(b"gpu")) == data


def test_hashed_in_slot_is_stored_as_given_without_the_daemon_reading_the_slot(shm_daemon, raw):
    from kvbucket.core.fastwire import Method

    data = chunk(86)
    conn = fast_conn(shm_daemon)
    for name, given in ((b"right", checksum(data)), (b"wrong", checksum(data) ^ 1)):
        opened = raw.stub.ShmPut(pb.ShmPutRequest(refill=[CHUNK]))
        off = opened.slots[0].offset
        raw.mm[off : off + CHUNK] = data
        req = pb.ShmPutRequest(pool=opened.pool, chunks=[raw.header(name, checksum=given)], offsets=[off],
                               hashed_in_slot=True)
        # Stored either way: the daemon takes the writer's word for what the slot holds ...
        assert conn.unary(Method.SHM_PUT, req, pb.ShmPutResponse, 10).results[0].stored
    conn.close()
    assert metric(shm_daemon, 'kvbucket_server_rejected_total{reason="checksum"}') == 0
    # ... and every reader checks it: the wrong one is never served, by shared memory or the socket.
    with Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        assert bytes(c.get(b"right")) == data
        with pytest.raises(DataLoss):
            c.get(b"wrong")
    with Client(shm_daemon.url, model="m", layout=LAYOUT, shm=False) as tcp:
        assert bytes(tcp.get(b"right")) == data
        with pytest.raises(DataLoss):
            tcp.get(b"wrong")
    # Not with daemon_checksums.
    opened = raw.stub.ShmPut(pb.ShmPutRequest(refill=[CHUNK]))
    req = pb.ShmPutRequest(pool=opened.pool, chunks=[raw.header(b"both")], offsets=[opened.slots[0].offset],
                           hashed_in_slot=True, daemon_checksums=True)
    with pytest.raises(grpc.RpcError) as e:
        raw.stub.ShmPut(req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not both" in e.value.details()


def test_the_sdk_hashes_what_it_copies_and_the_daemon_does_not_read_it_again(tmp_path):
    big = Layout("bfloat16", (4, 2, 256, 8, 128), tokens_per_chunk=256)  # 4 MiB: over PIECE, two threads copy
    d = start_daemon(tmp_path / "d", "--unix-socket", str(tmp_path / "kv.sock"), "--shm-size", "64MiB")
    try:
        data = np.random.default_rng(84).integers(0, 256, big.chunk_bytes, dtype=np.uint8).tobytes()
        with Client(unix_url(d), model="m", layout=big) as c:
            assert c.put(b"big", data) and bytes(c.get(b"big")) == data
        small = [chunk(85 + i) for i in range(3)]
        with Client(unix_url(d), model="m", layout=LAYOUT) as c:  # a batch: the worker copies every other
            assert c.put_many([(b"s%d" % i, x) for i, x in enumerate(small)]) == [True] * 3
            assert [bytes(x) for x in c.get_many([b"s0", b"s1", b"s2"])] == small
        with Client(d.url, model="m", layout=LAYOUT, shm=False) as tcp:  # the stored checksums, over the socket
            assert [bytes(x) for x in tcp.get_many([b"s0", b"s1", b"s2"])] == small
        assert announced(d, "hashed") == 0 and announced(d, "ignored") == 0  # nothing left for the daemon
        assert metric(d, 'kvbucket_server_requests_total{op="put"') == 0
        assert metric(d, 'kvbucket_server_requests_total{op="shm_put"') >= 2
    finally:
        d.stop()


def test_a_lazy_stream_is_pipelined_and_each_item_read_once(shm_daemon, monkeypatch):
    """put_many of a generator: chunk k+1 is copied and sent before chunk k's reply is read. The
    generator refills one buffer per item (as LMCache's staging slot), so a chunk read after the
    next was asked for would be stored with the wrong bytes."""
    events = []
    start, finish = fastwire.Conn.start, fastwire.Conn.finish
    monkeypatch.setattr(fastwire.Conn, "start", lambda self, *a: (events.append("start"), start(self, *a))[1])
    monkeypatch.setattr(fastwire.Conn, "finish", lambda self, *a: (events.append("finish"), finish(self, *a))[1])
    buf = bytearray(CHUNK)

    def items(n, tag=b"p", base=300):
        for i in range(n):
            events.append(f"item {i}")
            buf[:] = chunk(base + i)
            yield tag + b"%d" % i, buf

    with Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        assert c.put_many(items(6)) == [True] * 6
        assert [bytes(x) for x in c.get_many([b"p%d" % i for i in range(6)])] == [chunk(300 + i) for i in range(6)]
    got = events
    assert got[:3] == ["item 0", "start", "item 1"]  # no reply awaited before the next item is copied
    assert got[3:] == ["start", "finish", "item 2", "start", "finish", "item 3", "start", "finish",
                       "item 4", "start", "finish", "item 5", "start", "finish", "finish"]
    assert requests(shm_daemon, "shm_put") == 1 + 6, request_mix(shm_daemon)  # the pool stocked once, two deep

    # A pool left one deep by single puts: a put that leaves it empty asks for two back.
    with Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        assert c.put(b"single", chunk(299))
        events.clear()
        assert c.put_many(items(6, b"q", 310)) == [True] * 6
        assert [bytes(x) for x in c.get_many([b"q%d" % i for i in range(6)])] == [chunk(310 + i) for i in range(6)]
    k = events.index("item 2")
    assert events[k:] == ["item 2", "start", "finish", "item 3", "start", "finish", "item 4", "start", "finish",
                          "item 5", "start", "finish", "finish"], events


FORKED = """
import json, os, sys
import numpy as np
from kvbucket import Client, Layout

LAYOUT = Layout("bfloat16", (2, 2, 32, 8, 128), tokens_per_chunk=32)  # 256 KiB: 32 fill the arena


def data(tag, i):
    return np.random.default_rng([tag, i]).integers(0, 256, LAYOUT.chunk_bytes, dtype=np.uint8).tobytes()


def work(c, tag):
    failed = []
    for i in range(120):
        key = b"%d-%d" % (tag, i)
        try:
            got = c.get(key) if c.put(key, data(tag, i)) else None
            if got is None or bytes(got) != data(tag, i):
                failed.append(i)
        except Exception as exc:
            failed.append(f"{i}: {exc!r}")
    return failed


c = Client(sys.argv[1], model="m", layout=LAYOUT)
assert c.put(b"held", data(0, 0)) and c.transport() == "shm"
views = c.get_views([b"held"])  # a read lease on its slot, held across the fork
reservation = c.reserve([(b"reserved", LAYOUT.chunk_bytes)])  # slots the parent writes after the fork
pid = os.fork()
if pid == 0:
    views.close()  # the child's copy: the lease is the parent's
    try:
        reservation.commit()
        refused = False
    except Exception as exc:
        refused = type(exc).__name__
    reservation.abort()  # nothing in the child: the parent still writes into those slots
    failed = work(c, 2)
    print(json.dumps({"child": failed, "child_commit": refused}), flush=True)
    os._exit(0)
failed = work(c, 1)
_, status = os.waitpid(pid, 0)
reservation.views[0][:] = data(3, 0)
stored = reservation.commit() == [True] and bytes(c.get(b"reserved")) == data(3, 0)
held = bytes(views[0]) == data(0, 0)
views.close()
print(json.dumps({"parent": failed, "child_exit": os.waitstatus_to_exitcode(status), "held": held,
                  "reserved": stored}))
"""


def test_a_client_inherited_across_fork_shares_no_slot_connection_or_lease_with_its_parent(tmp_path):
    """Parent and forked child put and get through one inherited Client at once. The child must not
    write into the parent's spare slots (the daemon refuses the second writer), reuse its idle fast-wire
    connection (each would read the other's replies), or release the parent's read lease when it
    closes its copy of the parent's views (the slot would be recycled under the parent's reader: the
    arena holds 32 chunks, each side puts 120). Nor may it commit or abort the parent's reservation,
    whose slots the parent writes after the fork."""
    d = start_daemon(tmp_path / "d", "--unix-socket", str(tmp_path / "kv.sock"), "--shm-size", "8MiB",
                     "--ram-policy", "lru")
    try:
        env = {**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "true"}  # gRPC's own condition for crossing a fork
        out = subprocess.run([sys.executable, "-c", FORKED, unix_url(d)], env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
        result = {k: v for line in lines for k, v in line.items()}
        assert result == {"child": [], "child_commit": "FailedPrecondition", "parent": [], "child_exit": 0,
                          "held": True, "reserved": True}, (result, out.stderr[-3000:])
    finally:
        d.stop()


def test_a_refused_chunk_ends_a_stream_and_its_connection_answers_nothing_else(shm_daemon):
    """The chunk after a refused one was sent and its reply not read: that connection must not serve
    the next call (it would read that reply as its own)."""
    assert cli(shm_daemon, "quota", "default", str(3 * CHUNK))
    with Client(unix_url(shm_daemon), model="m", layout=LAYOUT) as c:
        with pytest.raises(ResourceExhausted, match="quota"):
            c.put_many((b"q%d" % i, chunk(400 + i)) for i in range(6))
        for _ in range(3):
            assert c.lookup([b"q0", b"q1", b"q2", b"q9"]).hits == 3
            assert c.exists([b"q0", b"q9"]) == [True, False]
        assert bytes(c.get(b"q2")) == chunk(402)


def test_a_stream_goes_on_by_put_when_the_daemon_restarts_mid_stream(tmp_path):
    sock = tmp_path / "kv.sock"
    args = ["--unix-socket", str(sock), "--shm-size", "32MiB"]
    d = start_daemon(tmp_path / "d", *args)
    c = Client(unix_url(d), model="m", layout=LAYOUT)

    def items():
        nonlocal d
        for i in range(5):
            if i == 3:  # chunk 2 is in flight: its reply is lost with the daemon
                d.stop()
                d = start_daemon(tmp_path / "d", *args)
                assert c.ping(timeout=10)
            yield b"w%d" % i, chunk(500 + i)

    try:
        assert c.put_many(items()) == [True, True, False, True, True]
        assert [bytes(x) for x in c.get_many([b"w3", b"w4"])] == [chunk(503), chunk(504)]
        assert metric(d, 'kvbucket_server_requests_total{op="put"') >= 1, request_mix(d)  # sent by Put
    finally:
        c.close()
        d.stop()

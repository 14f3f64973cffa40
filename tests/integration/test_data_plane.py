"""The daemon as a user runs it: a subprocess on port 0, driven through the SDK."""

from __future__ import annotations

import os
import threading

import pytest

from kvbucket import Client, Layout, chunk_hashes
from kvbucket.core import errors

LAYOUT = Layout("bfloat16", (2, 2, 64, 2, 32), tokens_per_chunk=64)  # 32 KiB chunks


def payload(i: int, layout: Layout = LAYOUT) -> bytes:
    return (i.to_bytes(4, "little") * (layout.chunk_bytes // 4 + 1))[: layout.chunk_bytes]


@pytest.fixture
def client(daemon):
    with Client(daemon.url, model="tiny-llama@r1", layout=LAYOUT) as c:
        yield c


def test_put_get_round_trip_is_bit_exact(client):
    data = os.urandom(LAYOUT.chunk_bytes)
    assert client.put(b"k" * 32, data)
    assert bytes(client.get(b"k" * 32)) == data


def test_multi_frame_chunk_round_trip(daemon):
    big = Layout("bfloat16", (4, 2, 256, 8, 128), tokens_per_chunk=256)  # 8 MiB: 8 frames
    data = os.urandom(big.chunk_bytes)
    with Client(daemon.url, model="m", layout=big) as c:
        c.put(b"big", data)
        out = bytearray(big.chunk_bytes)
        assert c.get_into(b"big", out)
        assert out == data


def test_lookup_counts_the_leading_cached_chunks(client):
    tokens = list(range(64 * 5 + 10))
    hashes = chunk_hashes(tokens, 64)
    assert len(hashes) == 5
    client.put_many([(h, payload(i)) for i, h in enumerate(hashes[:3])])
    client.put(hashes[4], payload(4))  # present, but after a gap: not part of the prefix
    r = client.lookup(hashes)
    assert r.hits == 3
    assert r.tiers == ["ram"] * 3
    assert r.tokens(64) == 192


def test_get_many_reports_misses_in_place(client):
    hashes = chunk_hashes(list(range(64 * 3)), 64)
    client.put(hashes[0], payload(0))
    client.put(hashes[2], payload(2))
    got = client.get_many(hashes)
    assert bytes(got[0]) == payload(0) and got[1] is None and bytes(got[2]) == payload(2)
    prefix = client.get_many(hashes, stop_at_first_miss=True)
    assert bytes(prefix[0]) == payload(0) and prefix[1] is None and prefix[2] is None


def test_exists_and_delete(client):
    client.put(b"a", payload(1))
    assert client.exists([b"a", b"b"]) == [True, False]
    assert client.delete([b"a", b"b"]) == 1
    assert client.get(b"a") is None


def test_compressed_put_is_stored_and_served_raw(daemon):
    with Client(daemon.url, model="m", layout=LAYOUT, codec="zstd") as c:
        c.put(b"z", payload(7))
        assert bytes(c.get(b"z")) == payload(7)


def test_models_layouts_and_namespaces_never_share_entries(daemon):
    other_layout = Layout("float16", LAYOUT.shape, tokens_per_chunk=64)
    with Client(daemon.url, model="model-a", layout=LAYOUT) as a:
        a.put(b"same-hash", payload(1))
        assert a.scoped(model="model-b").get(b"same-hash") is None
        assert a.scoped(layout=other_layout).get(b"same-hash") is None
        assert a.scoped(namespace="other").get(b"same-hash") is None
        assert bytes(a.get(b"same-hash")) == payload(1)


def test_concurrent_clients_on_shared_and_private_keys(daemon):
    failures: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with Client(daemon.url, model="m", layout=LAYOUT) as c:
                for i in range(20):
                    c.put(b"shared", payload(i % 3))
                    c.put(f"own-{n}-{i}".encode(), payload(n))
                    got = c.get(b"shared")
                    assert got is None or bytes(got) in {payload(0), payload(1), payload(2)}
                    assert bytes(c.get(f"own-{n}-{i}".encode())) == payload(n)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures


def test_stats_count_the_traffic(client):
    hashes = chunk_hashes(list(range(128)), 64)
    client.put_many([(h, payload(i)) for i, h in enumerate(hashes)])
    client.lookup(hashes)
    client.get_many(hashes)
    s = client.stats()
    ram = next(t for t in s.tiers if t.tier == 1)
    assert ram.entries == 2 and ram.bytes == 2 * LAYOUT.chunk_bytes
    assert s.lookup_keys == 2 and s.lookup_hits == 2
    assert s.get_hits == 2 and s.tokens_served == 128


def test_daemon_rejects_unknown_url_scheme():
    with pytest.raises(errors.InvalidArgument, match="scheme"):
        Client("http://127.0.0.1:1", layout=LAYOUT)


@pytest.mark.parametrize("path", ["tcp", "shm"])
def test_put_many_reads_each_item_before_asking_for_the_next(tmp_path, path):
    """A generator may reuse one staging buffer for every item (LMCache's plugin does)."""
    from daemon import start_daemon

    sock = tmp_path / "kv.sock"
    d = start_daemon(tmp_path, "--unix-socket", str(sock), "--shm-size", "64MiB")
    try:
        url = d.url if path == "tcp" else f"kvbucket+unix://{sock}"
        with Client(url, model="m", layout=LAYOUT) as c:
            staging = bytearray(LAYOUT.chunk_bytes)

            def packed():
                for i in range(4):
                    staging[:] = payload(i)
                    yield (f"k{i}".encode(), staging)

            assert c.put_many(packed()) == [True] * 4
            assert (c.shm_region() is not None) == (path == "shm")
            got = c.get_many([f"k{i}".encode() for i in range(4)])
            assert [bytes(g) for g in got] == [payload(i) for i in range(4)]
    finally:
        d.stop()

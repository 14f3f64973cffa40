"""TTL (absolute, sliding, per selector, namespace default) and pins, on the daemon's test-only clock."""

from __future__ import annotations

import time

import pytest
from admin_helpers import LAYOUT, cli, data, h

from kvbucket import Client
from kvbucket.core import errors

from daemon import start_daemon

CLOCK = {"KVBUCKET_ADMIN__DEBUG_CLOCK": "true", "KVBUCKET_ADMIN__SWEEP_SECONDS": "0.05"}


def _until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def clocked(tmp_path):
    d = start_daemon(tmp_path, "--nvme", env=CLOCK)
    yield d
    d.stop()


def test_ttl_absolute_sliding_selector_and_namespace_default(clocked):
    d = clocked
    c = Client(d.url, model="m", layout=LAYOUT)
    c.put_many([(h(0), data(0))], ttl_seconds=60)  # A: absolute
    c.put_many([(h(1), data(1))], ttl_seconds=60, ttl_sliding=True)  # B: sliding
    c.put_many([(h(2), data(2))])  # C: no TTL until the selector gives it one
    assert cli(d, "ttl", "--default", "100", "--namespace", "ns2")["default_ttl_seconds"] == 100
    c2 = c.scoped(namespace="ns2")
    c2.put(h(3), data(3))  # D: the namespace default
    (info,) = cli(d, "inspect", h(3).hex(), "--namespace", "ns2", "--model", "m")
    assert info["expires_at"] > 0 and info["ttl_seconds"] == 100
    assert cli(d, "ttl", "30", "--namespace", "default", "--model", "m", "--hash", h(2).hex())["entries"] == 1
    assert len(cli(d, "ls", "--expiring-within", "45")) == 1

    c.advance_clock(40)  # t=40: C (30) expired
    assert c.lookup([h(2)]).hits == 0
    assert bytes(c.get(h(1))) == data(1)  # B refreshed: now expires at 100
    c.advance_clock(40)  # t=80: A (60) expired, B alive
    assert c.exists([h(0), h(1)]) == [False, True]
    c.advance_clock(40)  # t=120: B (100) and D (100) expired
    assert c.exists([h(1)]) == [False] and c2.exists([h(3)]) == [False]
    # the sweep removes expired entries nobody reads, from every tier
    c.put_many([(h(9), data(9))], ttl_seconds=10)
    assert _until(lambda: any(e["hash"] for e in cli(d, "ls", "--tier", "nvme")))
    c.advance_clock(11)
    assert _until(lambda: cli(d, "ls", "--limit", "100") == [])
    assert cli(d, "ttl", "--clear", "--namespace", "default", "--all")["entries"] == 0
    c.close()


def test_advance_clock_refused_without_debug_clock(daemon):
    with Client(daemon.url) as c, pytest.raises(errors.PermissionDenied):
        c.advance_clock(10)


def test_pins_survive_capacity_pressure_and_soft_pins_end(tmp_path):
    d = start_daemon(tmp_path, "--ram-capacity", "16KiB", env=CLOCK)  # 16 chunks of 1 KiB
    try:
        c = Client(d.url, model="m", layout=LAYOUT)
        c.put_many([(h(i), data(i)) for i in range(6)], pin=True)  # hard pins at put
        c.put_many([(h(i), data(i)) for i in range(6, 8)])
        assert cli(d, "pin", "--namespace", "default", "--hash", h(6).hex(), "--hash", h(7).hex())["entries"] == 2
        c.put_many([(h(i), data(i)) for i in range(8, 10)])
        assert cli(d, "pin", "--for", "30", "--namespace", "default", "--hash", h(8).hex(),
                   "--hash", h(9).hex())["entries"] == 2
        c.put_many([(h(i), data(i)) for i in range(100, 160)])  # pressure: 60 more chunks
        pinned = cli(d, "ls", "--pinned", "--tier", "ram", "--limit", "100")
        assert len(pinned) == 10 and c.lookup([h(i) for i in range(10)]).hits == 10
        r = cli(d, "evict", "--yes", "--namespace", "default", "--all")
        assert int(r["skipped_pinned"]) == 10
        c.advance_clock(31)  # the soft pins' lease ends
        assert _until(lambda: len(cli(d, "ls", "--pinned")) == 8)
        # a live shrink keeps the hard pins and evicts the rest
        c.put_many([(h(i), data(i)) for i in range(200, 206)])
        r = cli(d, "capacity", "ram", "8KiB", "--yes")
        ram = next(t for t in r["tiers"] if t["tier"] == "TIER_RAM")
        assert int(ram["capacity_bytes"]) == 8192 and int(r["evicted_entries"]) >= 6
        assert c.lookup([h(i) for i in range(8)]).hits == 8
        with pytest.raises(errors.ResourceExhausted, match="pinned"):
            c.put(h(999), data(9))  # only pinned entries left, and they fill the tier
        assert cli(d, "unpin", "--namespace", "default", "--all")["entries"] == 8
        assert c.put(h(999), data(9))
        c.close()
    finally:
        d.stop()


def test_async_client_puts_with_ttl_and_pin_over_grpc_and_shared_memory(tmp_path):
    import asyncio

    from kvbucket.clients.sdk import AsyncClient

    d = start_daemon(tmp_path, "--unix-socket", str(tmp_path / "kv.sock"), env=CLOCK)
    try:
        async def main() -> None:
            for url, first in ((d.url, 0), (d.info["unix_url"], 10)):
                async with AsyncClient(url, namespace="ns1", model="m", layout=LAYOUT) as c:
                    assert await c.put_many([(h(first), data(first))], ttl_seconds=60) == [True]
                    assert await c.put_many([(h(first + 1), data(first + 1))], pin=True) == [True]
                    r = await c.reserve([(h(first + 2), LAYOUT.chunk_bytes)], ttl_seconds=30, ttl_sliding=True)
                    r.views[0][:] = data(first + 2)
                    assert await r.commit() == [True]

        asyncio.run(main())
        for first in (0, 10):
            (a,) = cli(d, "inspect", h(first).hex(), "--namespace", "ns1", "--model", "m")
            assert a["ttl_seconds"] == 60 and a["expires_at"] > 0 and not a["pinned"]
            (b,) = cli(d, "inspect", h(first + 1).hex(), "--namespace", "ns1", "--model", "m")
            assert b["pinned"] and not b.get("expires_at")
            (c,) = cli(d, "inspect", h(first + 2).hex(), "--namespace", "ns1", "--model", "m")
            assert c["ttl_seconds"] == 30 and c["ttl_sliding"]
    finally:
        d.stop()

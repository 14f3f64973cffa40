"""`ram.prefault`: the RAM tier's memory is faulted in at start, and chunks put while the cache fills
up are received into it (core/buffers.py `prefault_heap`). Measured by the daemon's resident memory:
with prefault it holds the tier's capacity from the start and does not grow with the puts; without it,
the control, it grows by what was put."""

from __future__ import annotations

import numpy as np

from kvbucket import Client, Layout

from daemon import start_daemon

LAYOUT = Layout("bfloat16", (2, 2, 256, 8, 128), tokens_per_chunk=256)  # 2 MiB chunks
CAPACITY = 512 << 20
PUT = 128  # chunks: 256 MiB


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    raise AssertionError("no VmRSS")


def put_and_measure(d) -> int:
    """Put PUT distinct chunks over the socket and read some back; the daemon's RSS growth."""
    chunks = [np.full(LAYOUT.chunk_bytes, i, dtype=np.uint8) for i in range(PUT)]
    before = rss(d.proc.pid)
    with Client(d.url, model="m", layout=LAYOUT) as c:
        for i in range(0, PUT, 16):
            assert c.put_many([(b"p%d" % j, chunks[j]) for j in range(i, i + 16)]) == [True] * 16
        for j in (0, PUT // 2, PUT - 1):
            assert bytes(c.get(b"p%d" % j)) == chunks[j].tobytes()
    return rss(d.proc.pid) - before


def test_a_prefaulted_ram_tier_holds_its_memory_from_the_start_and_puts_land_in_it(tmp_path):
    d = start_daemon(tmp_path, "--ram-capacity", str(CAPACITY), "--ram-prefault")
    try:
        assert d.info["ram_prefaulted"] >= CAPACITY
        assert rss(d.proc.pid) >= CAPACITY
        assert put_and_measure(d) < 64 << 20  # 256 MiB stored in memory faulted in at start
        assert "of heap faulted in at start" in d.log()
    finally:
        d.stop()


def test_without_prefault_the_daemon_grows_with_what_is_put(tmp_path):
    d = start_daemon(tmp_path, "--ram-capacity", str(CAPACITY))
    try:
        assert d.info["ram_prefaulted"] == 0
        assert put_and_measure(d) > 200 << 20
    finally:
        d.stop()

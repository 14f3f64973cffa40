"""RocksTier: conformance, restart recovery from meta rows, kill -9, corruption, capacity, bad paths."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import rocksdict

from kvbucket.core.errors import DataLoss, InvalidArgument, ResourceExhausted, Unavailable
from kvbucket.server.tiers.rocks import RocksTier
from kvbucket.tests.server.tier_conformance import TierConformance, make_entry, make_key


class TestRocksTierConformance(TierConformance):
    @pytest.fixture
    async def tier(self, tmp_path):
        t = RocksTier(tmp_path / "db", capacity_bytes=64 << 20)
        yield t
        await t.close()


class TestRocksTierSmallPartsConformance(TierConformance):
    """Every record spans many parts (and an 8 MiB one spans 2048)."""

    @pytest.fixture
    async def tier(self, tmp_path):
        t = RocksTier(tmp_path / "db", capacity_bytes=64 << 20, part_bytes=4096)
        yield t
        await t.close()


def raw_db(path) -> rocksdict.Rdict:
    return rocksdict.Rdict(str(path), rocksdict.Options(raw_mode=True))


async def test_restart_recovers_every_committed_chunk_from_meta_rows(tmp_path):
    path = tmp_path / "db"
    t = RocksTier(path, 64 << 20, part_bytes=8192)
    want = {}
    for i in range(60):
        key = make_key(i)
        record, meta, raw = make_entry(key, 1000 + 700 * i, seed=i)
        await t.put(key, record, meta)
        want[key] = (record, raw)
    t.set_meta(make_key(3), pinned=True, expires_at=123.0)
    before = t.stats()
    await t.close()

    t = RocksTier(path, 64 << 20, part_bytes=8192)
    try:
        after = t.stats()
        assert (after.entries, after.bytes) == (before.entries, before.bytes)
        assert after.extra["recovered_entries"] == 60
        assert (t.meta(make_key(3)).pinned, t.meta(make_key(3)).expires_at) == (True, 123.0)
        for key, (record, raw) in want.items():
            got = await t.get(key)
            assert got is not None and got.header == record.header and bytes(got.raw()) == raw
    finally:
        await t.close()


async def test_index_is_built_without_reading_payloads(tmp_path):
    """Delete every data row behind the tier's back: the index still lists all entries (it read only
    meta rows); a get then finds parts missing, deletes the entry and counts it corrupt."""
    path = tmp_path / "db"
    t = RocksTier(path, 64 << 20)
    for i in range(5):
        record, meta, _ = make_entry(make_key(i), 3000, seed=i)
        await t.put(make_key(i), record, meta)
    await t.close()
    db = raw_db(path)
    for k in [k for k in db.keys() if k.startswith(b"D")]:
        del db[k]
    db.close()

    t = RocksTier(path, 64 << 20)
    try:
        assert t.contains([make_key(i) for i in range(5)]) == [True] * 5
        assert await t.get(make_key(0)) is None
        assert t.stats().extra["corrupt"] == 1
        assert t.meta(make_key(0)) is None
    finally:
        await t.close()


_WRITER = textwrap.dedent("""
    import asyncio, sys
    from kvbucket.server.tiers.rocks import RocksTier
    from kvbucket.tests.server.tier_conformance import make_entry, make_key

    async def main(path):
        # a small memtable so that flushes (the durability points) happen during the stream
        t = RocksTier(path, 1 << 40, part_bytes=16 << 10, write_buffer_bytes=1 << 20)
        i = 0
        while True:
            record, meta, _ = make_entry(make_key(i), 20_000 + (i % 7) * 9000, seed=i)
            await t.put(make_key(i), record, meta)
            print(i, flush=True)
            i += 1

    asyncio.run(main(sys.argv[1]))
""")


def kill_writer_after(path, n_puts: int) -> int:
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    last = -1
    try:
        for line in proc.stdout:
            last = int(line)
            if last >= n_puts:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert last >= n_puts, f"the writer stopped after {last} puts"
    return last


async def test_kill_9_during_puts_leaves_every_chunk_whole_or_absent(tmp_path):
    path = tmp_path / "db"
    last = kill_writer_after(path, 300)
    t = RocksTier(path, 1 << 40, part_bytes=16 << 10)
    try:
        present = [m.key for m in [m async for m in t.scan()]]
        assert 0 < len(present) <= last + 2  # flushed memtables survived; the unflushed tail may not
        for key in present:
            i = int.from_bytes(key.hash, "big")
            _, _, raw = make_entry(key, 20_000 + (i % 7) * 9000, seed=i)
            got = await t.get(key)
            assert got is not None, f"chunk {i} is indexed but unreadable"
            assert bytes(got.raw()) == raw  # checksum verified and the exact bytes
        assert t.stats().extra["corrupt"] == 0
    finally:
        await t.close()


async def test_flipped_payload_byte_is_never_a_good_record(tmp_path):
    path = tmp_path / "db"
    t = RocksTier(path, 64 << 20, part_bytes=4096)
    key = make_key(1)
    record, meta, raw = make_entry(key, 20_000, seed=1)
    await t.put(key, record, meta)
    await t.close()
    db = raw_db(path)
    part = next(k for k in db.keys() if k.startswith(b"D") and k.endswith(b"\x00\x00\x00\x02"))
    value = bytearray(db[part])
    value[100] ^= 0x40
    db[part] = bytes(value)
    db.close()

    t = RocksTier(path, 64 << 20, part_bytes=4096)
    try:
        got = await t.get(key)  # the tier returns it; the store verifies the checksum
        assert got is not None
        with pytest.raises(DataLoss):
            got.raw()
    finally:
        await t.close()


async def test_flipped_header_byte_deletes_the_entry(tmp_path):
    path = tmp_path / "db"
    t = RocksTier(path, 64 << 20)
    key = make_key(1)
    record, meta, _ = make_entry(key, 5000, seed=1)
    await t.put(key, record, meta)
    await t.close()
    db = raw_db(path)
    part0 = next(k for k in db.keys() if k.startswith(b"D"))
    value = bytearray(db[part0])
    value[20] ^= 0x01  # inside the header (raw length field)
    db[part0] = bytes(value)
    db.close()

    t = RocksTier(path, 64 << 20)
    try:
        assert await t.get(key) is None
        assert t.stats().extra["corrupt"] == 1
        assert t.meta(key) is None
    finally:
        await t.close()
    t = RocksTier(path, 64 << 20)
    try:
        assert t.meta(key) is None  # the delete was persisted by close()
    finally:
        await t.close()


async def test_capacity_evicts_least_recent_and_skips_pinned(tmp_path):
    t = RocksTier(tmp_path / "db", capacity_bytes=5 * 4200)
    try:
        keys = [make_key(i) for i in range(6)]
        for i, key in enumerate(keys[:5]):
            record, meta, _ = make_entry(key, 4096, seed=i)
            assert await t.put(key, record, meta) == []
        t.set_meta(keys[0], pinned=True)
        t.touch(keys[1], time.time())
        record, meta, _ = make_entry(keys[5], 4096, seed=5)
        evicted = await t.put(keys[5], record, meta)
        # put 0 1 2 3 4; pin 0; touch 1; put 5 -> evict 2
        assert [e.key for e in evicted] == [keys[2]]
        assert evicted[0].meta.raw_bytes == 4096
        with pytest.raises(DataLoss):
            evicted[0].record.raw()  # a placeholder: NVMe entries are not demoted, their bytes not read
        assert t.meta(keys[2]) is None and await t.get(keys[2]) is None
        assert t.stats().evictions == 1
        assert t.stats().bytes <= t.capacity_bytes
        with pytest.raises(ResourceExhausted):
            await t.put(make_key(99), *make_entry(make_key(99), 64 << 10)[:2])
        assert t.meta(make_key(99)) is None
    finally:
        await t.close()


async def test_reopen_with_smaller_capacity_trims(tmp_path):
    path = tmp_path / "db"
    t = RocksTier(path, 1 << 30)
    for i in range(10):
        await t.put(make_key(i), *make_entry(make_key(i), 4096, seed=i)[:2])
    await t.close()
    t = RocksTier(path, 3 * 4200)
    try:
        assert t.stats().entries == 3
        assert t.stats().bytes <= 3 * 4200
    finally:
        await t.close()


async def test_unwritable_path_is_unavailable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"not a directory")
    with pytest.raises(Unavailable, match="cannot open"):
        RocksTier(blocker / "db", 1 << 20)


def test_unknown_policy_is_invalid(tmp_path):
    with pytest.raises(InvalidArgument, match="lru"):
        RocksTier(tmp_path / "db", 1 << 20, policy="nope")


_FULL_DISK = textwrap.dedent("""
    import asyncio, resource, signal, sys
    from kvbucket.core.errors import Unavailable
    from kvbucket.server.tiers.rocks import RocksTier
    from kvbucket.tests.server.tier_conformance import make_entry, make_key

    async def main(path):
        t = RocksTier(path, 1 << 40, write_buffer_bytes=1 << 20)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))
        for i in range(400):
            try:
                await t.put(make_key(i), *make_entry(make_key(i), 64 << 10, seed=i)[:2])
            except Unavailable as exc:
                print("unavailable", i, exc, flush=True)
                break
        else:
            print("no error", flush=True)
        try:
            await t.close()
        except Unavailable:
            pass
        print("alive", flush=True)

    asyncio.run(main(sys.argv[1]))
""")


def test_disk_full_makes_put_unavailable_not_a_crash(tmp_path):
    """RLIMIT_FSIZE stands in for a full disk: RocksDB's flush fails, puts raise Unavailable."""
    out = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path / "db")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "unavailable" in out.stdout and "alive" in out.stdout, out.stdout

"""Durable tiers: RocksTier write/read of 32 MiB chunks, RocksTier restart time, S3Tier against moto_server.

    python benchmarks/bench_tiers.py --dir /tmp/kvb-bench --chunks 32

Baselines measured in the same run, on the same directory and bytes:
- `memcpy`: copying one 32 MiB chunk into a warm buffer (the ceiling of any in-process path);
- `rocksdict raw`: the same parts written/read straight through rocksdict (WAL off, one WriteBatch
  per chunk, MultiGet) with none of the tier's bookkeeping;
- `file write+fsync / read`: one file per chunk in the same directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from kvbucket.core.buffers import tune_malloc
from kvbucket.core.codecs import Codec
from kvbucket.core.keys import EntryKey, Layout
from kvbucket.core.record import make_record
from kvbucket.server.tiers.base import EntryMeta
from kvbucket.server.tiers.rocks import RocksTier
from kvbucket.server.tiers.s3 import S3Tier

LAYOUT = Layout("bfloat16", (32, 2, 256, 8, 128), tokens_per_chunk=256)


def chunk_bytes(seed: int, nbytes: int) -> bytes:
    """bf16-like KV: small normal values, as bf16 (the top half of float32)."""
    f = np.random.default_rng(seed).standard_normal(nbytes // 2, dtype=np.float32) * 0.05
    return (f.view(np.uint32) >> 16).astype(np.uint16).tobytes()


def key_of(i: int) -> EntryKey:
    return EntryKey("bench", "bench-model", LAYOUT.fingerprint(), i.to_bytes(8, "big"))


def entry(i: int, raw: bytes, layout: Layout = LAYOUT, codec: Codec = Codec.NONE):
    rec = make_record(raw, layout.dtype, layout.shape, layout.tokens_per_chunk, codec)
    h = rec.header
    meta = EntryMeta(
        key_of(i),
        h.tokens,
        h.raw_length,
        h.payload_length,
        h.codec,
        time.time(),
        time.time(),
        dtype=h.dtype,
        shape=h.shape,
    )
    return rec, meta


def summarize(name: str, seconds: list[float], nbytes: int) -> tuple:
    total = sum(seconds)
    q = statistics.quantiles(seconds, n=100) if len(seconds) > 1 else [seconds[0]] * 99
    return (name, len(seconds), nbytes * len(seconds) / total / 1e9, q[49] * 1e3, q[98] * 1e3)


def print_table(title: str, header: tuple, rows: list[tuple]) -> None:
    print(f"\n{title}")
    print("  ".join(f"{h:>14}" if i else f"{h:<34}" for i, h in enumerate(header)))
    for r in rows:
        print(
            "  ".join(
                f"{v:>14.3f}" if isinstance(v, float) else (f"{v:>14}" if i else f"{v:<34}") for i, v in enumerate(r)
            )
        )


# ---- baselines -----------------------------------------------------------------------------------


def bench_memcpy(raws: list[bytes]) -> tuple:
    dst = bytearray(len(raws[0]))
    times = []
    for raw in raws:
        t0 = time.perf_counter()
        dst[:] = raw
        times.append(time.perf_counter() - t0)
    return summarize("memcpy 32 MiB (warm dst)", times, len(raws[0]))


def bench_rocksdict_raw(path: Path, raws: list[bytes], part: int) -> list[tuple]:
    import rocksdict as rd

    opts = rd.Options(raw_mode=True)
    opts.set_compression_type(rd.DBCompressionType.none())
    opts.set_write_buffer_size(128 << 20)
    opts.set_max_write_buffer_number(4)
    db = rd.Rdict(str(path), opts)
    wo = rd.WriteOptions()
    wo.disable_wal = True
    ro = rd.ReadOptions()
    ro.set_verify_checksums(False)
    puts, gets = [], []
    for i, raw in enumerate(raws):
        t0 = time.perf_counter()
        wb = rd.WriteBatch(raw_mode=True)
        for j in range(0, len(raw), part):
            wb.put(i.to_bytes(8, "big") + j.to_bytes(8, "big"), raw[j : j + part])
        db.write(wb, wo)
        puts.append(time.perf_counter() - t0)
    for i, raw in enumerate(raws):
        t0 = time.perf_counter()
        got = b"".join(
            db.get([i.to_bytes(8, "big") + j.to_bytes(8, "big") for j in range(0, len(raw), part)], read_opt=ro)
        )
        gets.append(time.perf_counter() - t0)
        assert len(got) == len(raw)
    db.close()
    n = len(raws[0])
    return [summarize("rocksdict raw put (1 MiB parts)", puts, n), summarize("rocksdict raw get (MultiGet)", gets, n)]


def bench_files(path: Path, raws: list[bytes]) -> list[tuple]:
    path.mkdir(parents=True, exist_ok=True)
    puts, gets = [], []
    for i, raw in enumerate(raws):
        t0 = time.perf_counter()
        with open(path / str(i), "wb") as f:
            f.write(raw)
            os.fsync(f.fileno())
        puts.append(time.perf_counter() - t0)
    for i, raw in enumerate(raws):
        t0 = time.perf_counter()
        got = (path / str(i)).read_bytes()
        gets.append(time.perf_counter() - t0)
        assert len(got) == len(raw)
    n = len(raws[0])
    return [summarize("file write+fsync", puts, n), summarize("file read (page cache)", gets, n)]


# ---- RocksTier ---------------------------------------------------------------------------------


async def bench_rocks(path: Path, raws: list[bytes], part: int) -> list[tuple]:
    tier = RocksTier(path, capacity_bytes=1 << 40, part_bytes=part)
    entries = [entry(i, raw) for i, raw in enumerate(raws)]
    puts, gets, verified = [], [], []
    t_all = time.perf_counter()
    for i, (rec, meta) in enumerate(entries):
        t0 = time.perf_counter()
        await tier.put(key_of(i), rec, meta)
        puts.append(time.perf_counter() - t0)
    wall = time.perf_counter() - t_all
    t0 = time.perf_counter()
    await tier.flush()
    flush_s = time.perf_counter() - t0
    for _ in range(2):  # second pass is the warm read
        gets.clear()
        for i in range(len(raws)):
            t0 = time.perf_counter()
            rec = await tier.get(key_of(i))
            gets.append(time.perf_counter() - t0)
            assert rec is not None
    out = bytearray(len(raws[0]))
    for i in range(len(raws)):
        t0 = time.perf_counter()
        rec = await tier.get(key_of(i))
        rec.raw(out)  # the checksum the store verifies
        verified.append(time.perf_counter() - t0)
    await tier.close()
    n = len(raws[0])
    rows = [
        summarize("RocksTier put", puts, n),
        summarize("RocksTier get (warm)", gets, n),
        summarize("RocksTier get + checksum", verified, n),
    ]
    rows.append(
        (
            f"  put wall incl. flush ({flush_s * 1e3:.0f} ms)",
            len(raws),
            n * len(raws) / (wall + flush_s) / 1e9,
            0.0,
            0.0,
        )
    )
    return rows


async def bench_restart(path: Path, counts: list[int]) -> list[tuple]:
    small = Layout("bfloat16", (2, 16, 2, 64), tokens_per_chunk=16)  # 8 KiB chunks
    raw = chunk_bytes(0, small.chunk_bytes)
    rows = []
    for count in counts:
        shutil.rmtree(path, ignore_errors=True)
        tier = RocksTier(path, capacity_bytes=1 << 40)
        t0 = time.perf_counter()
        for start in range(0, count, 256):
            await asyncio.gather(
                *(tier.put(key_of(i), *entry(i, raw, small)) for i in range(start, min(count, start + 256)))
            )
        fill = time.perf_counter() - t0
        await tier.close()
        for attempt in ("1st", "2nd"):  # the 2nd open finds the LSM tree compacted by the 1st session
            t0 = time.perf_counter()
            tier = RocksTier(path, capacity_bytes=1 << 40)
            open_s = time.perf_counter() - t0
            assert tier.stats().entries == count
            rows.append(
                (
                    f"{count} chunks of 8 KiB, {attempt} open",
                    count,
                    open_s * 1e3,
                    tier.stats().extra["open_seconds"] * 1e3,
                    count / fill,
                )
            )
            await tier.close()
    return rows


# ---- S3Tier ------------------------------------------------------------------------------------


async def bench_s3(endpoint: str, raws: list[bytes]) -> list[tuple]:
    rows = []
    n = len(raws[0])
    for codec in (None, Codec.ZSTD):
        tier = await S3Tier(
            f"bench-{os.getpid()}-{codec}".lower().replace(".", "-"),
            endpoint_url=endpoint,
            access_key="x",
            secret_key="y",
            codec=codec,
            manifest_refresh_s=0,
            timeout_s=60,
            create_bucket=True,
        ).open()
        puts, gets = [], []
        for i, raw in enumerate(raws):
            rec, meta = entry(i, raw)
            t0 = time.perf_counter()
            await tier.put(key_of(i), rec, meta)
            puts.append(time.perf_counter() - t0)
        for i in range(len(raws)):
            t0 = time.perf_counter()
            rec = await tier.get(key_of(i))
            gets.append(time.perf_counter() - t0)
            assert rec is not None
        stored = tier.stats().bytes / len(raws)
        await tier.close()
        name = "raw" if codec is None else f"{codec.name.lower()}, ratio {n / stored:.2f}"
        rows += [summarize(f"S3Tier put ({name})", puts, n), summarize(f"S3Tier get ({name})", gets, n)]
    return rows


class MotoServer:
    """moto_server on a free port (the tests' fixture does the same; a benchmark imports no tests)."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.endpoint, timeout=0.5).close()
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"moto_server did not start on {self.endpoint}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/kvbucket-bench-tiers", help="scratch directory (deleted first)")
    ap.add_argument("--chunks", type=int, default=32, help="32 MiB chunks for the NVMe write/read runs")
    ap.add_argument("--part-bytes", type=int, default=1 << 20)
    ap.add_argument("--restart-counts", default="1000,10000,100000")
    ap.add_argument("--s3-chunks", type=int, default=6, help="32 MiB chunks for S3 (moto is slow; 0 skips)")
    ap.add_argument("--no-tune-malloc", action="store_true")
    args = ap.parse_args()
    if not args.no_tune_malloc:
        tune_malloc()
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    raws = [chunk_bytes(i, LAYOUT.chunk_bytes) for i in range(args.chunks)]
    print(
        f"chunk: {LAYOUT.dtype} {LAYOUT.shape} = {LAYOUT.chunk_bytes / 2**20:.0f} MiB; "
        f"{args.chunks} chunks; parts of {args.part_bytes >> 10} KiB; dir {root}"
    )
    header = ("what", "n", "GB/s", "p50 ms", "p99 ms")
    rows = [bench_memcpy(raws)]
    rows += bench_files(root / "files", raws)
    rows += bench_rocksdict_raw(root / "raw", raws, args.part_bytes)
    rows += asyncio.run(bench_rocks(root / "tier", raws, args.part_bytes))
    print_table("NVMe: 32 MiB chunks, sequential, one client", header, rows)

    counts = [int(c) for c in args.restart_counts.split(",") if c]
    restart = asyncio.run(bench_restart(root / "restart", counts))
    print_table(
        "NVMe restart: RocksTier(...) after close()", ("what", "entries", "open ms", "index ms", "fill puts/s"), restart
    )

    if args.s3_chunks:
        server = MotoServer()
        try:
            s3 = asyncio.run(bench_s3(server.endpoint, raws[: args.s3_chunks]))
        finally:
            server.stop()
        print_table(f"S3 (moto_server at {server.endpoint}): 32 MiB chunks, sequential", header, s3)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The floor under a shared-memory put: what copying chunks into the arena costs before any request.

A put into a cache writes each chunk where nothing has just been written (the cache keeps what it
stored), and vouches for what landed (a checksum). `bench_core`'s goal ratio for the shared-memory PUT
rows divides by a memcpy into one warm buffer. This measures, in one process, per chunk of random
bytes (the same 2 MiB and 32 MiB Llama-3-8B shapes, 16 sources per size as `bench_core` has; 2 MiB
also sixteen to a call, as `put_many` of a list hands them over):

  - `memcpy, warm`: into one buffer written again and again (`bench_core`'s `memcpy` limit);
  - `memcpy, fresh slot`: numpy's copy into the next slot of a pre-faulted shared mapping, as a
    put's slot is;
  - `stream_copy, fresh slot`: the same with non-temporal stores (clients/_streamcopy.c);
  - `xxh3 of a source`: the checksum alone;
  - `copy, then xxh3`: numpy's copy, then the slot hashed (two passes);
  - `copy_hash` (clients/shm.py), what a get does: each chunk copied and hashed in one pass
    (`copy_xxh3`, clients/_streamcopy.c), a batch's alternate chunks on a worker thread;
  - `copy_hash, two passes`: as it runs where the C copy is not built (also a put's copy there): 256
    KiB copied, then hashed from L2, a worker thread copying part (a chunk over 4 MiB, every other
    chunk of a batch);
  - `copy_hash, split` (2 MiB, one to a call): the worker copying the last 60% of the chunk too;
  - `stream_hash` (clients/shm.py, what the SDK's puts do): `copy_xxh3` with non-temporal stores, a
    batch's alternate chunks on the worker; over 4 MiB, this thread copies the first 10% and hashes
    all of it in one pass, the worker copying the rest meanwhile;
  - `hash, then stream_copy`: what a chunk's put on the calling thread alone did before `copy_xxh3`:
    each 256 KiB source piece hashed, then copied from L2 with non-temporal stores.

Each is printed with its ratio to the warm memcpy: the put function's is the ceiling a shared-memory
put can reach against `bench_core`'s goal, before its request, the daemon and the reply.

    .venv/bin/python benchmarks/bench_copy.py                  # ~30 s
    .venv/bin/python benchmarks/bench_copy.py --json copy.json
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import time
from collections.abc import Callable

import numpy as np
import xxhash

from kvbucket.clients import shm
from kvbucket.clients.hashing import PIECE, copy_behind

RUNS = [("2 MiB", 2 << 20, 1), ("2 MiB, 16 to a call", 2 << 20, 16), ("32 MiB", 32 << 20, 1)]
SOURCES = 16
SPLIT_HEAD = 0.4  # of a split chunk, what the caller copies and hashes (copy_hash's HEAD_SHARE)


class Slots:
    """A pre-faulted shared mapping cut into slots of one size, handed out in turn (like the daemon's
    arena, whose free slots are ones no recent put wrote)."""

    def __init__(self, size: int, total: int) -> None:
        self.size, self.count = size, max(total // size, 2)
        self._fd = os.memfd_create("kvbucket-bench-copy")
        os.ftruncate(self._fd, self.size * self.count)
        self._mm = mmap.mmap(self._fd, self.size * self.count, mmap.MAP_SHARED | mmap.MAP_POPULATE)
        self._arr = np.frombuffer(self._mm, dtype=np.uint8)
        self._next = 0

    def take(self) -> memoryview:
        i, self._next = self._next, (self._next + 1) % self.count
        return memoryview(self._arr[i * self.size : (i + 1) * self.size])

    def close(self) -> None:
        del self._arr
        self._mm.close()
        os.close(self._fd)


def split_copy_hash(dst: memoryview, src: memoryview) -> int:
    cut = int(len(src) * SPLIT_HEAD) // shm.FUSED * shm.FUSED
    tail = copy_behind(dst[cut:], src[cut:])
    h = xxhash.xxh3_64()
    for off in range(0, cut, shm.FUSED):
        dst[off : off + shm.FUSED] = src[off : off + shm.FUSED]
        h.update(dst[off : off + shm.FUSED])
    tail.result()
    h.update(dst[cut:])
    return h.intdigest()


def hash_then_stream(dst: memoryview, src: memoryview) -> int:
    h = xxhash.xxh3_64()
    for off in range(0, len(src), shm.FUSED):
        h.update(src[off : off + shm.FUSED])
        shm.stream_copy(dst[off : off + shm.FUSED], src[off : off + shm.FUSED])
    return h.intdigest()


def two_passes(pairs: list[tuple[memoryview, memoryview]]) -> list[int]:
    saved, shm.copy_xxh3 = shm.copy_xxh3, None
    try:
        return shm.copy_hash(pairs)
    finally:
        shm.copy_xxh3 = saved


def cases(warm: memoryview, slots: Slots, batch: int) -> dict[str, Callable[[list[memoryview]], list | None]]:
    """Each takes a call's sources and returns their checksums (None: it takes none)."""

    def memcpy_warm(srcs):
        for src in srcs:
            warm[:] = src

    def memcpy_fresh(srcs):
        for src in srcs:
            slots.take()[:] = src

    def stream_fresh(srcs):
        for src in srcs:
            shm.stream_copy(slots.take(), src)

    def hash_sources(srcs):
        return [xxhash.xxh3_64_intdigest(src) for src in srcs]

    def copy_then_hash(srcs):
        sums = []
        for src in srcs:
            dst = slots.take()
            dst[:] = src
            sums.append(xxhash.xxh3_64_intdigest(dst))
        return sums

    out = {
        "memcpy, warm": memcpy_warm,
        "memcpy, fresh slot": memcpy_fresh,
        "stream_copy, fresh slot": stream_fresh,
        "xxh3 of a source": hash_sources,
        "copy, then xxh3": copy_then_hash,
        "copy_hash": lambda srcs: shm.copy_hash([(slots.take(), src) for src in srcs]),
        "copy_hash, two passes": lambda srcs: two_passes([(slots.take(), src) for src in srcs]),
        "copy_hash, split": lambda srcs: [split_copy_hash(slots.take(), src) for src in srcs],
        "stream_hash": lambda srcs: shm.stream_hash([(slots.take(), src) for src in srcs]),
        "hash, then stream_copy": lambda srcs: [hash_then_stream(slots.take(), src) for src in srcs],
    }
    if batch > 1 or slots.size > PIECE:  # copy_hash splits those itself
        del out["copy_hash, split"]
    if batch > 1 or slots.size > PIECE:  # a stream puts one to a call; a larger chunk is split anyway
        del out["hash, then stream_copy"]
    if shm.stream_copy is None:
        for name in ("stream_copy, fresh slot", "stream_hash", "hash, then stream_copy"):
            out.pop(name, None)
    return out


def measure(size: int, batch: int, rounds: int, arena_bytes: int) -> dict[str, list[float]]:
    """Per-chunk seconds of each case: a call's time over its chunks."""
    rng = np.random.default_rng(0)
    sources = [memoryview(rng.integers(0, 256, size, dtype=np.uint8)) for _ in range(SOURCES)]
    want = [xxhash.xxh3_64_intdigest(s) for s in sources]
    warm = memoryview(np.ones(size, dtype=np.uint8))
    slots = Slots(size, arena_bytes)
    try:
        fns = cases(warm, slots, batch)
        times: dict[str, list[float]] = {name: [] for name in fns}
        for r in range(rounds + 1):  # round 0 warms up, not counted
            for name, fn in fns.items():  # interleaved: load from other jobs falls on every case alike
                for i in range(0, SOURCES, batch):
                    t0 = time.perf_counter()
                    got = fn(sources[i : i + batch])
                    dt = time.perf_counter() - t0
                    if got is not None and got != want[i : i + batch]:
                        raise RuntimeError(f"{name}: checksums {got} for sources whose xxh3 are {want[i : i + batch]}")
                    if r:
                        times[name].append(dt / batch)
        return times
    finally:
        slots.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20, help="passes over the 16 sources per case (default 20)")
    ap.add_argument("--arena-mib", type=int, default=1024, help="size of the mapping slots rotate through")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    report = {
        "rounds": args.rounds,
        "sources": SOURCES,
        "arena_mib": args.arena_mib,
        "stream_copy_stores": shm.STREAM_STORES,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "runs": {},
    }
    print(f"clients/_streamcopy.c: {shm.STREAM_STORES or 'not built'} stores")
    for label, size, batch in RUNS:
        times = measure(size, batch, args.rounds, args.arena_mib << 20)
        base = float(np.median(times["memcpy, warm"]))
        print(f"\n{label}: {len(times['memcpy, warm'])} chunks per case")
        print(f"  {'case':24s} {'p50 us':>8s} {'p99 us':>8s} {'GB/s':>6s}  vs memcpy, warm")
        rows = {}
        for name, ts in times.items():
            p50, p99 = float(np.median(ts)), float(np.percentile(ts, 99))
            rows[name] = {"p50_us": p50 * 1e6, "p99_us": p99 * 1e6, "gbps": size / p50 / 1e9, "vs_warm": base / p50}
            print(f"  {name:24s} {p50 * 1e6:8.0f} {p99 * 1e6:8.0f} {size / p50 / 1e9:6.2f}  {base / p50:5.2f}x")
        report["runs"][label] = rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

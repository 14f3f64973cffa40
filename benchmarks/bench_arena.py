"""The shared-memory arena's allocator under churn of mixed chunk sizes.

`Extents` (server/arena.py) hands out slots for puts. With chunks of one size every free extent fits
the next one; with several (models with different layouts, partial chunks, 4 KiB-32 MiB) the free
list fragments and the cost of finding a fitting extent shows. This churns an 8 GiB extent space:
200,000 allocations of 4 KiB, 64 KiB, 2 MiB or 32 MiB (one in ten of any size up to 8 MiB), freeing a
random live one 45% of the time and whenever 20,000 are live, and reports the allocation time and how
many free extents are left.

    .venv/bin/python benchmarks/bench_arena.py
"""

from __future__ import annotations

import random
import time

from kvbucket.server.arena import Extents

SIZES = [4 << 10, 64 << 10, 2 << 20, 32 << 20]


def main() -> int:
    e = Extents(0, 8 << 30)
    rng = random.Random(0)
    live: list[int] = []
    times = []
    for _ in range(200_000):
        if live and (len(live) > 20_000 or rng.random() < 0.45):
            e.free(live.pop(rng.randrange(len(live))))
        n = rng.choice(SIZES) if rng.random() < 0.9 else rng.randrange(1, 8 << 20)
        t = time.perf_counter()
        off = e.alloc(n)
        times.append(time.perf_counter() - t)
        if off is not None:
            live.append(off)
    times.sort()
    pct = lambda q: times[min(len(times) - 1, int(len(times) * q))] * 1e6  # noqa: E731
    print(f"alloc p50 {pct(0.5):.1f} us  p99 {pct(0.99):.1f} us  max {times[-1] * 1e3:.2f} ms; "
          f"{len(e._starts):,} free extents, {len(live):,} live slots")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

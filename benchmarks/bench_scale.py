"""A daemon filling up to a million entries: what stalls its event loop as the index grows.

Starts a `kvbucket serve` process (RAM tier) and puts tiny uint8 (64,) chunks with `put_many` of
5,000 over the fast wire, up to `--entries`. At each tenth of the way it reports the fill rate, the
slowest `put_many` of that tenth (a stall of the daemon shows there first), 300 single puts' p50 / p99
/ max, 300 lookups of 128 keys' p99, the slowest of three `ListEntries` pages of 100 (what
`kvbucket ls` asks for), and, from the daemon's metrics, its full garbage collections
so far: how many, their total pause and the largest pause's histogram bucket
(`kvbucket_gc_full_collection_seconds`). `--no-gc-freeze` runs the daemon with `gc_freeze = false`
(server/gcfreeze.py) for the comparison.

    .venv/bin/python benchmarks/bench_scale.py                    # ~2 min
    .venv/bin/python benchmarks/bench_scale.py --no-gc-freeze
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import _load_daemon_helpers  # noqa: E402, I001  (a sibling script, not a package)

from kvbucket.clients.sdk import Client  # noqa: E402
from kvbucket.core.keys import Layout  # noqa: E402

TINY = Layout("uint8", (64,), tokens_per_chunk=16)
BATCH = 5000
LOOKUP_KEYS = 128


def gc_pauses(metrics_url: str) -> tuple[int, float, float]:
    """(full collections, their total seconds, the upper bound of the largest pause's bucket)."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    count = total = 0.0
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith("kvbucket_gc_full_collection_seconds_count"):
            count = float(line.rsplit(" ", 1)[1])
        elif line.startswith("kvbucket_gc_full_collection_seconds_sum"):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith("kvbucket_gc_full_collection_seconds_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
    largest = next((le for le, n in sorted(buckets) if n >= count), float("inf")) if count else 0.0
    return int(count), total, largest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--no-gc-freeze", action="store_true", help="the daemon with gc_freeze = false")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)

    env = {"KVBUCKET_GC_FREEZE": "false"} if args.no_gc_freeze else {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="kvbucket-bench-scale-") as tmp:
        d = _load_daemon_helpers().start_daemon(Path(tmp), "--ram-capacity", "8GiB", env=env)
        try:
            kv = Client(d.url, model="bench/tiny", layout=TINY, timeout=300)
            value = bytes(range(64))
            step = max(BATCH, args.entries // 10 // BATCH * BATCH)
            print(f"gc_freeze {'off' if args.no_gc_freeze else 'on'}; {args.entries:,} entries, put_many of {BATCH:,}")
            print(f"{'entries':>10} {'puts/s':>8} {'slowest put_many s':>19} {'put p50/p99/max ms':>20} "
                  f"{'lookup p99 ms':>14} {'ls page ms':>11} {'full GCs':>9} {'GC s':>6} {'largest GC <= s':>16}")
            n = 0
            while n < args.entries:
                target = min(n + step, args.entries)
                t0, slowest = time.perf_counter(), 0.0
                while n < target:
                    k = min(BATCH, target - n)
                    items = [(i.to_bytes(16, "big"), value) for i in range(n, n + k)]
                    t1 = time.perf_counter()
                    if not all(kv.put_many(items)):
                        raise RuntimeError("the daemon refused a tiny put")
                    slowest = max(slowest, time.perf_counter() - t1)
                    n += k
                rate = (target - (rows[-1]["entries"] if rows else 0)) / (time.perf_counter() - t0)
                puts = []
                for j in range(300):  # single puts of new keys, as an engine stores one chunk
                    t1 = time.perf_counter()
                    kv.put(b"p" + j.to_bytes(8, "big") + n.to_bytes(7, "big"), value)
                    puts.append(time.perf_counter() - t1)
                present = [i.to_bytes(16, "big") for i in range(0, n, max(1, n // LOOKUP_KEYS))][:LOOKUP_KEYS]
                lookups = []
                for _ in range(300):
                    t1 = time.perf_counter()
                    kv.lookup(present)
                    lookups.append(time.perf_counter() - t1)
                pages = []
                for _ in range(3):
                    t1 = time.perf_counter()
                    kv.list_page(page_size=100)
                    pages.append(time.perf_counter() - t1)
                gcs, gc_s, largest = gc_pauses(d.metrics_url)
                row = {"entries": n, "puts_per_s": rate, "slowest_put_many_s": slowest,
                       "put_ms": [float(np.percentile(puts, q)) * 1e3 for q in (50, 99, 100)],
                       "lookup_p99_ms": float(np.percentile(lookups, 99)) * 1e3, "list_page_ms": max(pages) * 1e3,
                       "full_gcs": gcs, "gc_seconds": gc_s, "largest_gc_le_s": largest}
                rows.append(row)
                p = row["put_ms"]
                print(f"{n:>10,} {rate:>8.0f} {slowest:>19.2f} {p[0]:>6.2f}/{p[1]:>5.2f}/{p[2]:>6.1f} "
                      f"{row['lookup_p99_ms']:>14.2f} {row['list_page_ms']:>11.1f} {gcs:>9} {gc_s:>6.2f} "
                      f"{largest:>16g}", flush=True)
            kv.close()
        finally:
            d.stop()
    if args.json:
        Path(args.json).write_text(json.dumps({"gc_freeze": not args.no_gc_freeze, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

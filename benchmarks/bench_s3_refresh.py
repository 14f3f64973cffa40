"""What an S3 tier's manifest refresh costs the daemon's event loop at large sizes, in one process.

Every `manifest_refresh_seconds` the S3 tier lists its bucket (server/tiers/s3.py `refresh`) and
brings its sorted key index (what `scan` and `kvbucket ls` read) to what the listing found. This
measures that update, synchronous on the event loop, on an index of `--entries` keys after a
listing in which other daemons added and removed `--changed` entries each:

  - `update by differences`: `S3Tier._reorder`, what a refresh does;
  - `rebuild`: the whole index made again from the listing (what a refresh did before, and still
    does when over a quarter of the entries changed);
  - `byte total`: the sum of stored bytes a refresh recomputes.

The listing itself (1,000 objects per ListObjectsV2 page, each page parsed between awaits) is not
measured here: it needs an S3 server holding the objects.

    .venv/bin/python benchmarks/bench_s3_refresh.py                      # 1M entries, ~1 minute
    .venv/bin/python benchmarks/bench_s3_refresh.py --entries 100000 --changed 1000
"""

from __future__ import annotations

import argparse
import os
import time

from sortedcontainers import SortedList

from kvbucket.core.codecs import Codec
from kvbucket.core.keys import EntryKey
from kvbucket.server.tiers.base import EntryMeta
from kvbucket.server.tiers.s3 import S3Tier


def key() -> EntryKey:
    return EntryKey("team-a", "org/llama-3-8b", "0123456789abcdef", os.urandom(16))


def meta(k: EntryKey) -> EntryMeta:
    return EntryMeta(k, 16, 2 << 20, 2 << 20, Codec.NONE, 0.0, 0.0)


def measure(entries: int, changed: int) -> dict[str, float]:
    keys = [key() for _ in range(entries)]
    tier = S3Tier("bench", endpoint_url="http://127.0.0.1:9")  # never opened: no client, no listing
    tier._manifest = {k: meta(k) for k in keys}
    tier._by_bytes = {k.to_bytes(): k for k in keys}
    tier._order = SortedList(tier._by_bytes)
    listed = dict(tier._manifest)
    for k in keys[:changed]:  # removed by another daemon
        del listed[k]
    new = [key() for _ in range(changed)]  # written by another daemon
    listed.update((k, meta(k)) for k in new)
    seen = {id(m) for k, m in tier._manifest.items() if k in listed}  # gathered page by page, in a refresh

    t0 = time.perf_counter()
    tier._reorder(listed, new, seen)
    t1 = time.perf_counter()
    total = sum(m.stored_bytes for m in listed.values())
    t2 = time.perf_counter()
    by_bytes = {k.to_bytes(): k for k in listed}
    order = SortedList(by_bytes)
    t3 = time.perf_counter()
    if list(tier._order) != list(order) or total != len(listed) * (2 << 20):
        raise RuntimeError("the index updated by differences is not the rebuilt one")
    return {"update by differences": t1 - t0, "byte total": t2 - t1, "rebuild": t3 - t2}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--changed", type=int, default=100, help="entries added and removed by others each")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    print(f"{args.entries:,} entries, {args.changed:,} added and {args.changed:,} removed by a listing")
    for run in range(args.runs):
        got = measure(args.entries, args.changed)
        print(f"  run {run + 1}: " + ", ".join(f"{k} {v * 1e3:,.0f} ms" for k, v in got.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

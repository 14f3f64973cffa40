"""A cache filling up: puts over the fast wire into an empty RAM tier, with and without `--ram-prefault`.

A daemon without a shared-memory arena (the default TCP deployment) receives each new chunk into
freshly allocated heap memory, and every 4 KiB page of it faults on first touch. `ram.prefault`
faults the tier's memory in at start instead (core/buffers.py `prefault_heap`). Each round starts
one daemon of each kind in turn (order alternating between rounds; one at a time, so neither takes
memory the other would fault in: on a VM, pages never touched since boot fault slower still), puts
`--chunks` new keys of each size into it, one chunk per call, through the SDK's blocking `Client`,
and stops it.
Payloads are random bytes shaped like Llama-3-8B bf16 KV: 32 MiB (256 tokens) and 2 MiB (16).
Prints p50 / p99 per put, GB/s per pass (GB = 1e9 B), and the prefault / default ratio.

    .venv/bin/python benchmarks/bench_fill.py              # ~1 minute; a daemon of 4 GiB at a time
    .venv/bin/python benchmarks/bench_fill.py --json out.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydantic import ByteSize, TypeAdapter

from kvbucket.clients.sdk import Client
from kvbucket.core.keys import Layout

REPO = Path(__file__).resolve().parent.parent
SHAPES = {"32MiB": (32, 2, 256, 8, 128), "2MiB": (32, 2, 16, 8, 128)}


def _daemon_helpers():
    spec = importlib.util.spec_from_file_location("kvbucket_tests_daemon", REPO / "tests" / "daemon.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def put_pass(client: Client, tag: str, payloads: list[np.ndarray]) -> tuple[list[float], float]:
    lat = []
    t0 = time.perf_counter()
    for i, p in enumerate(payloads):
        t = time.perf_counter()
        if not client.put(f"{tag}-{i}".encode(), p):
            raise RuntimeError("the daemon refused a put")
        lat.append(time.perf_counter() - t)
    return lat, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--capacity", default="4GiB", help="each daemon's RAM tier (every put must fit)")
    ap.add_argument("--chunks", type=int, default=24, help="32 MiB chunks per pass (2 MiB: 16x as many)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    sets = {"32MiB": [rng.integers(0, 256, 32 << 20, dtype=np.uint8) for _ in range(args.chunks)],
            "2MiB": [rng.integers(0, 256, 2 << 20, dtype=np.uint8) for _ in range(args.chunks * 16)]}
    need = sum(p.nbytes for ps in sets.values() for p in ps)
    if need > TypeAdapter(ByteSize).validate_python(args.capacity):
        ap.error(f"{need >> 20} MiB are put into each daemon: raise --capacity (a full tier evicts, and "
                 "reuses warm memory either way) or lower --chunks")
    daemons = _daemon_helpers()
    modes = {"default": [], "prefault": ["--ram-prefault"]}
    lat = {(label, m): [] for label in sets for m in modes}
    walls = {(label, m): [] for label in sets for m in modes}
    starts = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="bench-fill-") as tmp:
        for r in range(args.rounds):
            for m in (list(modes) if r % 2 == 0 else list(reversed(modes))):
                t0 = time.perf_counter()
                d = daemons.start_daemon(Path(tmp) / f"{m}{r}", "--ram-capacity", args.capacity, *modes[m],
                                         timeout=120)
                starts[m].append(time.perf_counter() - t0)
                try:
                    for label, payloads in sets.items():
                        layout = Layout("bfloat16", SHAPES[label], tokens_per_chunk=SHAPES[label][2])
                        with Client(d.url, model="bench", layout=layout) as c:
                            got, wall = put_pass(c, label, payloads)
                        lat[(label, m)] += got
                        walls[(label, m)].append(wall)
                        print(f"round {r} {m:8} {label:5}: {sum(p.nbytes for p in payloads) / wall / 1e9:.2f} GB/s",
                              file=sys.stderr)
                finally:
                    d.stop()
    results = {}
    for (label, m), got in lat.items():
        nbytes = sum(p.nbytes for p in sets[label])
        wall = statistics.median(walls[(label, m)])
        results[(label, m)] = dict(chunk=label, daemon=m, puts=len(got), p50_ms=1e3 * pct(got, 0.5),
                                   p99_ms=1e3 * pct(got, 0.99), gbps=nbytes / wall / 1e9,
                                   start_s=statistics.median(starts[m]))
    print(f"\n{'chunk':6} {'daemon':9} {'puts':>5} {'p50 ms':>8} {'p99 ms':>8} {'GB/s':>6} {'start s':>8}")
    for r in results.values():
        print(f"{r['chunk']:6} {r['daemon']:9} {r['puts']:5d} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['gbps']:6.2f} "
              f"{r['start_s']:8.1f}")
    print("\nprefault / default, same run:")
    for label in sets:
        a, b = results[(label, "default")], results[(label, "prefault")]
        print(f"  {label}: throughput {b['gbps'] / a['gbps']:.2f}x, p50 {a['p50_ms']:.2f} -> {b['p50_ms']:.2f} ms")
    if args.json:
        args.json.write_text(json.dumps(list(results.values()), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The daemon's own cost of storing a chunk, without a client, a socket or the client's copy.

The end-to-end rows of `bench_core.py` are bounded by the client's copy and checksum and by this
machine's noise; what one daemon serves for a whole node of vLLM workers is bounded by its event
loop's CPU per chunk. This starts a daemon in this process (`Daemon(settings).start()`: its RAM tier,
arena, catalog, TTLs, quotas and metrics as `kvbucket serve` has them) and calls its ShmPut handler
directly, as the fast wire would: each call stores `--per-call` chunks from the caller's slot pool
(hashed_in_slot checksums, so the daemon never reads the bytes -- what the SDK sends) and asks for as
many slots back. The chunks' keys are deleted between calls, outside the timing, so the arena never
fills. Prints p50 / p99 wall time and the CPU time per stored chunk.

    .venv/bin/python benchmarks/bench_daemon_put.py                    # ~10 s
    .venv/bin/python benchmarks/bench_daemon_put.py --json out.json

To compare two versions of the daemon, run it from each checkout, alternating (the machine's noise
between runs is larger than most single changes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time

import numpy as np

from kvbucket.core.keys import EntryKey
from kvbucket.proto import store_pb2 as pb
from kvbucket.server.app import Daemon
from kvbucket.server.settings import Settings

SHAPE = (32, 2, 16, 8, 128)  # 2 MiB of bf16: Llama-3-8B, 16 tokens
CHUNK = int(np.prod(SHAPE)) * 2


class _Context:
    """What the handler uses of a gRPC context: no token (the daemon runs without auth)."""

    def invocation_metadata(self):
        return ()


async def run(per_call: int, calls: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(port=0, metrics_port=-1, data_dir=tmp, ram={"capacity": 1 << 30},
                            shm={"size": 1 << 30}, fast={"enabled": False})
        daemon = Daemon(settings)
        await daemon.start()
        try:
            return await _measure(daemon, per_call, calls, warmup)
        finally:
            await daemon.stop()


async def _measure(daemon: Daemon, per_call: int, calls: int, warmup: int) -> dict:
    shm, ctx = daemon.shm, _Context()
    layout = pb.Layout(dtype="bfloat16", shape=SHAPE, tokens_per_chunk=SHAPE[2])
    scope = pb.Scope(model="bench/m", layout=layout)
    reply = await shm.ShmPut(pb.ShmPutRequest(pool=0, refill=[CHUNK] * per_call), ctx)
    pool, offsets = reply.pool, [s.offset for s in reply.slots]
    caller = daemon.shm.data._caller(ctx)
    wall, cpu = [], []
    for i in range(warmup + calls):
        hashes = [os.urandom(16) for _ in range(per_call)]
        request = pb.ShmPutRequest(pool=pool, offsets=offsets, refill=[CHUNK] * per_call, hashed_in_slot=True)
        for h in hashes:
            request.chunks.add(scope=scope, hash=h, codec=pb.CODEC_NONE, raw_length=CHUNK, payload_length=CHUNK,
                               tokens=SHAPE[2], dtype="bfloat16", shape=SHAPE, checksum=1)
        c0, t0 = time.process_time(), time.perf_counter()
        reply = await shm.ShmPut(request, ctx)
        t1, c1 = time.perf_counter(), time.process_time()
        if not all(r.stored for r in reply.results) or any(s.fallback for s in reply.slots):
            raise RuntimeError(f"call {i}: a chunk was not stored or no slot came back: {reply}")
        offsets = [s.offset for s in reply.slots]
        if i >= warmup:
            wall.append((t1 - t0) / per_call)
            cpu.append((c1 - c0) / per_call)
        key = daemon.shm.data.check_header(caller, request.chunks[0])[0]
        for h in hashes:
            await daemon.store.delete(EntryKey(key.namespace, key.model, key.layout, h))
    w = np.array(wall) * 1e6
    return {"per_call": per_call, "calls": calls, "p50_us": float(np.median(w)), "p99_us": float(np.percentile(w, 99)),
            "cpu_us": float(np.mean(cpu) * 1e6)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000, help="timed ShmPut calls per row")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    rows = []
    print(f"{'chunks per call':>16} {'p50 us/chunk':>13} {'p99 us/chunk':>13} {'CPU us/chunk':>13}")
    for per_call in (1, 16):
        calls = max(args.calls // per_call, 50)
        row = asyncio.run(run(per_call, calls, max(args.warmup // per_call, 10)))
        rows.append(row)
        print(f"{per_call:>16} {row['p50_us']:>13.1f} {row['p99_us']:>13.1f} {row['cpu_us']:>13.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": {"started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "python": sys.version.split()[0]},
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()

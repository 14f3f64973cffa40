"""The daemon's own cost of storing a chunk, without a client, a socket or the client's copy.

The end-to-end rows of `bench_core.py` are bounded by the client's copy and checksum and by this
machine's noise; what one daemon serves for a whole node of vLLM workers is bounded by its event
loop's CPU per chunk. This starts a daemon in this process (`Daemon(settings).start()`: its RAM tier,
arena, catalog, TTLs, quotas and metrics as `kvbucket serve` has them) and calls its ShmPut handler
directly, as the fast wire would: each call stores `--per-call` chunks from the caller's slot pool
(hashed_in_slot checksums, so the daemon never reads the bytes -- what the SDK sends) and asks for as
many slots back. The chunks' keys are deleted between calls, outside the timing, so the arena never
fills. Prints p50 / p99 wall time and the CPU time per stored chunk, for 2 MiB chunks and for
4 KiB ones (whose bytes cost nothing anywhere, so what is left is the per-chunk work).

Then the whole call: a `kvbucket serve` process and the SDK's blocking `Client` putting 4 KiB chunks
through shared memory over the fast wire, one and sixteen per call; the daemon's CPU per chunk is read
from /proc. Against the handler's rows above, the difference is what receiving, framing and
answering a call costs the daemon.

    .venv/bin/python benchmarks/bench_daemon_put.py                    # ~20 s
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
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import _load_daemon_helpers  # noqa: E402, I001  (a sibling script, not a package)
from kvbucket.clients.sdk import Client  # noqa: E402
from kvbucket.core.keys import EntryKey, Layout  # noqa: E402
from kvbucket.proto import store_pb2 as pb  # noqa: E402
from kvbucket.server.app import Daemon  # noqa: E402
from kvbucket.server.settings import Settings  # noqa: E402

SHAPES = {"2MiB": (32, 2, 16, 8, 128), "4KiB": (1, 1, 16, 1, 128)}  # bf16; Llama-3-8B's KV of 16 tokens, and a sliver


class _Context:
    """What the handler uses of a gRPC context: no token (the daemon runs without auth)."""

    def invocation_metadata(self):
        return ()


async def run(shape: tuple[int, ...], per_call: int, calls: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(port=0, metrics_port=-1, data_dir=tmp, ram={"capacity": 1 << 30},
                            shm={"size": 1 << 30}, fast={"enabled": False})
        daemon = Daemon(settings)
        await daemon.start()
        try:
            return await _measure(daemon, shape, per_call, calls, warmup)
        finally:
            await daemon.stop()


async def _measure(daemon: Daemon, shape: tuple[int, ...], per_call: int, calls: int, warmup: int) -> dict:
    shm, ctx = daemon.shm, _Context()
    chunk = int(np.prod(shape)) * 2
    layout = pb.Layout(dtype="bfloat16", shape=shape, tokens_per_chunk=shape[2])
    scope = pb.Scope(model="bench/m", layout=layout)
    reply = await shm.ShmPut(pb.ShmPutRequest(pool=0, refill=[chunk] * per_call), ctx)
    pool, offsets = reply.pool, [s.offset for s in reply.slots]
    caller = daemon.shm.data._caller(ctx)
    wall, cpu = [], []
    for i in range(warmup + calls):
        hashes = [os.urandom(16) for _ in range(per_call)]
        request = pb.ShmPutRequest(pool=pool, offsets=offsets, refill=[chunk] * per_call, hashed_in_slot=True)
        for h in hashes:
            request.chunks.add(scope=scope, hash=h, codec=pb.CODEC_NONE, raw_length=chunk, payload_length=chunk,
                               tokens=shape[2], dtype="bfloat16", shape=shape, checksum=1)
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
    return {"path": "handler", "chunk": f"{chunk >> 10} KiB", "per_call": per_call, "calls": calls,
            "p50_us": float(np.median(w)), "p99_us": float(np.percentile(w, 99)), "cpu_us": float(np.mean(cpu) * 1e6)}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def over_the_wire(chunks: int) -> list[dict]:
    """4 KiB puts through a daemon process, by the SDK over its unix socket (shared memory + fast wire)."""
    shape = SHAPES["4KiB"]
    layout = Layout("bfloat16", shape, tokens_per_chunk=shape[2])
    data = np.zeros(layout.chunk_bytes, np.uint8)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sock = Path(tmp) / "kv.sock"
        d = _load_daemon_helpers().start_daemon(Path(tmp), "--ram-capacity", "1GiB", "--shm-size", "1GiB",
                                           "--unix-socket", str(sock))
        try:
            with Client(f"kvbucket+unix://{sock}", model="bench/m", layout=layout) as kv:
                if kv.transport() != "shm":
                    raise RuntimeError(f"the client moves chunks by {kv.transport()!r}, not shared memory")
                for per_call in (1, 16):
                    for _ in range(200 // per_call):  # warm up
                        kv.put_many([(os.urandom(16), data) for _ in range(per_call)])
                    calls = max(chunks // per_call, 50)
                    c0, t0 = _cpu_seconds(d.proc.pid), time.perf_counter()
                    for _ in range(calls):
                        if not all(kv.put_many([(os.urandom(16), data) for _ in range(per_call)])):
                            raise RuntimeError("a chunk was not stored")
                    t1, c1 = time.perf_counter(), _cpu_seconds(d.proc.pid)
                    n = calls * per_call
                    rows.append({"path": "fast wire", "chunk": "4 KiB", "per_call": per_call, "calls": calls,
                                 "wall_us": (t1 - t0) / n * 1e6, "cpu_us": (c1 - c0) / n * 1e6})
        finally:
            d.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000, help="timed ShmPut calls per handler row")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--wire-chunks", type=int, default=5000, help="chunks per row through a daemon process")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    rows = []
    print("The daemon's ShmPut handler, in its process (no client):")
    print(f"{'chunk':>7} {'per call':>9} {'p50 us/chunk':>13} {'p99 us/chunk':>13} {'CPU us/chunk':>13}")
    for shape in SHAPES.values():
        for per_call in (1, 16):
            calls = max(args.calls // per_call, 50)
            row = asyncio.run(run(shape, per_call, calls, max(args.warmup // per_call, 10)))
            rows.append(row)
            print(f"{row['chunk']:>7} {per_call:>9} {row['p50_us']:>13.1f} {row['p99_us']:>13.1f} "
                  f"{row['cpu_us']:>13.1f}", flush=True)
    print("\nThe whole call: the SDK's Client over the fast wire and shared memory, the daemon in its own process:")
    print(f"{'chunk':>7} {'per call':>9} {'wall us/chunk':>14} {'daemon CPU us/chunk':>20}")
    for row in over_the_wire(args.wire_chunks):
        rows.append(row)
        print(f"{row['chunk']:>7} {row['per_call']:>9} {row['wall_us']:>14.1f} {row['cpu_us']:>20.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": {"started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "python": sys.version.split()[0]},
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()

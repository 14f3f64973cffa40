"""Core data-plane benchmark: kvbucket vs LMCache's own server, with the machine's physical limits.

One run, same payloads for every system:
  - kvbucket daemon (`kvbucket serve`, RAM tier) over loopback TCP through the SDK `Client`: by its
    default, the fast wire (`kvbucket TCP fast wire`), and with `fast=False`, gRPC (`kvbucket TCP gRPC`);
  - LMCache's server (`python -m lmcache.v1.server 127.0.0.1 PORT cpu`) through LMCache's own
    connector (`CreateConnector("lm://...")` with a CPU `LocalCPUBackend`), what an LMCache user runs;
  - memcpy into a warm buffer and Python loopback TCP (sendall / recv_into, 4 MiB) as ceilings, and
    memcpy into one buffer per payload, like get_into's (`memcpy, n bufs`): one buffer written again
    and again stays in this machine's 300 MiB L3, n of them (512 MiB at 32 MiB) do not;
  - the same daemon through its unix socket: `kvbucket unix-socket gRPC` (shm=False, fast=False) and
    `kvbucket shm` (the shared-memory arena, `--shm-size`): put (one ShmPut round trip through the
    client's slot pool), get into a buffer (one ShmGet round trip, copy out, verify), and get_views
    (a verified read-only view, no copy), a stream (put_many of a generator: one ShmPut per chunk,
    each sent before the previous reply is read); for 2 MiB chunks also 16 chunks per put_many /
    get_many. The fast wire's `PUT stream` is put_many of a generator there (pipelined PUTs): what
    LMCache's PUT pass is too (it sends without waiting for a reply).

Payloads are random bytes (incompressible, like the mantissa bytes of real bf16 KV) shaped like
Llama-3-8B KV chunks: (32 layers, 2, 256 tokens, 8 kv heads, 128) bf16 = 32 MiB, and the same
model at 16 tokens per chunk = 2 MiB. Chunks move one per call, sequentially, `--rounds` times with
fresh keys each round; within a round every system makes its pass before the next round starts, so
load from other jobs on a shared machine falls on all of them alike. Throughput is bytes / wall time
of a whole pass (GB = 1e9 bytes); p50/p99 are per chunk (16 chunks x 3 rounds: p99 is about the
max). CPU s/GB is user+system time of the client process plus the server process over the pass, per
GB moved. Every key is new. LMCache's server faults in fresh memory for what it stores; kvbucket's
daemon runs with a pre-faulted arena (`--shm-size`, what a same-host deployment has), and its gRPC
Put receives into free arena slots too -- a daemon without an arena allocates per put, as LMCache does.

LMCache's PUT has no reply: its per-chunk time is the client's send; the pass ends when an EXIST
round trip on the last key succeeds (the server handles one connection in order), so the pass
throughput counts bytes the server has stored.

    .venv/bin/python benchmarks/bench_core.py                 # 1-3 minutes
    .venv/bin/python benchmarks/bench_core.py --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil

from kvbucket.clients.sdk import Client
from kvbucket.core.buffers import tune_malloc
from kvbucket.core.keys import Layout

REPO = Path(__file__).resolve().parent.parent
BIG_SHAPE = (32, 2, 256, 8, 128)  # Llama-3-8B, 256 tokens, bf16: 32 MiB
SMALL_SHAPE = (32, 2, 16, 8, 128)  # the same model, 16 tokens: 2 MiB
LOOKUP_KEYS = 128


def _load_daemon_helpers():
    spec = importlib.util.spec_from_file_location("kvbucket_tests_daemon", REPO / "tests" / "daemon.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


# -- measurement helpers -----------------------------------------------------------------------


@dataclass
class Row:
    system: str
    op: str
    chunk_mib: float
    chunks: int
    gbps: float
    p50_ms: float
    p99_ms: float
    cpu_s_per_gb: float | None = None
    client_cpu_s_per_gb: float | None = None
    server_cpu_s_per_gb: float | None = None
    note: str = ""


@dataclass
class Latency:
    system: str
    op: str
    keys: int
    calls: int
    p50_ms: float
    p99_ms: float
    note: str = ""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def cpu_seconds(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    t = proc.cpu_times()
    return t.user + t.system


class Meter:
    """Wall time, per-item latencies and client/server CPU over one pass."""

    def __init__(self, server: psutil.Process | None) -> None:
        self.me = psutil.Process()
        self.server = server
        self.lat: list[float] = []
        self.bytes = 0

    def __enter__(self) -> Meter:
        self.c0, self.s0 = cpu_seconds(self.me), cpu_seconds(self.server)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.t0
        self.client_cpu = cpu_seconds(self.me) - self.c0
        self.server_cpu = cpu_seconds(self.server) - self.s0

    def item(self, t0: float, nbytes: int) -> None:
        self.lat.append(time.perf_counter() - t0)
        self.bytes += nbytes


def summarize(system: str, op: str, chunk: int, meters: list[Meter], note: str = "") -> Row:
    total = sum(m.bytes for m in meters)
    wall = sum(m.wall for m in meters)
    gb = total / 1e9
    lat = [x for m in meters for x in m.lat]
    c = sum(m.client_cpu for m in meters) / gb
    s = sum(m.server_cpu for m in meters) / gb
    has_server = any(m.server is not None for m in meters)
    return Row(system, op, chunk / (1 << 20), len(lat), gb / wall, pct(lat, 0.5) * 1e3, pct(lat, 0.99) * 1e3,
               c + s, c, s if has_server else None, note)


# -- the systems, each measured one pass at a time so that their passes interleave -----------------
# The machines are shared: load from other jobs comes and goes within seconds. Running every system's
# pass of round r before any pass of round r+1 exposes all of them to the same load.


class Limits:
    """memcpy into a warm buffer or into n of them, and Python loopback TCP (4 MiB sendall -> recv_into,
    a thread here)."""

    BLOCK = 4 << 20

    def __init__(self, chunk: int, n: int = 0) -> None:
        self.dst = np.empty(chunk, dtype=np.uint8)
        self.dst[:] = 1  # warm
        self.dsts = [np.ones(chunk, dtype=np.uint8) for _ in range(n)]  # faulted in, as get_into's (n=0: none)
        srv = socket.create_server(("127.0.0.1", 0))
        self.cli = socket.create_connection(srv.getsockname())
        self.conn, _ = srv.accept()
        srv.close()
        self.pending = 0
        self.lock = threading.Condition()
        threading.Thread(target=self._sink, daemon=True).start()

    def _sink(self) -> None:
        buf = memoryview(bytearray(self.BLOCK))
        while True:
            n = self.conn.recv_into(buf, self.BLOCK)
            if n == 0:
                return
            with self.lock:
                self.pending -= n
                self.lock.notify_all()

    def memcpy_pass(self, payloads: list[np.ndarray]) -> Meter:
        with Meter(None) as m:
            for p in payloads:
                t0 = time.perf_counter()
                np.copyto(self.dst, p)
                m.item(t0, p.nbytes)
        return m

    def memcpy_n_pass(self, payloads: list[np.ndarray]) -> Meter:
        with Meter(None) as m:
            for p, d in zip(payloads, self.dsts):
                t0 = time.perf_counter()
                np.copyto(d, p)
                m.item(t0, p.nbytes)
        return m

    def tcp_pass(self, payloads: list[np.ndarray]) -> Meter:
        with Meter(None) as m:
            for p in payloads:
                t0 = time.perf_counter()
                mv = memoryview(p).cast("B")
                with self.lock:
                    self.pending += len(mv)
                for off in range(0, len(mv), self.BLOCK):
                    self.cli.sendall(mv[off : off + self.BLOCK])
                m.item(t0, p.nbytes)
            with self.lock:  # the pass ends when the receiver has every byte
                self.lock.wait_for(lambda: self.pending <= 0)
        return m

    def close(self) -> None:
        self.cli.close()
        self.conn.close()


def kv_hashes(tag: str, n: int) -> list[bytes]:
    return [f"{tag}-{i}".encode().ljust(16, b"\0") for i in range(n)]


class KVSide:
    """kvbucket through the SDK's blocking Client: loopback TCP, or the unix socket with or without shm."""

    def __init__(self, url: str, server: psutil.Process, shape: tuple[int, ...], frame: int, n: int,
                 shm: bool = False, fast: bool = True) -> None:
        self.server = server
        layout = Layout("bfloat16", shape, tokens_per_chunk=shape[2])
        self.kv = Client(url, model="bench/llama-3-8b", layout=layout, frame_bytes=frame, shm=shm, fast=fast)
        if shm and self.kv.shm_region() is None:
            raise RuntimeError("the shm client did not attach to the daemon's arena")
        if fast and self.kv._fast() is None:
            raise RuntimeError("the client did not reach the daemon's fast wire")
        chunk = 2 * int(np.prod(shape))
        self.outs = [bytearray(chunk) for _ in range(n)]  # warm receive buffers for get_into
        for o in self.outs:
            o[:] = b"\1" * chunk

    def put_pass(self, tag: str, payloads: list[np.ndarray]) -> Meter:
        with Meter(self.server) as m:
            for h, p in zip(kv_hashes(tag, len(payloads)), payloads):
                t0 = time.perf_counter()
                if not self.kv.put(h, p):
                    raise RuntimeError("kvbucket refused a put")
                m.item(t0, p.nbytes)
        return m

    def get_pass(self, tag: str, n: int) -> Meter:
        with Meter(self.server) as m:
            for h in kv_hashes(tag, n):
                t0 = time.perf_counter()
                got = self.kv.get(h)
                m.item(t0, len(got))
                del got
        return m

    def get_into_pass(self, tag: str, payloads: list[np.ndarray]) -> Meter:
        with Meter(self.server) as m:
            for h, o in zip(kv_hashes(tag, len(payloads)), self.outs):
                t0 = time.perf_counter()
                if not self.kv.get_into(h, o):
                    raise RuntimeError("kvbucket missed a chunk it stored")
                m.item(t0, len(o))
        for i, (o, p) in enumerate(zip(self.outs, payloads)):
            if o != memoryview(p).cast("B"):
                raise RuntimeError(f"kvbucket returned different bytes for chunk {i}")
        return m

    def get_view_pass(self, tag: str, payloads: list[np.ndarray]) -> Meter:
        """Client.get_views: a verified read-only view of the arena (no copy), compared after the pass."""
        hashes = kv_hashes(tag, len(payloads))
        with Meter(self.server) as m:
            for h in hashes:
                t0 = time.perf_counter()
                with self.kv.get_views([h]) as views:
                    if views[0] is None:
                        raise RuntimeError("kvbucket missed a chunk it stored")
                    m.item(t0, len(views[0]))
        for i, (h, p) in enumerate(zip(hashes, payloads)):
            with self.kv.get_views([h]) as views:
                if views[0] != memoryview(p).cast("B"):
                    raise RuntimeError(f"kvbucket returned different bytes for chunk {i}")
        return m

    def put_many_pass(self, tag: str, payloads: list[np.ndarray], batch: int) -> Meter:
        """`batch` chunks per put_many call; per-item latency is the call's time (one sample per call)."""
        hashes = kv_hashes(tag, len(payloads))
        with Meter(self.server) as m:
            for i in range(0, len(payloads), batch):
                t0 = time.perf_counter()
                if not all(self.kv.put_many(list(zip(hashes[i : i + batch], payloads[i : i + batch])))):
                    raise RuntimeError("kvbucket refused a put")
                m.item(t0, sum(p.nbytes for p in payloads[i : i + batch]))
        return m

    def put_stream_pass(self, tag: str, payloads: list[np.ndarray]) -> Meter:
        """One put_many of a generator (one ShmPut or fast-wire PUT per chunk, each sent before the last
        one's reply is read); per-item latency is the time between the generator's yields (the last:
        until the call returned)."""
        hashes = kv_hashes(tag, len(payloads))
        marks: list[float] = []

        def items():
            for h, p in zip(hashes, payloads):
                marks.append(time.perf_counter())
                yield h, p

        with Meter(self.server) as m:
            t0 = time.perf_counter()
            if not all(self.kv.put_many(items())):
                raise RuntimeError("kvbucket refused a put")
            marks.append(time.perf_counter())
            for a, b, p in zip([t0] + marks[1:-1], marks[1:], payloads):
                m.lat.append(b - a)
                m.bytes += p.nbytes
        return m

    def get_many_into_pass(self, tag: str, payloads: list[np.ndarray], batch: int) -> Meter:
        hashes = kv_hashes(tag, len(payloads))
        with Meter(self.server) as m:
            for i in range(0, len(payloads), batch):
                t0 = time.perf_counter()
                got = self.kv.get_many(hashes[i : i + batch], out=self.outs[i : i + batch])
                if any(g is None for g in got):
                    raise RuntimeError("kvbucket missed a chunk it stored")
                m.item(t0, sum(len(o) for o in self.outs[i : i + batch]))
        for i, (o, p) in enumerate(zip(self.outs, payloads)):
            if o != memoryview(p).cast("B"):
                raise RuntimeError(f"kvbucket returned different bytes for chunk {i}")
        return m

    def lookup(self, tag: str, system: str, seconds: float = 3) -> Latency:
        hashes = kv_hashes(tag, LOOKUP_KEYS)
        assert self.kv.lookup(hashes).hits == LOOKUP_KEYS
        for _ in range(50):
            self.kv.lookup(hashes)  # warm
        lat = []
        end = time.monotonic() + seconds
        while len(lat) < 2000 and time.monotonic() < end:
            t0 = time.perf_counter()
            self.kv.lookup(hashes)
            lat.append(time.perf_counter() - t0)
        return Latency(system, "Lookup (1 call)", LOOKUP_KEYS, len(lat), pct(lat, 0.5) * 1e3,
                       pct(lat, 0.99) * 1e3, "all 128 present")

    def close(self) -> None:
        self.kv.close()


class LMCacheSide:
    """LMCache's own connector to its own server, on CPU, as an LMCache user would run it."""

    def __init__(self, port: int, server: psutil.Process, max_cpu_gib: float) -> None:
        import torch
        from lmcache.utils import CacheEngineKey
        from lmcache.v1.config import LMCacheEngineConfig
        from lmcache.v1.metadata import LMCacheMetadata
        from lmcache.v1.storage_backend.connector import CreateConnector
        from lmcache.v1.storage_backend.local_cpu_backend import LocalCPUBackend

        self.server = server
        self.torch = torch
        self.Key = CacheEngineKey
        self.loop = asyncio.new_event_loop()
        cfg = LMCacheEngineConfig.from_defaults(chunk_size=256, local_cpu=False, max_local_cpu_size=max_cpu_gib)
        md = LMCacheMetadata(model_name="bench/llama-3-8b", world_size=1, local_world_size=1, worker_id=0,
                             local_worker_id=0, kv_dtype=torch.bfloat16, kv_shape=BIG_SHAPE)
        self.backend = LocalCPUBackend(cfg, md)
        self.conn = CreateConnector(f"lm://127.0.0.1:{port}", self.loop, self.backend, cfg, md)
        self.objs: list = []

    def key(self, tag: str, i: int):
        return self.Key("bench/llama-3-8b", 1, 0, hash((tag, i)), self.torch.bfloat16)

    def load(self, payloads: list[np.ndarray], shape: tuple[int, ...]) -> None:
        """Copy the payloads into LMCache memory objects (its KV_2LTD format: 2, layers, tokens, hidden)."""
        self.release()
        layers, kv, tokens, heads, dim = shape
        lm_shape = self.torch.Size((kv, layers, tokens, heads * dim))
        for p in payloads:
            obj = self.backend.allocate(lm_shape, self.torch.bfloat16)
            memoryview(obj.byte_array).cast("B")[:] = memoryview(p).cast("B")
            self.objs.append(obj)

    def release(self) -> None:
        for obj in self.objs:
            obj.ref_count_down()
        self.objs = []

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def put_pass(self, tag: str) -> Meter:
        keys = [self.key(tag, i) for i in range(len(self.objs))]
        with Meter(self.server) as m:
            for k, obj in zip(keys, self.objs):
                obj.ref_count_up()  # the connector drops one reference per put; we keep the object
                t0 = time.perf_counter()
                self.run(self.conn.put(k, obj))
                m.item(t0, len(obj.byte_array))
            if not self.run(self.conn.exists(keys[-1])):  # the server has taken every byte
                raise RuntimeError("LMCache server lost a put")
        return m

    def get_pass(self, tag: str, payloads: list[np.ndarray]) -> Meter:
        got = []
        with Meter(self.server) as m:
            for i in range(len(payloads)):
                t0 = time.perf_counter()
                obj = self.run(self.conn.get(self.key(tag, i)))
                m.item(t0, len(obj.byte_array))
                got.append(obj)
        for i, (obj, p) in enumerate(zip(got, payloads)):
            if bytes(obj.byte_array) != memoryview(p).cast("B"):
                raise RuntimeError(f"LMCache returned different bytes for chunk {i}")
            obj.ref_count_down()  # back to LMCache's allocator, warm for the next round
        return m

    def prefix_check(self, tag: str, seconds: float = 3) -> Latency:
        keys = [self.key(tag, i) for i in range(LOOKUP_KEYS)]

        async def check() -> int:
            n = 0
            for k in keys:
                if not await self.conn.exists(k):
                    break
                n += 1
            return n

        assert self.run(check()) == LOOKUP_KEYS
        lat = []
        end = time.monotonic() + seconds
        while len(lat) < 300 and time.monotonic() < end:
            t0 = time.perf_counter()
            self.run(check())
            lat.append(time.perf_counter() - t0)
        return Latency("lmcache", "128 x EXIST", LOOKUP_KEYS, len(lat), pct(lat, 0.5) * 1e3, pct(lat, 0.99) * 1e3,
                       "no batched lookup in lm://; one round trip per key")

    def close(self) -> None:
        self.release()
        self.run(self.conn.close())
        self.loop.close()


SHM = "kvbucket shm"
BATCH = 16
UNIX = "kvbucket unix-socket gRPC"
GRPC = "kvbucket TCP gRPC"
FAST = "kvbucket TCP fast wire"


def run_set(label: str, payloads: list[np.ndarray], shape: tuple[int, ...], kv_url: str, kv_server: psutil.Process,
            lm: LMCacheSide | None, frame: int, rounds: int, deadline: float,
            unix_url: str | None = None) -> tuple[list[Row], list[Latency]]:
    chunk = payloads[0].nbytes
    limits = Limits(chunk, len(payloads))
    kv = KVSide(kv_url, kv_server, shape, frame, len(payloads))
    same_host = {GRPC: KVSide(kv_url, kv_server, shape, frame, len(payloads), fast=False)}
    if unix_url:
        same_host[SHM] = KVSide(unix_url, kv_server, shape, frame, len(payloads), shm=True)
        same_host[UNIX] = KVSide(unix_url, kv_server, shape, frame, len(payloads), shm=False, fast=False)
    if lm is not None:
        lm.load(payloads, shape)
    passes: dict[tuple[str, str], list[Meter]] = {}

    def record(system: str, op: str, m: Meter) -> None:
        passes.setdefault((system, op), []).append(m)

    for r in range(rounds):
        if r and time.monotonic() > deadline:
            log(f"{label}: time budget reached after {r} rounds")
            break
        tag = f"{label}-r{r}"
        log(f"{label} round {r + 1}/{rounds}")
        record("limit", "memcpy", limits.memcpy_pass(payloads))
        record("limit", "memcpy, n bufs", limits.memcpy_n_pass(payloads))
        record("limit", "tcp loopback", limits.tcp_pass(payloads))
        record(FAST, "PUT", kv.put_pass(tag, payloads))
        record(FAST, "PUT stream", kv.put_stream_pass(f"{tag}-s", payloads))
        if lm is not None:
            record("lmcache", "PUT", lm.put_pass(tag))
        record(FAST, "GET", kv.get_pass(tag, len(payloads)))
        record(FAST, "GET into", kv.get_into_pass(tag, payloads))
        if lm is not None:
            record("lmcache", "GET", lm.get_pass(tag, payloads))
        for name, side in same_host.items():
            stag = f"{tag}-{name.split()[1]}-{name.split()[-1]}"
            record(name, "PUT", side.put_pass(stag, payloads))
            record(name, "GET", side.get_pass(stag, len(payloads)))
            record(name, "GET into", side.get_into_pass(stag, payloads))
            if name == SHM:
                record(name, "GET view", side.get_view_pass(stag, payloads))
                record(name, "PUT stream", side.put_stream_pass(f"{stag}-s", payloads))
            if name == SHM and len(payloads) >= 64:  # small chunks: the per-call cost, amortized
                record(name, f"PUT x{BATCH}", side.put_many_pass(f"{stag}-b", payloads, BATCH))
                record(name, f"GET into x{BATCH}", side.get_many_into_pass(f"{stag}-b", payloads, BATCH))
    notes = {
        ("limit", "memcpy"): "warm destination",
        ("limit", "memcpy, n bufs"): "one faulted-in destination per payload, as GET into's",
        ("limit", "tcp loopback"): "4 MiB sendall/recv_into, both ends in this process",
        (FAST, "GET"): "fresh result buffer",
        (FAST, "GET into"): "warm caller buffer",
        ("lmcache", "PUT"): "per-chunk p50/p99 = client send; pass ends on EXIST",
        ("lmcache", "GET"): "into LMCache's allocator",
        (SHM, "GET view"): "get_views: read-only view of the arena, xxh3-verified, no copy",
        (FAST, "PUT stream"): "put_many(generator): PUTs pipelined; p50/p99 between chunks",
        (SHM, "PUT stream"): "put_many(generator): ShmPuts pipelined; p50/p99 between chunks",
        (SHM, f"PUT x{BATCH}"): f"put_many of {BATCH}; p50/p99 per call",
        (SHM, f"GET into x{BATCH}"): f"get_many of {BATCH} into warm buffers; p50/p99 per call",
    }
    rows = [summarize(system, op, chunk, ms, notes.get((system, op), "")) for (system, op), ms in passes.items()]
    lookups = []
    if len(payloads) >= LOOKUP_KEYS:
        lookups.append(kv.lookup(f"{label}-r0", FAST))
        lookups.append(same_host[GRPC].lookup(f"{label}-r0", GRPC))
        if lm is not None:
            lookups.append(lm.prefix_check(f"{label}-r0"))
    kv.close()
    for side in same_host.values():
        side.close()
    limits.close()
    if lm is not None:
        lm.release()
    return rows, lookups


def start_lmcache_server(log_path: Path) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lmcache.v1.server", "127.0.0.1", str(port), "cpu"],
                                stdout=log, stderr=subprocess.STDOUT)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"LMCache server exited:\n{log_path.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("LMCache server did not start")


# -- report --------------------------------------------------------------------------------------


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_report(rows: list[Row], lookups: list[Latency], ratios: dict) -> None:
    print(f"\n{'system':25} {'op':15} {'chunk':>7} {'n':>4} {'GB/s':>6} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'CPU s/GB':>9} {'client':>7} {'server':>7}  note")
    for r in rows:
        print(f"{r.system:25} {r.op:15} {r.chunk_mib:>5.0f}Mi {r.chunks:>4} {r.gbps:>6.2f} {r.p50_ms:>8.2f} "
              f"{r.p99_ms:>8.2f} {fmt(r.cpu_s_per_gb, '9.2f')} {fmt(r.client_cpu_s_per_gb, '7.2f')} "
              f"{fmt(r.server_cpu_s_per_gb, '7.2f')}  {r.note}")
    print(f"\n{'system':25} {'lookup':16} {'keys':>5} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8}  note")
    for lk in lookups:
        print(f"{lk.system:25} {lk.op:16} {lk.keys:>5} {lk.calls:>6} {lk.p50_ms:>8.3f} {lk.p99_ms:>8.3f}  {lk.note}")
    for heading, shm in (("over loopback TCP; target PUT >= 3x, GET >= 1x", False),
                         ("through shared memory; target PUT >= 10x, GET >= 2x", True)):
        print(f"\nkvbucket / LMCache, same run, {heading}: throughput (GB/s ratio) and CPU per GB")
        for k, (g, c) in ratios.items():
            if k.startswith("shm:") == shm:
                print(f"  {k:30} {g:5.2f}x throughput   {c:5.2f}x CPU s/GB")
    print("\nkvbucket shm / memcpy, same run (goal >= 0.50), and / memcpy into n buffers:")
    against_n = shm_vs_memcpy(rows, "memcpy, n bufs")
    for k, g in shm_vs_memcpy(rows).items():
        print(f"  {k:22} {g:5.2f}x   {against_n.get(k, float('nan')):5.2f}x")


def shm_vs_memcpy(rows: list[Row], limit: str = "memcpy") -> dict[str, float]:
    by = {(r.system, r.op, r.chunk_mib): r for r in rows}
    out = {}
    for (system, op, mib), r in by.items():
        base = by.get(("limit", limit, mib))
        if system == SHM and base:
            out[f"{op} {mib:.0f} MiB"] = r.gbps / base.gbps
    return out


def compute_ratios(rows: list[Row]) -> dict[str, tuple[float, float]]:
    """kvbucket / LMCache per op and chunk size: (throughput ratio, CPU-per-GB ratio). Every kvbucket
    get (a copy, into the caller's buffer, a view) against LMCache's GET, every put against its PUT."""
    by = {(r.system, r.op, r.chunk_mib): r for r in rows}
    out = {}
    for (system, op, mib), r in by.items():
        base = by.get(("lmcache", "GET" if op.startswith("GET") else "PUT", mib))
        if system in (FAST, GRPC, SHM) and base:
            key = f"{system.removeprefix('kvbucket TCP ').removeprefix('kvbucket ')}: {op} {mib:.0f} MiB"
            out[key] = (r.gbps / base.gbps, r.cpu_s_per_gb / base.cpu_s_per_gb)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--big", type=int, default=16, help="number of 32 MiB chunks (default 16)")
    ap.add_argument("--small", type=int, default=128, help="number of 2 MiB chunks (default 128; >=128 adds Lookup)")
    ap.add_argument("--rounds", type=int, default=3, help="passes per op, fresh keys each (default 3)")
    ap.add_argument("--frame", type=int, default=None, help="kvbucket frame bytes (default: the SDK's)")
    ap.add_argument("--max-seconds", type=float, default=180, help="stop adding rounds after this (default 180)")
    ap.add_argument("--skip-lmcache", action="store_true")
    ap.add_argument("--shm-size", default="8GiB", help="the daemon's arena (default 8GiB: the whole RAM tier)")
    ap.add_argument("--no-shm-catalog", action="store_true",
                    help="the daemon lists no entries for catalog reads: every shm get is a ShmGet round trip")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)

    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    load_before = os.getloadavg()
    tuning = tune_malloc()  # as the daemon does; LMCache's client gets warm buffers from its allocator
    deadline = time.monotonic() + args.max_seconds
    rng = np.random.default_rng(0)
    sets = {}
    if args.big:
        sets["32MiB"] = [rng.integers(0, 256, size=32 << 20, dtype=np.uint8) for _ in range(args.big)]
    if args.small:
        sets["2MiB"] = [rng.integers(0, 256, size=2 << 20, dtype=np.uint8) for _ in range(args.small)]
    rows: list[Row] = []
    lookups: list[Latency] = []
    log(f"payloads ready; malloc tuned: {tuning}")

    from kvbucket.clients import wire

    frame = args.frame or wire.DEFAULT_FRAME
    daemons = _load_daemon_helpers()
    with tempfile.TemporaryDirectory(prefix="bench-core-") as tmp:
        sock = Path(tmp) / "kv.sock"
        extra = ["--no-shm-catalog"] if args.no_shm_catalog else []
        d = daemons.start_daemon(Path(tmp), "--ram-capacity", "8GiB", "--unix-socket", str(sock),
                                 "--shm-size", args.shm_size, *extra, timeout=180)  # populating the arena takes a while
        lm_proc = lm = None
        try:
            if not args.skip_lmcache:
                lm_proc, port = start_lmcache_server(Path(tmp) / "lmcache.log")
                need = 2 * max(sum(p.nbytes for p in ps) for ps in sets.values())  # payloads + results
                lm = LMCacheSide(port, psutil.Process(lm_proc.pid), max(1.0, need / (1 << 30) + 0.5))
            for label, payloads in sets.items():
                shape = BIG_SHAPE if label == "32MiB" else SMALL_SHAPE
                r, lk = run_set(label, payloads, shape, d.url, psutil.Process(d.proc.pid), lm, frame, args.rounds,
                                deadline, unix_url=d.info["unix_url"])
                rows += r
                lookups += lk
        finally:
            if lm is not None:
                lm.close()
            if lm_proc is not None:
                lm_proc.terminate()
                lm_proc.wait(10)
            d.stop()

    systems = ["limit", FAST, GRPC, "lmcache", UNIX, SHM]
    ops = ["memcpy", "memcpy, n bufs", "tcp loopback", "PUT", "PUT stream", "GET", "GET into", "GET view",
           f"PUT x{BATCH}", f"GET into x{BATCH}"]
    rows.sort(key=lambda r: (-r.chunk_mib, systems.index(r.system), ops.index(r.op)))
    ratios = compute_ratios(rows)
    print_report(rows, lookups, ratios)
    load_after = os.getloadavg()
    print(f"\nload average before / after: {load_before[0]:.1f} / {load_after[0]:.1f} on {os.cpu_count()} CPUs")
    if args.json:
        meta = {
            "started": started, "cpus": os.cpu_count(), "python": platform.python_version(),
            "machine": platform.machine(), "malloc_tuned": bool(tuning), "frame_bytes": frame, "rounds": args.rounds,
            "mem_total_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
            "loadavg_1m_before": load_before[0], "loadavg_1m_after": load_after[0],
        }
        Path(args.json).write_text(json.dumps(
            {"meta": meta, "rows": [asdict(r) for r in rows], "lookups": [asdict(x) for x in lookups],
             "ratios": ratios, "shm_vs_memcpy": shm_vs_memcpy(rows),
             "shm_vs_memcpy_n_buffers": shm_vs_memcpy(rows, "memcpy, n bufs")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

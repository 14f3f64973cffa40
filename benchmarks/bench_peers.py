"""kvbucket against its peers and the machine's limits, in one run.

Same payloads for every system (random bytes shaped like Llama-3-8B bf16 KV chunks: 32 MiB =
(32, 2, 256, 8, 128) and 2 MiB = (32, 2, 16, 8, 128)), one chunk per call, sequential:

  - kvbucket gRPC over loopback TCP (the SDK's blocking `Client`);
  - kvbucket gRPC over a unix socket (`kvbucket serve --unix-socket PATH`, `kvbucket+unix://PATH`);
  - kvbucket's shared-memory path, when the SDK has one (`Client(url, shm=True)`), else "not available";
  - LMCache 0.5.6's server (`python -m lmcache.v1.server`) driven by a minimal raw-socket client
    written here from its wire format (header `iiiiiiiii150s`, PUT=1 without reply, GET=2, EXIST=3);
  - Redis (Debian's `redis-server`, started here on 127.0.0.1 and a free port with `--save ''
    --appendonly no`), raw RESP SET / GET from a minimal socket client;
  - memcpy into a warm buffer and Python loopback TCP (4 MiB sendall -> recv_into) as physical limits.

GETs land in a warm caller buffer for every system (`get_into`, `recv_into`), and every GET is checked
byte for byte against what was put. Keys are fresh each round, so every server faults in new memory
for what it stores. Within a round each system makes its pass before the next round starts (shared
machines: load from other jobs falls on all systems alike). CPU s/GB = user+system seconds of this
process plus the server process per GB moved (psutil).

Then: Lookup latency of 128 present keys at 1, 8 and 64 concurrent clients (up to 8 processes, threads
inside them; kvbucket `Lookup`, LMCache 128 x EXIST, Redis one `EXISTS k1..k128`); and how kvbucket's
costs grow with the number of stored entries (tiny uint8 (64,) chunks put with `put_many`): daemon RSS
per entry (/proc), Lookup and Put latency at 1k / 10k / 100k / 1M entries (`--quick`: up to 100k).

    bash benchmarks/setup.sh                                       # redis-server, psutil, lmcache
    .venv/bin/python benchmarks/bench_peers.py --quick             # ~5 minutes
    .venv/bin/python benchmarks/bench_peers.py --json out.json     # with 1M entries: ~15-20 minutes
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import (  # noqa: E402, I001  (a sibling script, not a package)
    BIG_SHAPE, SMALL_SHAPE, KVSide, Limits, Meter, Row, _load_daemon_helpers, log, pct, start_lmcache_server,
    summarize,
)
from kvbucket.clients.sdk import Client  # noqa: E402
from kvbucket.core.buffers import tune_malloc  # noqa: E402
from kvbucket.core.keys import Layout  # noqa: E402

LOOKUP_KEYS = 128
LOOKUP_PAYLOAD = 8192  # bytes per lookup-test entry; lookups never read payloads
MODEL = "bench/llama-3-8b"
TINY = Layout("uint8", (64,), tokens_per_chunk=16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact_into(sock: socket.socket, view: memoryview) -> None:
    while len(view):
        n = sock.recv_into(view)
        if n == 0:
            raise ConnectionError("peer closed the connection")
        view = view[n:]


def hash_of(tag: str, i: int) -> bytes:
    return hashlib.blake2b(f"{tag}-{i}".encode(), digest_size=16).digest()


# -- minimal raw clients of the peers ------------------------------------------------------------


class LMCacheRaw:
    """LMCache's server protocol on a bare socket: header `iiiiiiiii150s` = (command, length, fmt, dtype,
    location, shape0..3, key), reply `iiiiiiiii` = (code, length, fmt, dtype, shape0..3, pad)."""

    HDR = struct.Struct("iiiiiiiii150s")
    REPLY = struct.Struct("iiiiiiiii")
    PUT, GET, EXIST = 1, 2, 3
    KV_2LTD, BF16, OK = 1, 3, 200

    def __init__(self, port: int) -> None:
        self.sock = connect(port)
        self.reply = bytearray(self.REPLY.size)

    @staticmethod
    def key(h: bytes) -> bytes:
        # CacheEngineKey.to_string(): model@world_size@worker_id@chunk_hash_hex@dtype
        return f"{MODEL}@1@0@{h[:8].hex()}@bfloat16".encode().ljust(150)

    def _ask(self, command: int, key: bytes) -> tuple:
        self.sock.sendall(self.HDR.pack(command, 0, self.KV_2LTD, self.BF16, 0, 0, 0, 0, 0, key))
        recv_exact_into(self.sock, memoryview(self.reply))
        return self.REPLY.unpack(self.reply)

    def put(self, key: bytes, data: memoryview, shape4: tuple[int, int, int, int]) -> None:
        self.sock.sendall(self.HDR.pack(self.PUT, len(data), self.KV_2LTD, self.BF16, 0, *shape4, key))
        self.sock.sendall(data)  # no reply

    def get_into(self, key: bytes, out: memoryview) -> bool:
        code, length, *_ = self._ask(self.GET, key)
        if code != self.OK:
            return False
        if length != len(out):
            raise RuntimeError(f"LMCache returned {length} bytes, expected {len(out)}")
        recv_exact_into(self.sock, out)
        return True

    def exists(self, key: bytes) -> bool:
        return self._ask(self.EXIST, key)[0] == self.OK

    def close(self) -> None:
        self.sock.close()


class RedisRaw:
    """RESP2 SET / GET / EXISTS on a bare socket; a GET's payload is received straight into the caller's
    buffer."""

    def __init__(self, port: int) -> None:
        self.sock = connect(port)
        self.buf = bytearray()

    def _line(self) -> bytes:
        while (i := self.buf.find(b"\r\n")) < 0:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line = bytes(self.buf[:i])
        del self.buf[: i + 2]
        return line

    @staticmethod
    def command(*parts: bytes) -> bytes:
        return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)

    def set(self, key: bytes, data: memoryview) -> None:
        self.sock.sendall(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n" % (len(key), key, len(data)))
        self.sock.sendall(data)
        self.sock.sendall(b"\r\n")
        if (line := self._line()) != b"+OK":
            raise RuntimeError(f"redis SET: {line!r}")

    def get_into(self, key: bytes, out: memoryview) -> bool:
        self.sock.sendall(self.command(b"GET", key))
        head = self._line()
        if head == b"$-1":
            return False
        if int(head[1:]) != len(out):
            raise RuntimeError(f"redis returned {head!r}, expected {len(out)} bytes")
        have = min(len(self.buf), len(out))  # bytes already read past the header
        out[:have] = self.buf[:have]
        del self.buf[:have]
        recv_exact_into(self.sock, out[have:])
        if self._line() != b"":
            raise RuntimeError("redis: bulk string not terminated by CRLF")
        return True

    def exists(self, keys: list[bytes]) -> int:
        self.sock.sendall(self.command(b"EXISTS", *keys))
        return int(self._line()[1:])

    def close(self) -> None:
        self.sock.close()


def start_redis(tmp: Path) -> tuple[subprocess.Popen, int]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server not found: run benchmarks/setup.sh")
    port = free_port()
    log_path = tmp / "redis.log"
    cmd = [exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
           "--dir", str(tmp), "--protected-mode", "no", "--logfile", str(log_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    end = time.monotonic() + 20
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited: {log_path.read_text() if log_path.exists() else ''}")
        try:
            r = RedisRaw(port)
            r.sock.sendall(RedisRaw.command(b"PING"))
            if r._line() == b"+PONG":
                r.close()
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


# -- one pass per (system, op), on the same payloads ------------------------------------------------


class RawSide:
    """A peer driven by a raw client: put pass, get-into pass (verified), as KVSide does for kvbucket."""

    def __init__(self, name: str, client, server: psutil.Process, shape: tuple[int, ...], n: int) -> None:
        self.name, self.c, self.server = name, client, server
        layers, kv, tokens, heads, dim = shape
        self.shape4 = (kv, layers, tokens, heads * dim)  # LMCache's KV_2LTD
        chunk = 2 * int(np.prod(shape))
        self.outs = [bytearray(b"\1" * chunk) for _ in range(n)]

    def key(self, tag: str, i: int) -> bytes:
        h = hash_of(tag, i)
        return LMCacheRaw.key(h) if isinstance(self.c, LMCacheRaw) else b"bench:" + h.hex().encode()

    def put_pass(self, tag: str, payloads: list[np.ndarray]) -> Meter:
        with Meter(self.server) as m:
            for i, p in enumerate(payloads):
                t0 = time.perf_counter()
                mv = memoryview(p).cast("B")
                if isinstance(self.c, LMCacheRaw):
                    self.c.put(self.key(tag, i), mv, self.shape4)
                else:
                    self.c.set(self.key(tag, i), mv)
                m.item(t0, p.nbytes)
            if isinstance(self.c, LMCacheRaw) and not self.c.exists(self.key(tag, len(payloads) - 1)):
                raise RuntimeError("LMCache server lost a put")  # one connection, served in order
        return m

    def get_into_pass(self, tag: str, payloads: list[np.ndarray]) -> Meter:
        with Meter(self.server) as m:
            for i, o in enumerate(self.outs[: len(payloads)]):
                t0 = time.perf_counter()
                if not self.c.get_into(self.key(tag, i), memoryview(o)):
                    raise RuntimeError(f"{self.name} missed a chunk it stored")
                m.item(t0, len(o))
        for i, (o, p) in enumerate(zip(self.outs, payloads, strict=False)):
            if o != memoryview(p).cast("B"):
                raise RuntimeError(f"{self.name} returned different bytes for chunk {i}")
        return m


class KVPeer(KVSide):
    """kvbucket through the SDK over a given URL and client options (TCP, unix socket, shm)."""

    def __init__(self, url: str, server: psutil.Process, shape: tuple[int, ...], n: int, **client_kw) -> None:
        self.server = server
        layout = Layout("bfloat16", shape, tokens_per_chunk=shape[2])
        self.kv = Client(url, model=MODEL, layout=layout, **client_kw)
        chunk = 2 * int(np.prod(shape))
        self.outs = [bytearray(b"\1" * chunk) for _ in range(n)]


def shm_options() -> tuple[dict | None, str]:
    """Client options for the shared-memory path, or why there is none in this tree."""
    if "shm" in inspect.signature(Client.__init__).parameters:
        return {"shm": True}, ""
    return None, "not available: this tree's SDK has no Client(url, shm=True)"


def throughput(label: str, payloads: list[np.ndarray], shape: tuple[int, ...], kv_targets: dict, peers: dict,
               rounds: int, deadline: float) -> tuple[list[Row], dict[str, str]]:
    chunk = payloads[0].nbytes
    limits = Limits(chunk)
    sides: dict[str, object] = {}
    unavailable: dict[str, str] = {}
    for name, (url, proc, kw) in kv_targets.items():
        try:
            sides[name] = KVPeer(url, proc, shape, len(payloads), **kw)
            if kw.get("shm") and sides[name].kv.shm_region() is None:  # the SDK fell back to gRPC
                sides.pop(name).close()
                unavailable[name] = "not available: the SDK did not attach to the daemon's arena"
        except Exception as exc:  # an SDK path under construction elsewhere must not sink the run
            unavailable[name] = f"not available: {type(exc).__name__}: {exc}"
    for name, (client, proc) in peers.items():
        sides[name] = RawSide(name, client, proc, shape, len(payloads))
    passes: dict[tuple[str, str], list[Meter]] = {}
    for r in range(rounds):
        if r and time.monotonic() > deadline:
            log(f"{label}: time budget reached after {r} rounds")
            break
        tag = f"{label}-r{r}"
        log(f"{label} round {r + 1}/{rounds}")
        passes.setdefault(("limit", "memcpy"), []).append(limits.memcpy_pass(payloads))
        passes.setdefault(("limit", "tcp loopback"), []).append(limits.tcp_pass(payloads))
        for op in ("PUT", "GET"):
            for name, side in list(sides.items()):
                try:
                    m = side.put_pass(tag, payloads) if op == "PUT" else side.get_into_pass(tag, payloads)
                except Exception as exc:
                    if not name.startswith("kvbucket shm"):
                        raise
                    unavailable[name] = f"failed: {type(exc).__name__}: {exc}"
                    del sides[name]
                    passes = {k: v for k, v in passes.items() if k[0] != name}
                    continue
                passes.setdefault((name, op), []).append(m)
    limits.close()
    for side in sides.values():
        if isinstance(side, KVPeer):
            side.close()
    return [summarize(system, op, chunk, ms) for (system, op), ms in passes.items()], unavailable


# -- Lookup under concurrency: worker processes, threads inside ---------------------------------------


def _lookup_client(system: str, target, keys: list[bytes]):
    """A callable doing one 128-key lookup and returning how many keys were found."""
    if system.startswith("kvbucket"):
        kv = target  # one Client per process, shared by its threads (one HTTP/2 channel)
        return lambda: kv.lookup(keys).hits
    if system == "lmcache raw":
        c = LMCacheRaw(target)

        def prefix() -> int:  # the lm:// protocol has no batch form: one round trip per key
            n = 0
            for k in keys:
                if not c.exists(k):
                    break
                n += 1
            return n
        return prefix
    c = RedisRaw(target)
    return lambda: c.exists(keys)


def _lookup_thread(call, expect: int, start_at: float, seconds: float, lat: list[float], bad: list) -> None:
    if call() != expect:  # also the warm-up call, before the common start
        bad.append(expect)
    time.sleep(max(0.0, start_at - time.time()))
    end = start_at + seconds
    while time.time() < end:
        t0 = time.perf_counter()
        call()
        lat.append(time.perf_counter() - t0)


def _lookup_worker(inq: mp.Queue, outq: mp.Queue) -> None:
    while (task := inq.get()) is not None:
        system, target, keys, threads, start_at, seconds = task
        if system.startswith("kvbucket"):
            target = Client(target, model="bench/lookup", layout=Layout("uint8", (LOOKUP_PAYLOAD,), 16))
        lat: list[list[float]] = [[] for _ in range(threads)]
        bad: list[int] = []
        calls = [_lookup_client(system, target, keys) for _ in range(threads)]
        ts = [threading.Thread(target=_lookup_thread, args=(c, len(keys), start_at, seconds, out, bad))
              for c, out in zip(calls, lat, strict=True)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if system.startswith("kvbucket"):
            target.close()
        outq.put(([x for xs in lat for x in xs], bool(bad)))


@dataclass
class LookupRow:
    system: str
    clients: int
    calls: int
    per_s: float
    p50_ms: float
    p99_ms: float


def lookup_concurrency(targets: dict[str, tuple], levels: list[int], seconds: float) -> list[LookupRow]:
    ctx = mp.get_context("spawn")  # no fork after gRPC channels exist in this process
    nproc = min(8, max(levels))
    queues = [(ctx.Queue(), ctx.Queue()) for _ in range(nproc)]
    procs = [ctx.Process(target=_lookup_worker, args=q, daemon=True) for q in queues]
    for p in procs:
        p.start()
    rows = []
    try:
        for system, (target, keys) in targets.items():
            for c in levels:
                used = queues[: min(c, nproc)]
                start_at = time.time() + 3.0  # time for every worker to connect and warm up
                for inq, _ in used:
                    inq.put((system, target, keys, c // len(used), start_at, seconds))
                lat, bad = [], False
                for _, outq in used:
                    xs, b = outq.get(timeout=seconds + 120)
                    lat += xs
                    bad |= b
                if bad:
                    raise RuntimeError(f"{system}: a lookup did not find all {len(keys)} keys")
                rows.append(LookupRow(system, c, len(lat), len(lat) / seconds, pct(lat, 0.5) * 1e3,
                                      pct(lat, 0.99) * 1e3))
                log(f"lookup {system} x{c}: {len(lat)} calls, p99 {rows[-1].p99_ms:.2f} ms")
    finally:
        for inq, _ in queues:
            inq.put(None)
        for p in procs:
            p.join(10)
    return rows


def store_lookup_keys(kv_url: str, lm_port: int | None, redis_port: int | None) -> dict[str, list[bytes]]:
    """128 entries of 8 KiB in each system, for the lookup test."""
    payload = bytes(LOOKUP_PAYLOAD)
    hashes = [hash_of("lookup", i) for i in range(LOOKUP_KEYS)]
    with Client(kv_url, model="bench/lookup", layout=Layout("uint8", (LOOKUP_PAYLOAD,), 16)) as kv:
        assert all(kv.put_many([(h, payload) for h in hashes]))
    keys = {"kvbucket": hashes}
    if lm_port is not None:
        c = LMCacheRaw(lm_port)
        keys["lmcache raw"] = [LMCacheRaw.key(h) for h in hashes]
        for k in keys["lmcache raw"]:
            c.put(k, memoryview(payload), (2, 1, 2, LOOKUP_PAYLOAD // 8))
        assert c.exists(keys["lmcache raw"][-1])
        c.close()
    if redis_port is not None:
        c = RedisRaw(redis_port)
        keys["redis"] = [b"lookup:" + h.hex().encode() for h in hashes]
        for k in keys["redis"]:
            c.set(k, memoryview(payload))
        c.close()
    return keys


# -- how costs grow with stored entries ------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@dataclass
class ScaleRow:
    entries: int
    fill_per_s: float
    rss_mib: float
    rss_bytes_per_entry: float
    lookup_p50_ms: float
    lookup_p99_ms: float
    put_p50_ms: float
    put_p99_ms: float
    slowest_batch_s: float  # the longest put_many of `batch` entries while filling up to this step


def scaling(daemons, tmp: Path, steps: list[int], deadline: float,
            batch: int = 5000) -> tuple[list[ScaleRow], str]:
    d = daemons.start_daemon(tmp / "scale", "--ram-capacity", "8GiB")
    rows, note = [], ""
    try:
        kv = Client(d.url, model="bench/tiny", layout=TINY, timeout=300)
        value = bytes(range(64))
        kv.lookup([hash_of("warm", 0)])
        base = rss_bytes(d.proc.pid)
        n, rate = 0, 2000.0  # entries stored; fill rate, re-measured as we go
        for target in steps:
            if (target - n) / rate > deadline - time.monotonic():
                note = (f"stopped before {target:,} entries: ~{(target - n) / rate:.0f} s to fill, "
                        "over the time budget")
                log(note)
                break
            t0, slowest = time.perf_counter(), 0.0
            while n < target:
                k = min(batch, target - n)
                items = [(i.to_bytes(16, "big"), value) for i in range(n, n + k)]
                t1 = time.perf_counter()
                try:
                    stored = kv.put_many(items)
                except Exception as exc:
                    note = f"stopped at {n:,} entries: put_many of {k} failed: {type(exc).__name__}: {exc}"
                    log(note)
                    return rows, note
                slowest = max(slowest, time.perf_counter() - t1)
                if not all(stored):
                    raise RuntimeError("kvbucket refused a tiny put")
                n += k
            rate = (target - (rows[-1].entries if rows else 0)) / (time.perf_counter() - t0)
            rss = rss_bytes(d.proc.pid)
            step = max(1, target // LOOKUP_KEYS)
            present = [i.to_bytes(16, "big") for i in range(0, step * LOOKUP_KEYS, step)]
            assert kv.lookup(present).hits == LOOKUP_KEYS
            lk = []
            end = time.monotonic() + 2
            while len(lk) < 1000 and time.monotonic() < end:
                t1 = time.perf_counter()
                kv.lookup(present)
                lk.append(time.perf_counter() - t1)
            pt = []
            for j in range(200):  # single-chunk puts of new keys, as an engine stores one chunk
                t1 = time.perf_counter()
                kv.put(b"p" + j.to_bytes(8, "big") + target.to_bytes(7, "big"), value)
                pt.append(time.perf_counter() - t1)
            rows.append(ScaleRow(target, rate, rss / (1 << 20), (rss - base) / target, pct(lk, 0.5) * 1e3,
                                 pct(lk, 0.99) * 1e3, pct(pt, 0.5) * 1e3, pct(pt, 0.99) * 1e3, slowest))
            log(f"scale {target:,}: {rate:.0f} puts/s, RSS {rss / (1 << 20):.0f} MiB, "
                f"{rows[-1].rss_bytes_per_entry:.0f} B/entry, slowest batch {slowest:.1f} s")
        kv.close()
    finally:
        d.stop()
    return rows, note


# -- report ----------------------------------------------------------------------------------------


def print_throughput(rows: list[Row], unavailable: dict[str, str]) -> None:
    for mib in sorted({r.chunk_mib for r in rows}, reverse=True):
        sub = [r for r in rows if r.chunk_mib == mib]
        base = {r.op: r for r in sub if r.system == "lmcache raw"}
        memcpy = next(r for r in sub if r.op == "memcpy")
        print(f"\n#### {mib:.0f} MiB chunks\n")
        print("| system | op | n | GB/s | p50 ms | p99 ms | CPU s/GB (client + server) | vs LMCache raw "
              "| vs memcpy |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in sub:
            b = base.get(r.op)
            vs_lm = f"{r.gbps / b.gbps:.2f}x" if b and r.system != "limit" else "-"
            cpu = (f"{r.cpu_s_per_gb:.2f} ({r.client_cpu_s_per_gb:.2f} + {r.server_cpu_s_per_gb:.2f})"
                   if r.server_cpu_s_per_gb is not None else f"{r.cpu_s_per_gb:.2f}")
            print(f"| {r.system} | {r.op} | {r.chunks} | {r.gbps:.2f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} "
                  f"| {cpu} | {vs_lm} | {r.gbps / memcpy.gbps:.2f} |")
        for name, why in unavailable.items():
            print(f"| {name} | PUT / GET | - | - | - | - | - | {why} | |")


def print_lookups(rows: list[LookupRow]) -> None:
    print("\n#### Lookup of 128 present keys, concurrent clients\n")
    print("| system | clients | calls | lookups/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.system} | {r.clients} | {r.calls} | {r.per_s:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} |")


def print_scaling(rows: list[ScaleRow], note: str) -> None:
    print("\n#### kvbucket with many stored entries (uint8 (64,) chunks)\n")
    print("| entries | fill puts/s | daemon RSS MiB | RSS B/entry | Lookup p50 ms | Lookup p99 ms "
          "| Put p50 ms | Put p99 ms | slowest put_many s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.entries:,} | {r.fill_per_s:.0f} | {r.rss_mib:.0f} | {r.rss_bytes_per_entry:.0f} | "
              f"{r.lookup_p50_ms:.2f} | {r.lookup_p99_ms:.2f} | {r.put_p50_ms:.2f} | {r.put_p99_ms:.2f} "
              f"| {r.slowest_batch_s:.1f} |")
    if note:
        print(f"\n{note}")


def main(argv: list[str] | None = None) -> int:  # noqa: C901 - one straight line of phases
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--big", type=int, default=16, help="number of 32 MiB chunks (default 16)")
    ap.add_argument("--small", type=int, default=64, help="number of 2 MiB chunks (default 64)")
    ap.add_argument("--rounds", type=int, default=2, help="passes per op, fresh keys each (default 2)")
    ap.add_argument("--lookup-seconds", type=float, default=3.0, help="per system and level (default 3)")
    ap.add_argument("--concurrency", default="1,8,64", help="concurrent lookup clients (default 1,8,64)")
    ap.add_argument("--quick", action="store_true", help="entry scaling up to 100k (not 1M)")
    ap.add_argument("--max-seconds", type=float, default=1500,
                    help="time budget: no new round or scaling step starts past it (default 1500)")
    ap.add_argument("--skip", default="", help="comma list of: lmcache, redis, throughput, lookup, scaling")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    t_start = time.monotonic()
    deadline = t_start + args.max_seconds
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    load_before = os.getloadavg()
    tune_malloc()
    daemons = _load_daemon_helpers()
    rows: list[Row] = []
    unavailable: dict[str, str] = {}
    lookups: list[LookupRow] = []
    scale_rows: list[ScaleRow] = []
    scale_note = ""
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp_s:
        tmp = Path(tmp_s)
        sock = tmp / "kv.sock"
        # --shm-size: one round of either chunk set fits the arena (the unix socket alone gives 1 GiB).
        d = daemons.start_daemon(tmp / "kv", "--ram-capacity", "12GiB", "--unix-socket", str(sock),
                                 "--shm-size", "2GiB")
        kvproc = psutil.Process(d.proc.pid)
        lm_proc = redis_proc = None
        lm_port = redis_port = None
        try:
            if "lmcache" not in skip:
                lm_proc, lm_port = start_lmcache_server(tmp / "lmcache.log")
            if "redis" not in skip:
                redis_proc, redis_port = start_redis(tmp)
            shm_kw, shm_why = shm_options()
            # An SDK with shm uses it by default over a unix socket, and its fast wire wherever the daemon
            # offers one: the gRPC rows ask for gRPC explicitly.
            grpc_only = {"shm": False} if shm_kw is not None else {}
            if "fast" in inspect.signature(Client.__init__).parameters:
                grpc_only["fast"] = False
            kv_targets = {"kvbucket tcp": (d.url, kvproc, grpc_only),
                          "kvbucket unix": (d.info["unix_url"], kvproc, grpc_only)}
            if "fast" in grpc_only:
                kv_targets["kvbucket tcp fast wire"] = (d.url, kvproc, {"shm": False})
            if shm_kw is not None:
                kv_targets["kvbucket shm"] = (d.info["unix_url"], kvproc, shm_kw)
            else:
                unavailable["kvbucket shm"] = shm_why
            if "throughput" not in skip:
                rng = np.random.default_rng(0)
                sets = {}
                if args.big:
                    sets["32MiB"] = (BIG_SHAPE, [rng.integers(0, 256, 32 << 20, np.uint8)
                                                 for _ in range(args.big)])
                if args.small:
                    sets["2MiB"] = (SMALL_SHAPE, [rng.integers(0, 256, 2 << 20, np.uint8)
                                                  for _ in range(args.small)])
                for label, (shape, payloads) in sets.items():
                    peers = {}
                    if lm_port:
                        peers["lmcache raw"] = (LMCacheRaw(lm_port), psutil.Process(lm_proc.pid))
                    if redis_port:
                        peers["redis"] = (RedisRaw(redis_port), psutil.Process(redis_proc.pid))
                    r, un = throughput(label, payloads, shape, kv_targets, peers, args.rounds, deadline)
                    rows += r
                    unavailable.update(un)
                    for c, _ in peers.values():
                        c.close()
                del sets
            if "lookup" not in skip:
                keys = store_lookup_keys(d.url, lm_port, redis_port)
                targets = {"kvbucket tcp": (d.url, keys["kvbucket"]),
                           "kvbucket unix": (d.info["unix_url"], keys["kvbucket"])}
                if lm_port:
                    targets["lmcache raw"] = (lm_port, keys["lmcache raw"])
                if redis_port:
                    targets["redis"] = (redis_port, keys["redis"])
                lookups = lookup_concurrency(targets, [int(x) for x in args.concurrency.split(",")],
                                             args.lookup_seconds)
        finally:
            for p in (lm_proc, redis_proc):
                if p is not None:
                    p.terminate()
                    p.wait(10)
            d.stop()
        if "scaling" not in skip:
            steps = [1_000, 10_000, 100_000] + ([] if args.quick else [1_000_000])
            try:
                scale_rows, scale_note = scaling(daemons, tmp, steps, deadline)
            except Exception as exc:  # keep the phases already measured
                scale_note = f"scaling failed: {type(exc).__name__}: {exc}"
                log(scale_note)

    load_after = os.getloadavg()
    print(f"\nbench_peers, started {started}; {os.cpu_count()} CPUs; load average (1 min) before / after: "
          f"{load_before[0]:.1f} / {load_after[0]:.1f}; {time.monotonic() - t_start:.0f} s")
    if rows or unavailable:
        print_throughput(rows, unavailable)
    if lookups:
        print_lookups(lookups)
    if scale_rows or scale_note:
        print_scaling(scale_rows, scale_note)
    if args.json:
        meta = {"started": started, "argv": sys.argv, "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "loadavg_before": load_before, "loadavg_after": load_after,
                "mem_total_gib": round(psutil.virtual_memory().total / (1 << 30), 1)}
        Path(args.json).write_text(json.dumps(
            {"meta": meta, "throughput": [asdict(r) for r in rows], "unavailable": unavailable,
             "lookups": [asdict(r) for r in lookups], "scaling": [asdict(r) for r in scale_rows],
             "scaling_note": scale_note}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`kvbucket bench`: a short data-plane benchmark against any running daemon.

    kvbucket bench --url kvbucket://127.0.0.1:7070 [--chunk-mib 32] [--count 8] [--json]

First puts and gets one chunk untimed -- the first call connects, attaches the shared-memory arena
and stocks the client's slot pool, a one-time cost reported on its own (`first_call_ms`). Then puts
`count` chunks of random bytes one by one, reads them back into a warm buffer (checked byte for
byte), puts `count` more as one stream (`put_many` of a generator: each request sent before the
reply to the one before is read, as LMCache's plugin and the vLLM connector save), times Lookups of
the stored keys, and deletes every key it wrote, also when interrupted. Keys
are fresh random hashes under `--namespace bench` (model `kvbucket-bench`), so a run never touches
real data. For a comparison with peers and the machine's limits see benchmarks/bench_peers.py.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from kvbucket.clients import shm
from kvbucket.clients.cli_common import DEFAULT_URL, TokenOpt, UrlOpt, console, err

LOOKUP_KEYS = 128
MODEL = "kvbucket-bench"


@dataclass(frozen=True, slots=True)
class Timing:
    ops: int
    seconds: float
    gbps: float  # 1e9 bytes per second of the calls' own time (not the checks between them)
    p50_ms: float
    p99_ms: float


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else 0.0


def timing(lat: list[float], wall: float, nbytes: int) -> Timing:
    busy = sum(lat)
    gbps = nbytes / busy / 1e9 if busy else 0.0
    return Timing(len(lat), wall, gbps, pct(lat, 0.5) * 1e3, pct(lat, 0.99) * 1e3)


def payloads(chunk: int, count: int):
    """`count` distinct chunks as views of one random buffer, each shifted by 8 bytes (one allocation)."""
    import numpy as np

    buf = np.random.default_rng().integers(0, 256, chunk + 8 * count, dtype=np.uint8)
    return [memoryview(buf[8 * i : 8 * i + chunk]) for i in range(count)]


def run_bench(kv, chunk: int, count: int, lookups: int, progress: Progress) -> dict:
    """Put, get and look up `count` fresh chunks through `kv`; delete them afterwards, whatever happens."""
    run_id = secrets.token_bytes(8)
    hashes = [run_id + i.to_bytes(8, "big") for i in range(count)]
    streamed = [run_id + (count + i).to_bytes(8, "big") for i in range(count)]
    first = run_id + b"\xff" * 8
    data = payloads(chunk, count)
    out = bytearray(chunk)
    out[:] = b"\1" * chunk  # warm: page faults are not the daemon's cost
    result: dict = {}
    try:
        task = progress.add_task("first put + get", total=1)
        t = time.perf_counter()
        result["transport"] = kv.transport()
        if result["transport"] == "shm":  # how puts copy into the arena (clients/shm.py write_hashed)
            result["shm_copy"] = shm.put_copy()
        if not (kv.put(first, data[0]) and kv.get_into(first, out)):
            raise RuntimeError("the daemon refused a put, or lost it at once (capacity or quota?)")
        result["first_call_ms"] = (time.perf_counter() - t) * 1e3
        progress.advance(task)

        task = progress.add_task("put", total=count)
        lat, t0 = [], time.perf_counter()
        for h, d in zip(hashes, data, strict=True):
            t = time.perf_counter()
            if not kv.put(h, d):
                raise RuntimeError("the daemon refused a put (capacity or quota?)")
            lat.append(time.perf_counter() - t)
            progress.advance(task)
        result["put"] = timing(lat, time.perf_counter() - t0, chunk * count)

        task = progress.add_task("get", total=count)
        lat, t0, wrong = [], time.perf_counter(), 0
        for h, d in zip(hashes, data, strict=True):
            t = time.perf_counter()
            if not kv.get_into(h, out):
                raise RuntimeError("a chunk stored a moment ago is missing (evicted? capacity too small)")
            lat.append(time.perf_counter() - t)
            wrong += out != d
            progress.advance(task)
        result["get"] = timing(lat, time.perf_counter() - t0, chunk * count)
        if wrong:
            raise RuntimeError(f"{wrong} chunks came back different from what was put")

        task = progress.add_task("put stream", total=count)
        marks: list[float] = []

        def items():
            for h, d in zip(streamed, data, strict=True):
                marks.append(time.perf_counter())
                progress.advance(task)
                yield h, d

        t0 = time.perf_counter()
        stored = kv.put_many(items())
        marks.append(time.perf_counter())
        if not all(stored) or kv.lookup(streamed).hits != count:
            raise RuntimeError("the daemon refused or lost a streamed put (capacity or quota?)")
        lat = [b - a for a, b in zip([t0, *marks[1:-1]], marks[1:], strict=True)]
        result["put_stream"] = timing(lat, marks[-1] - t0, chunk * count)

        keys = hashes[:LOOKUP_KEYS]
        task = progress.add_task(f"lookup ({len(keys)} keys)", total=lookups)
        lat = []
        for _ in range(lookups):
            t = time.perf_counter()
            hits = kv.lookup(keys).hits
            lat.append(time.perf_counter() - t)
            progress.advance(task)
        if hits != len(keys):
            raise RuntimeError(f"lookup found {hits} of {len(keys)} stored keys")
        result["lookup"] = {"keys": len(keys), "calls": lookups, "p50_ms": pct(lat, 0.5) * 1e3,
                            "p99_ms": pct(lat, 0.99) * 1e3}
    finally:
        result["deleted"] = kv.delete([first, *hashes, *streamed])
    return result


def render(r: dict) -> None:
    t = Table(title=f"kvbucket bench: {r['count']} x {r['chunk_bytes'] / (1 << 20):g} MiB at {r['url']} "
                    f"over {r['transport']} (namespace {r['namespace']!r})")
    for col in ("op", "GB/s", "p50 ms", "p99 ms"):
        t.add_column(col, justify="left" if col == "op" else "right")
    for op in ("put", "get", "put_stream"):
        x = r[op]
        t.add_row(op.replace("_", " "), f"{x['gbps']:.2f}", f"{x['p50_ms']:.2f}", f"{x['p99_ms']:.2f}")
    lk = r["lookup"]
    t.add_row(f"lookup {lk['keys']} keys", "", f"{lk['p50_ms']:.2f}", f"{lk['p99_ms']:.2f}")
    console.print(t)
    console.print(f"first put + get, untimed above (connect, attach, stock the slot pool): {r['first_call_ms']:.1f} ms")
    console.print("put stream: p50/p99 between chunks of one put_many (requests pipelined)")
    if r.get("shm_copy"):
        console.print(f"shared-memory puts copy with {r['shm_copy']}")
    console.print(f"cleaned up: {r['deleted']} of {2 * r['count'] + 1} keys deleted")


def register(app: typer.Typer) -> None:
    @app.command()
    def bench(
        url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
        chunk_mib: Annotated[float, typer.Option("--chunk-mib", min=0.001, help="chunk size in MiB")] = 32.0,
        count: Annotated[int, typer.Option("--count", min=1, max=4096, help="chunks to put and get")] = 8,
        namespace: Annotated[str, typer.Option("--namespace", "-n", help="namespace of the keys")] = "bench",
        lookups: Annotated[int, typer.Option("--lookups", min=1, help="Lookup calls to time")] = 200,
        as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    ) -> None:
        """Put, get and look up fresh chunks on a running daemon; print GB/s and p50/p99; delete the keys."""
        from kvbucket.clients.sdk import Client
        from kvbucket.core.errors import KVBucketError
        from kvbucket.core.keys import Layout

        chunk = int(chunk_mib * (1 << 20))
        layout = Layout("uint8", (chunk,), tokens_per_chunk=256)
        columns = (TextColumn("{task.description:>18}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn())
        try:
            with Client(url, token=token, namespace=namespace, model=MODEL, layout=layout) as kv, \
                    Progress(*columns, console=err, transient=True) as progress:
                r = run_bench(kv, chunk, count, lookups, progress)
        except (KVBucketError, RuntimeError) as exc:
            err.print(f"[red]error:[/red] {type(exc).__name__}: {exc}")
            raise typer.Exit(2) from None
        report = {"url": url, "namespace": namespace, "model": MODEL, "chunk_bytes": chunk, "count": count,
                  "transport": r["transport"], "shm_copy": r.get("shm_copy"), "first_call_ms": r["first_call_ms"],
                  "put": asdict(r["put"]), "get": asdict(r["get"]), "put_stream": asdict(r["put_stream"]),
                  "lookup": r["lookup"],
                  "deleted": r["deleted"]}
        if as_json:
            print(json.dumps(report))
        else:
            render(report)

"""The `kvbucket` command: run the daemon, inspect it, and move chunks by hand.

    kvbucket serve [--nvme] [--s3-bucket B --s3-endpoint URL] [--config kvbucket.toml]
    kvbucket stats  [--url kvbucket://127.0.0.1:7070] [--json]
    kvbucket ls | inspect | evict | reset | ttl | pin | unpin | quota | capacity | drain | usage
                                          (clients/cli_admin.py; see `kvbucket COMMAND --help`)
    kvbucket put FILE [--key NAME]        kvbucket get HASH --shape N -o FILE
    kvbucket bench [--chunk-mib 32] [--count 8] [--json]   (clients/cli_bench.py)
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kvbucket.clients.cli_common import DEFAULT_URL, TIERS, JsonOpt, TokenOpt, UrlOpt, console, err, human

app = typer.Typer(add_completion=False, no_args_is_help=True, help="kvbucket: a KV-cache store for LLM inference.")


def _client(url: str, token: str | None, **kw):
    from kvbucket.clients.sdk import Client

    return Client(url, token=token, **kw)


def _fail(exc: Exception) -> None:
    err.print(f"[red]error:[/red] {type(exc).__name__}: {exc}")
    raise typer.Exit(2)


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option(help="TOML config file")] = None,
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option(help="gRPC port (0: any free port)")] = None,
    unix_socket: Annotated[Path | None, typer.Option(help="also listen on this unix socket")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus port (0: any, -1: off)")] = None,
    data_dir: Annotated[Path | None, typer.Option()] = None,
    ram: Annotated[bool | None, typer.Option("--ram/--no-ram")] = None,
    ram_capacity: Annotated[str | None, typer.Option(help="e.g. 8GiB")] = None,
    ram_policy: Annotated[str | None, typer.Option(help="s3fifo | lru")] = None,
    ram_prefault: Annotated[bool | None, typer.Option(
        "--ram-prefault/--no-ram-prefault",
        help="fault in the RAM tier's memory at start (default off): no page faults while the cache fills")] = None,
    nvme: Annotated[bool | None, typer.Option("--nvme/--no-nvme")] = None,
    nvme_path: Annotated[Path | None, typer.Option()] = None,
    nvme_capacity: Annotated[str | None, typer.Option()] = None,
    s3: Annotated[bool | None, typer.Option("--s3/--no-s3")] = None,
    s3_bucket: Annotated[str | None, typer.Option()] = None,
    s3_endpoint: Annotated[str | None, typer.Option()] = None,
    s3_prefix: Annotated[str | None, typer.Option()] = None,
    tokens_file: Annotated[Path | None, typer.Option(help="TOML of bearer tokens -> tenants")] = None,
    tls_cert: Annotated[Path | None, typer.Option()] = None,
    tls_key: Annotated[Path | None, typer.Option()] = None,
    ready_file: Annotated[Path | None, typer.Option(help="write the bound URL/ports here as JSON")] = None,
    shm_size: Annotated[str | None, typer.Option(help="shared-memory arena for same-host clients, e.g. 4GiB "
                                                    "(default: off, 1 GiB with --unix-socket)")] = None,
    shm_lease_seconds: Annotated[float | None, typer.Option(help="shm reservation/read lease (default 30)")] = None,
    shm_catalog: Annotated[bool | None, typer.Option(
        "--shm-catalog/--no-shm-catalog",
        help="list arena-held entries for clients to read without a call (default on)")] = None,
    fast: Annotated[bool | None, typer.Option("--fast/--no-fast", help="fast wire (default on; off with TLS)")] = None,
    fast_port: Annotated[int | None, typer.Option(help="fast-wire TCP port (default 0: any free port)")] = None,
    log_level: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Run the daemon (RAM tier on by default; --nvme and --s3-bucket add the durable tiers)."""
    import asyncio
    import logging

    from pydantic import ValidationError

    from kvbucket.server.app import run
    from kvbucket.server.settings import load_settings

    flat = dict(host=host, port=port, unix_socket=unix_socket, metrics_port=metrics_port, data_dir=data_dir,
                ready_file=ready_file, log_level=log_level)
    nested = {
        "ram": dict(enabled=ram, capacity=ram_capacity, policy=ram_policy, prefault=ram_prefault),
        "nvme": dict(enabled=nvme, path=nvme_path, capacity=nvme_capacity),
        "s3": dict(enabled=s3 if s3 is not None else (True if s3_bucket else None), bucket=s3_bucket,
                   endpoint_url=s3_endpoint, prefix=s3_prefix),
        "auth": dict(tokens_file=tokens_file, tls_cert=tls_cert, tls_key=tls_key),
        "shm": dict(size=shm_size, lease_seconds=shm_lease_seconds, catalog=shm_catalog),
        "fast": dict(enabled=fast, port=fast_port),
    }
    overrides = {k: v for k, v in flat.items() if v is not None}
    for section, values in nested.items():
        given = {k: v for k, v in values.items() if v is not None}
        if given:
            overrides[section] = given
    try:
        settings = load_settings(config, **overrides)
    except ValidationError as exc:
        err.print(f"[red]invalid configuration:[/red]\n{exc}")
        raise typer.Exit(2) from None
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(settings))


@app.command()
def stats(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Entries, bytes and hits per tier, and the daemon's counters."""
    from google.protobuf.json_format import MessageToDict

    from kvbucket.core.errors import KVBucketError

    try:
        with _client(url, token) as c:
            s = c.stats()
    except KVBucketError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(MessageToDict(s, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)))
        return
    t = Table(title=f"kvbucket {s.version} at {url} (up {s.uptime_seconds:.0f} s)")
    for col in ("tier", "entries", "bytes", "capacity", "hits", "evictions"):
        t.add_column(col, justify="left" if col == "tier" else "right")
    names = {v: k for k, v in TIERS.items()}
    for ts in s.tiers:
        cap = human(ts.capacity_bytes) if ts.capacity_bytes else "unbounded"
        t.add_row(names.get(ts.tier, "?"), str(ts.entries), human(ts.bytes), cap, str(ts.hits), str(ts.evictions))
    console.print(t)
    rate = s.lookup_hits / s.lookup_keys if s.lookup_keys else 0.0
    console.print(f"lookups {s.lookups}  keys asked {s.lookup_keys}  found {s.lookup_hits} ({rate:.1%})  "
                  f"puts {s.puts}  gets {s.gets}  chunks served {s.get_hits}  tokens served {s.tokens_served}")


def _debug_layout(dtype: str, shape: str):
    from kvbucket.core.keys import Layout

    dims = tuple(int(x) for x in shape.split(","))
    return Layout(dtype, dims, tokens_per_chunk=1)


@app.command()
def put(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
    key: Annotated[str | None, typer.Option(help="name hashed into the key (default: file content)")] = None,
    model: Annotated[str, typer.Option()] = "debug",
    namespace: Annotated[str, typer.Option()] = "",
) -> None:
    """Store a file as one chunk (dtype uint8, one dimension of its size); prints its hash."""
    from kvbucket.core.errors import KVBucketError

    data = file.read_bytes()
    h = hashlib.blake2b((key or "").encode() if key else data, digest_size=32).digest()
    layout = _debug_layout("uint8", str(len(data)))
    try:
        with _client(url, token, model=model, namespace=namespace or None, layout=layout) as c:
            c.put(h, data)
    except KVBucketError as exc:
        _fail(exc)
    console.print(f"{h.hex()}  ({len(data)} bytes; get it with: kvbucket get {h.hex()} --shape {len(data)} -o FILE)")


@app.command()
def get(
    hash_hex: Annotated[str, typer.Argument(metavar="HASH")],
    shape: Annotated[str, typer.Option(help="chunk shape, e.g. 1048576 or 32,2,256,8,128")],
    out: Annotated[Path, typer.Option("-o", "--out", help="write the chunk here ('-' for stdout)")],
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
    dtype: Annotated[str, typer.Option()] = "uint8",
    model: Annotated[str, typer.Option()] = "debug",
    namespace: Annotated[str, typer.Option()] = "",
) -> None:
    """Fetch one chunk by hash (exit 1 on a miss)."""
    from kvbucket.core.errors import KVBucketError

    try:
        h = bytes.fromhex(hash_hex)
    except ValueError:
        err.print(f"[red]error:[/red] {hash_hex!r} is not hex")
        raise typer.Exit(2) from None
    try:
        with _client(url, token, model=model, namespace=namespace or None, layout=_debug_layout(dtype, shape)) as c:
            data = c.get(h)
    except KVBucketError as exc:
        _fail(exc)
    if data is None:
        err.print("miss: no such chunk")
        raise typer.Exit(1)
    if str(out) == "-":
        sys.stdout.buffer.write(data)
    else:
        out.write_bytes(data)
        console.print(f"wrote {len(data)} bytes to {out}")


from kvbucket.clients.cli_admin import register as _register_admin  # noqa: E402
from kvbucket.clients.cli_bench import register as _register_bench  # noqa: E402

_register_admin(app)
_register_bench(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

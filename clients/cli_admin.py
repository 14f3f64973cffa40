"""`kvbucket` commands that own the cache: ls, inspect, evict, reset, ttl, pin, unpin, quota,
capacity, drain, usage. Registered onto the main typer app by `register(app)`.

Destructive commands (evict, reset, capacity shrink) ask for confirmation on a terminal and refuse
without `--yes` when there is none (CI); every command takes `--json`.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from kvbucket.clients.cli_common import (
    DEFAULT_URL,
    TIER_NAMES,
    TIERS,
    JsonOpt,
    TokenOpt,
    UrlOpt,
    console,
    err,
    human,
)

YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")]
NsOpt = Annotated[str, typer.Option("--namespace", "-n", help="namespace (default for non-admins: own tenant)")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="model")]
LayoutOpt = Annotated[str, typer.Option("--layout", help="layout fingerprint (16 hex chars)")]
HashOpt = Annotated[list[str] | None, typer.Option("--hash", help="key hash in hex; repeat for a chain")]
HashPrefixOpt = Annotated[str, typer.Option("--hash-prefix", help="hex prefix of key hashes")]
TierOpt = Annotated[list[str] | None, typer.Option("--tier", help="ram | nvme | s3; repeatable")]
MinHitsOpt = Annotated[int, typer.Option("--min-hits", help="at least this many hits")]
IdleOpt = Annotated[float, typer.Option("--idle", help="not read for at least this many seconds")]
PinnedOpt = Annotated[bool | None, typer.Option("--pinned/--unpinned", help="only pinned / unpinned")]
ExpOpt = Annotated[float, typer.Option("--expiring-within", help="expiring within this many seconds")]
AllOpt = Annotated[bool, typer.Option("--all", help="explicitly everything the other filters allow")]

def parse_size(text: str) -> int:
    from pydantic import ByteSize, TypeAdapter, ValidationError

    try:
        return int(TypeAdapter(ByteSize).validate_python(text))
    except ValidationError:
        err.print(f"[red]error:[/red] {text!r} is not a size (e.g. 512MiB, 8GiB, 0)")
        raise typer.Exit(2) from None


def _client(url: str, token: str | None):
    from kvbucket.clients.sdk import Client

    return Client(url, token=token)


def _fail(exc: Exception) -> None:
    err.print(f"[red]error:[/red] {type(exc).__name__}: {exc}")
    raise typer.Exit(2)


def _dump(msg) -> None:
    from google.protobuf.json_format import MessageToDict

    def conv(m):
        return MessageToDict(m, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)

    print(json.dumps([conv(m) for m in msg] if isinstance(msg, list) else conv(msg)))


def confirm(what: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        err.print(f"[red]refusing:[/red] {what}; pass --yes (no terminal to confirm on)")
        raise typer.Exit(2)
    if not typer.confirm(f"{what}. Continue?", default=False):
        raise typer.Exit(1)


def _where(namespace="", model="", layout="", hashes=None, hash_prefix="", tier=None, min_hits=0, idle=0.0,
           pinned=None, expiring_within=0.0, all=False) -> dict:
    for t in tier or ():
        if t not in TIERS:
            err.print(f"[red]error:[/red] --tier must be one of {', '.join(TIERS)}")
            raise typer.Exit(2)
    try:
        hs = [bytes.fromhex(h) for h in hashes or ()]
        hp = bytes.fromhex(hash_prefix)
    except ValueError:
        err.print("[red]error:[/red] --hash and --hash-prefix take hex")
        raise typer.Exit(2) from None
    return dict(namespace=namespace, model=model, layout=layout, hashes=hs, hash_prefix=hp, tiers=tier or (),
                min_hits=min_hits, idle_seconds=idle, pinned=pinned,
                expires_before=time.time() + expiring_within if expiring_within else 0.0, all=all)


def _when(t: float, now: float) -> str:
    if not t:
        return "-"
    d = t - now
    return f"in {d:.0f}s" if d >= 0 else f"{-d:.0f}s ago"


def _run_progress(title: str, steps, as_json: bool) -> None:
    last: dict[tuple[str, int], object] = {}
    if as_json:
        for s in steps:
            last[(s.phase, s.tier)] = s
        _dump(list(last.values()))
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[size]}"), console=console, transient=False) as bar:
        tasks: dict[tuple[str, int], int] = {}
        for s in steps:
            k = (s.phase, s.tier)
            if k not in tasks:
                tasks[k] = bar.add_task(f"{title} {s.phase} {TIER_NAMES.get(s.tier, '')}".strip(),
                                        total=max(s.total, 1), size="")
            bar.update(tasks[k], completed=s.done, total=max(s.total, s.done, 1), size=human(s.bytes))
            last[k] = s
    for s in last.values():
        if s.finished and s.message:
            console.print(s.message)
        if s.failed:
            err.print(f"[yellow]{s.failed} failed in {s.phase} {TIER_NAMES.get(s.tier, '')}[/yellow]")


def register(app: typer.Typer) -> None:  # noqa: C901 - one small function per command
    from kvbucket.core.errors import KVBucketError

    @app.command("ls")
    def ls(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
           namespace: NsOpt = "", model: ModelOpt = "", layout: LayoutOpt = "", hash: HashOpt = None,
           hash_prefix: HashPrefixOpt = "", tier: TierOpt = None, min_hits: MinHitsOpt = 0, idle: IdleOpt = 0.0,
           pinned: PinnedOpt = None, expiring_within: ExpOpt = 0.0,
           limit: Annotated[int, typer.Option(help="stop after this many entries")] = 100) -> None:
        """List cached entries matching the filters (your own tenant's unless you hold an admin token)."""
        where = _where(namespace, model, layout, hash, hash_prefix, tier, min_hits, idle, pinned, expiring_within)
        entries, page = [], ""
        try:
            with _client(url, token) as c:
                while len(entries) < limit:
                    r = c.list_page(page_size=min(1000, limit - len(entries)), page_token=page, **where)
                    entries.extend(r.entries)
                    page = r.next_page_token
                    if not page:
                        break
        except KVBucketError as exc:
            _fail(exc)
        if as_json:
            from google.protobuf.json_format import MessageToDict

            print(json.dumps([MessageToDict(e, preserving_proto_field_name=True) for e in entries]))
            return
        t = Table(title=f"{len(entries)} entries" + (" (more: raise --limit)" if page else ""))
        for col in ("namespace", "model", "hash", "tokens", "raw", "stored", "tiers", "hits", "idle", "expires",
                    "pin"):
            t.add_column(col, overflow="fold", min_width=5 if col in ("namespace", "model") else None)
        now = time.time()
        for e in entries:
            pin = ("soft" if e.pin_expires_at else "hard") if e.pinned else ""
            t.add_row(e.namespace, e.model, e.hash.hex()[:16], str(e.tokens), human(e.raw_bytes),
                      human(e.stored_bytes), ",".join(TIER_NAMES.get(x, "?") for x in e.tiers), str(e.hits),
                      f"{now - e.last_access:.0f}s", _when(e.expires_at, now), pin)
        console.print(t)

    @app.command()
    def inspect(hash_hex: Annotated[str, typer.Argument(metavar="HASH")], namespace: NsOpt = "",
                model: ModelOpt = "debug", layout: LayoutOpt = "", url: UrlOpt = DEFAULT_URL,
                token: TokenOpt = None, as_json: JsonOpt = False) -> None:
        """Everything the daemon knows about one key (exit 1 when it holds none)."""
        try:
            h = bytes.fromhex(hash_hex)
            with _client(url, token) as c:
                found = c.get_entry(namespace or c.scope.namespace, model, h, layout)
        except ValueError:
            err.print(f"[red]error:[/red] {hash_hex!r} is not hex")
            raise typer.Exit(2) from None
        except KVBucketError as exc:
            if type(exc).__name__ == "NotFound":
                err.print(f"not found: {exc}")
                raise typer.Exit(1) from None
            _fail(exc)
        if as_json:
            _dump(found)
            return
        now = time.time()
        for e in found:
            t = Table(title=f"{e.namespace}/{e.model} {e.hash.hex()}", show_header=False)
            rows = [("layout", e.layout), ("dtype / shape", f"{e.dtype} {list(e.shape)}"), ("tokens", str(e.tokens)),
                    ("raw / stored", f"{human(e.raw_bytes)} / {human(e.stored_bytes)}"),
                    ("tiers", ",".join(TIER_NAMES.get(x, "?") for x in e.tiers)), ("hits", str(e.hits)),
                    ("created", _when(e.created, now)), ("last access", _when(e.last_access, now)),
                    ("expires", _when(e.expires_at, now) + (f" (sliding {e.ttl_seconds:.0f}s)"
                                                             if e.ttl_sliding else "")),
                    ("pinned", ("until " + _when(e.pin_expires_at, now) if e.pin_expires_at else "hard")
                     if e.pinned else "no")]
            for k, v in rows:
                t.add_row(k, v)
            console.print(t)

    @app.command()
    def evict(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False, yes: YesOpt = False,
              namespace: NsOpt = "", model: ModelOpt = "", layout: LayoutOpt = "", hash: HashOpt = None,
              hash_prefix: HashPrefixOpt = "", tier: TierOpt = None, min_hits: MinHitsOpt = 0,
              idle: IdleOpt = 0.0, all: AllOpt = False,
              from_tier: Annotated[list[str] | None, typer.Option(
                  "--from", help="only drop the copies in these tiers (repeatable); default: every tier")] = None,
              dry_run: Annotated[bool, typer.Option("--dry-run", help="count only")] = False) -> None:
        """Remove matching entries (pinned ones stay) and report what was freed."""
        where = _where(namespace, model, layout, hash, hash_prefix, tier, min_hits, idle, all=all)
        for t in from_tier or ():
            if t not in TIERS:
                err.print(f"[red]error:[/red] --from must be one of {', '.join(TIERS)}")
                raise typer.Exit(2)
        if not dry_run:
            confirm(f"evict entries matching {_describe(where)} from {','.join(from_tier or []) or 'every tier'}",
                    yes)
        try:
            with _client(url, token) as c:
                r = c.evict(from_tiers=from_tier or (), dry_run=dry_run, **where)
        except KVBucketError as exc:
            _fail(exc)
        if as_json:
            _dump(r)
            return
        t = Table(title=f"{'would evict' if dry_run else 'evicted'} {r.entries} entries, {human(r.bytes)}"
                  + (f" ({r.skipped_pinned} pinned left)" if r.skipped_pinned else ""))
        for col in ("tier", "entries", "bytes"):
            t.add_column(col)
        for tc in r.tiers:
            t.add_row(TIER_NAMES.get(tc.tier, "?"), str(tc.entries), human(tc.bytes))
        console.print(t)

    @app.command()
    def reset(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False, yes: YesOpt = False,
              namespace: NsOpt = "", model: ModelOpt = "", all: AllOpt = False) -> None:
        """Delete a namespace (or one model of it, or --all) from every tier including S3, pins included."""
        what = f"{namespace or ('EVERY namespace' if all else '?')}" + (f"/{model}" if model else "")
        confirm(f"reset {what} on every tier, S3 included", yes)
        try:
            with _client(url, token) as c:
                _run_progress("reset", c.reset(namespace, model, all), as_json)
        except KVBucketError as exc:
            _fail(exc)

    @app.command()
    def drain(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
              namespace: NsOpt = "") -> None:
        """Copy every RAM/NVMe entry S3 does not hold yet to S3 (before decommissioning a node)."""
        try:
            with _client(url, token) as c:
                _run_progress("drain", c.drain(namespace), as_json)
        except KVBucketError as exc:
            _fail(exc)

    @app.command()
    def ttl(seconds: Annotated[float, typer.Argument(help="expire this long from now (0 with --clear)")] = 0.0,
            url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
            sliding: Annotated[bool, typer.Option("--sliding", help="refresh on every hit")] = False,
            at: Annotated[float, typer.Option("--at", help="expire at this unix time instead")] = 0.0,
            clear: Annotated[bool, typer.Option("--clear", help="remove the expiry")] = False,
            default: Annotated[bool, typer.Option("--default", help="set the namespace default for new puts")]
            = False,
            namespace: NsOpt = "", model: ModelOpt = "", layout: LayoutOpt = "", hash: HashOpt = None,
            hash_prefix: HashPrefixOpt = "", tier: TierOpt = None, idle: IdleOpt = 0.0, all: AllOpt = False) -> None:
        """Give matching entries an expiry (or a namespace its default TTL with --default)."""
        try:
            with _client(url, token) as c:
                if default:
                    p = c.set_policy(namespace, default_ttl_seconds=0.0 if clear else seconds,
                                     default_sliding=sliding)
                    if as_json:
                        _dump(p)
                    else:
                        console.print(f"{p.namespace}: new entries expire after {p.default_ttl_seconds:.0f}s"
                                      f"{' (sliding)' if p.default_sliding else ''}" if p.default_ttl_seconds
                                      else f"{p.namespace}: no default TTL")
                    return
                where = _where(namespace, model, layout, hash, hash_prefix, tier, 0, idle, all=all)
                n = c.set_ttl(seconds, sliding=sliding, expire_at=at, clear=clear, **where)
        except KVBucketError as exc:
            _fail(exc)
        print(json.dumps({"entries": n})) if as_json else console.print(f"{n} entries updated")

    def _pin(unpin: bool, url, token, as_json, lease, namespace, model, layout, hash, hash_prefix, tier, all):
        where = _where(namespace, model, layout, hash, hash_prefix, tier, all=all)
        try:
            with _client(url, token) as c:
                n = c.pin(lease_seconds=lease, unpin=unpin, **where)
        except KVBucketError as exc:
            _fail(exc)
        verb = "unpinned" if unpin else (f"pinned for {lease:.0f}s" if lease else "hard-pinned")
        print(json.dumps({"entries": n})) if as_json else console.print(f"{n} entries {verb}")

    @app.command()
    def pin(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
            lease: Annotated[float, typer.Option("--for", help="soft pin: seconds until it ends; 0: hard pin")]
            = 0.0, namespace: NsOpt = "", model: ModelOpt = "", layout: LayoutOpt = "", hash: HashOpt = None,
            hash_prefix: HashPrefixOpt = "", tier: TierOpt = None, all: AllOpt = False) -> None:
        """Pin matching entries: never evicted (hard) or until a lease ends (soft, --for SECONDS)."""
        _pin(False, url, token, as_json, lease, namespace, model, layout, hash, hash_prefix, tier, all)

    @app.command()
    def unpin(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
              namespace: NsOpt = "", model: ModelOpt = "", layout: LayoutOpt = "", hash: HashOpt = None,
              hash_prefix: HashPrefixOpt = "", tier: TierOpt = None, all: AllOpt = False) -> None:
        """Unpin matching entries."""
        _pin(True, url, token, as_json, 0.0, namespace, model, layout, hash, hash_prefix, tier, all)

    @app.command()
    def quota(namespace: Annotated[str | None, typer.Argument(help="namespace (none: list all)")] = None,
              size: Annotated[str | None, typer.Argument(help="new quota, e.g. 10GiB; 0 removes it")] = None,
              url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
        """Show namespace quotas and use, or set one (admin)."""
        try:
            with _client(url, token) as c:
                pols = [c.set_policy(namespace, quota_bytes=parse_size(size))] if size is not None \
                    else c.policies(namespace or "")
        except KVBucketError as exc:
            _fail(exc)
        if as_json:
            _dump(pols)
            return
        t = Table(title="namespace policies")
        for col in ("namespace", "used", "quota", "default ttl"):
            t.add_column(col)
        for p in pols:
            ttl_text = (f"{p.default_ttl_seconds:.0f}s" + (" sliding" if p.default_sliding else "")
                        if p.default_ttl_seconds else "-")
            t.add_row(p.namespace, human(p.used_bytes), human(p.quota_bytes) if p.quota_bytes else "none", ttl_text)
        console.print(t)

    @app.command()
    def capacity(tier: Annotated[str | None, typer.Argument(help="ram | nvme")] = None,
                 size: Annotated[str | None, typer.Argument(help="new capacity, e.g. 8GiB")] = None,
                 url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
                 yes: YesOpt = False) -> None:
        """Show each tier's capacity, or change one live (admin; a shrink evicts, pinned entries stay)."""
        if (tier is None) != (size is None) or (tier is not None and tier not in TIERS):
            err.print("[red]error:[/red] give both TIER (ram | nvme) and SIZE, or neither")
            raise typer.Exit(2)
        new = parse_size(size) if size is not None else 0
        try:
            with _client(url, token) as c:
                if tier is not None:
                    held = next((ts for ts in c.capacity().tiers if ts.tier == TIERS[tier]), None)
                    if held is not None and new < held.bytes:
                        confirm(f"shrinking {tier} to {human(new)} evicts about {human(held.bytes - new)}", yes)
                r = c.capacity(tier, new)
        except KVBucketError as exc:
            _fail(exc)
        if as_json:
            _dump(r)
            return
        t = Table(title="capacity" + (f" (evicted {r.evicted_entries} entries, {human(r.evicted_bytes)})"
                                      if r.evicted_entries else ""))
        for col in ("tier", "entries", "bytes", "capacity", "used"):
            t.add_column(col)
        for ts in r.tiers:
            cap = ts.capacity_bytes
            t.add_row(TIER_NAMES.get(ts.tier, "?"), str(ts.entries), human(ts.bytes), human(cap) if cap else
                      "unbounded", f"{ts.bytes / cap:.0%}" if cap else "-")
        console.print(t)

    @app.command()
    def usage(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
              namespace: NsOpt = "", model: ModelOpt = "") -> None:
        """Per namespace x model: entries, bytes per tier, hit rate, tokens served, token-hours, money saved."""
        try:
            with _client(url, token) as c:
                r = c.usage(namespace, model)
        except KVBucketError as exc:
            _fail(exc)
        if as_json:
            _dump(r)
            return
        t = Table(title=f"usage since {time.strftime('%Y-%m-%d %H:%M', time.localtime(r.since))}"
                        f" (price {r.price_per_million_tokens:g} per 1M input tokens)")
        for col in ("namespace", "model", "entries", "ram", "nvme", "s3", "hits", "hit rate", "tokens served",
                    "token-hours", "saved"):
            t.add_column(col)
        for row in r.rows:
            by = {TIER_NAMES.get(tc.tier): tc.bytes for tc in row.tiers}
            t.add_row(row.namespace, row.model, str(row.entries), *(human(by.get(x, 0)) for x in TIERS),
                      str(row.hits), f"{row.hit_rate:.1%}", str(row.tokens_served), f"{row.token_hours:.1f}",
                      f"{row.saved:.2f}")
        console.print(t)


def _describe(where: dict) -> str:
    parts = [f"{k}={v if not isinstance(v, (list, bytes)) else len(v)}" for k, v in where.items() if v]
    return " ".join(parts) or "(no filter)"

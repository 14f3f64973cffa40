"""Selectors: which entries an admin call (list, evict, TTL, pin) acts on.

A selector is data: every field set narrows it (AND). `empty` says it names nothing, which
destructive calls refuse unless `all` is set. Matching reads index metadata only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from kvbucket.core.errors import FailedPrecondition, InvalidArgument
from kvbucket.core.keys import check_name, scope_prefix
from kvbucket.proto import admin_pb2 as apb
from kvbucket.proto import store_pb2 as pb
from kvbucket.server.auth import Authenticator, Caller
from kvbucket.server.store import TieredStore
from kvbucket.server.tiers.base import EntryMeta

TIER_NAME = {pb.TIER_RAM: "ram", pb.TIER_NVME: "nvme", pb.TIER_S3: "s3"}


@dataclass(frozen=True, slots=True)
class Selector:
    namespace: str = ""
    model: str = ""
    layout: str = ""
    hashes: frozenset[bytes] = frozenset()
    hash_prefix: bytes = b""
    tiers: frozenset[str] = frozenset()
    min_hits: int = 0
    idle_seconds: float = 0.0
    pinned: int = apb.PIN_ANY
    expires_before: float = 0.0
    all: bool = False
    # a non-admin caller's selector is confined to its tenant even when it names no namespace
    scoped: bool = field(default=False, compare=False)

    @property
    def empty(self) -> bool:
        """Names nothing in particular (the whole cache, or the caller's whole tenant)."""
        return not (self.model or self.layout or self.hashes or self.hash_prefix or self.tiers
                    or self.min_hits or self.idle_seconds or self.pinned or self.expires_before
                    or (self.namespace and not self.scoped))

    def require_explicit(self, what: str) -> None:
        if self.empty and not self.all:
            raise FailedPrecondition(
                f"{what} with an empty selector would act on everything; name a namespace, model, key or"
                " filter, or pass all=true (CLI: --all) to mean it")

    def prefix(self) -> bytes:
        if not self.namespace:
            return b""
        return scope_prefix(self.namespace, self.model, self.layout if self.model else "")

    def matches(self, meta: EntryMeta, tiers: list[str], now: float) -> bool:
        k = meta.key
        if self.namespace and k.namespace != self.namespace:
            return False
        if self.model and k.model != self.model:
            return False
        if self.layout and k.layout != self.layout:
            return False
        if self.hashes and k.hash not in self.hashes:
            return False
        if self.hash_prefix and not k.hash.startswith(self.hash_prefix):
            return False
        if self.tiers and not self.tiers.intersection(tiers):
            return False
        if self.min_hits and meta.hits < self.min_hits:
            return False
        if self.idle_seconds and now - meta.last_access < self.idle_seconds:
            return False
        if self.pinned == apb.PIN_PINNED and not meta.pinned:
            return False
        if self.pinned == apb.PIN_UNPINNED and meta.pinned:
            return False
        if self.expires_before and not (meta.expires_at and meta.expires_at < self.expires_before):
            return False
        return True

    def describe(self) -> str:
        """For the admin log: the fields that are set."""
        parts = []
        for name in ("namespace", "model", "layout", "min_hits", "idle_seconds", "expires_before", "all"):
            value = getattr(self, name)
            if value:
                parts.append(f"{name}={value}")
        if self.hashes:
            parts.append(f"hashes={len(self.hashes)}")
        if self.hash_prefix:
            parts.append(f"hash_prefix={self.hash_prefix.hex()}")
        if self.tiers:
            parts.append(f"tiers={','.join(sorted(self.tiers))}")
        if self.pinned:
            parts.append("pinned" if self.pinned == apb.PIN_PINNED else "unpinned")
        return " ".join(parts) or "(empty)"


def scoped_namespace(auth: Authenticator, caller: Caller, requested: str) -> tuple[str, bool]:
    """(namespace to act on, whether the caller is confined to it). Listing is a membership oracle
    (FACTS.md, Peers): a non-admin caller only ever sees its own tenant."""
    if auth.enabled and not caller.admin:
        return auth.namespace(caller, requested), True
    if requested:
        check_name("namespace", requested)
    return requested, False


def from_proto(msg: apb.Selector, auth: Authenticator, caller: Caller) -> Selector:
    namespace, scoped = scoped_namespace(auth, caller, msg.namespace)
    if msg.model:
        check_name("model", msg.model)
    if msg.layout and len(msg.layout) != 16:
        raise InvalidArgument(f"layout must be a 16-hex-char fingerprint, got {msg.layout!r}")
    unknown = [t for t in msg.tiers if t not in TIER_NAME]
    if unknown:
        raise InvalidArgument(f"unknown tier {unknown[0]}; use ram, nvme or s3")
    if msg.idle_seconds < 0 or msg.expires_before < 0:
        raise InvalidArgument("idle_seconds and expires_before must not be negative")
    return Selector(
        namespace=namespace, model=msg.model, layout=msg.layout, hashes=frozenset(msg.hashes),
        hash_prefix=msg.hash_prefix, tiers=frozenset(TIER_NAME[t] for t in msg.tiers), min_hits=msg.min_hits,
        idle_seconds=msg.idle_seconds, pinned=msg.pinned, expires_before=msg.expires_before, all=msg.all,
        scoped=scoped,
    )


async def select(store: TieredStore, sel: Selector, now: float,
                 after: bytes = b"") -> AsyncIterator[tuple[EntryMeta, list[str]]]:
    """Matching entries in key order (after `after`), each once, with the tiers holding it."""
    async for meta, tiers in store.entries(sel.prefix(), after):
        if sel.matches(meta, tiers, now):
            yield meta, tiers

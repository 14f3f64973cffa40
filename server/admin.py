"""The control-plane servicer (proto/admin.proto): stats and listing, scoped to the caller's tenant."""

from __future__ import annotations

import time

from kvbucket.core.errors import InvalidArgument
from kvbucket.core.keys import check_name, scope_prefix
from kvbucket.proto import admin_pb2 as apb
from kvbucket.proto import admin_pb2_grpc
from kvbucket.server.auth import Authenticator
from kvbucket.server.errors import rpc
from kvbucket.server.metrics import Metrics
from kvbucket.server.service import TIER_ENUM
from kvbucket.server.store import TieredStore
from kvbucket.server.tiers.base import EntryMeta

TIER_NAME = {v: k for k, v in TIER_ENUM.items()}


def entry_info(meta: EntryMeta, tiers: list[str]) -> apb.EntryInfo:
    k = meta.key
    return apb.EntryInfo(
        namespace=k.namespace, model=k.model, layout=k.layout, hash=k.hash, tokens=meta.tokens,
        raw_bytes=meta.raw_bytes, stored_bytes=meta.stored_bytes, codec=int(meta.codec),
        tiers=[TIER_ENUM[t] for t in tiers], created=meta.created, last_access=meta.last_access,
        hits=meta.hits, expires_at=meta.expires_at, pinned=meta.pinned, dtype=meta.dtype, shape=meta.shape,
    )


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, store: TieredStore, auth: Authenticator, metrics: Metrics, version: str) -> None:
        self.store = store
        self.auth = auth
        self.metrics = metrics
        self.version = version
        self.started = time.time()

    @rpc("stats")
    async def Stats(self, request: apb.StatsRequest, context) -> apb.StatsResponse:
        self.auth.authenticate(context.invocation_metadata())
        m = self.metrics
        tiers = []
        for name, s in self.store.stats().items():
            tiers.append(apb.TierStats(
                tier=TIER_ENUM[name], entries=s.entries, bytes=s.bytes, capacity_bytes=s.capacity_bytes,
                hits=int(_sum(m.hits, tier=name)), misses=s.misses,
                evictions=int(_sum(m.evictions, tier=name)),
            ))
        return apb.StatsResponse(
            tiers=tiers,
            lookups=int(_sum(m.requests, op="lookup")),
            lookup_hits=int(_sum(m.lookup_hits)),
            lookup_keys=int(_sum(m.lookup_keys)),
            puts=int(_sum(m.requests, op="put")),
            gets=int(_sum(m.requests, op="get")),
            get_hits=int(_sum(m.hits)),
            tokens_served=int(_sum(m.tokens_served)),
            version=self.version,
            uptime_seconds=time.time() - self.started,
        )

    @rpc("list_entries")
    async def ListEntries(self, request: apb.ListEntriesRequest, context) -> apb.ListEntriesResponse:
        caller = self.auth.authenticate(context.invocation_metadata())
        namespace = request.namespace
        if self.auth.enabled and not caller.admin:
            namespace = self.auth.namespace(caller, namespace)  # a membership oracle: own tenant only
        if namespace:
            check_name("namespace", namespace)
        if request.model and not namespace:
            raise InvalidArgument("filtering by model needs a namespace too")
        prefix = scope_prefix(namespace, request.model) if namespace else b""
        size = min(request.page_size or 100, 1000)
        after = bytes.fromhex(request.page_token) if request.page_token else b""
        want_tier = TIER_NAME.get(request.tier)
        out: list[apb.EntryInfo] = []
        last = b""
        async for meta, tiers in self.store.entries(prefix):
            kb = meta.key.to_bytes()
            if after and kb <= after:
                continue
            if want_tier and want_tier not in tiers:
                continue
            if len(out) == size:
                return apb.ListEntriesResponse(entries=out, next_page_token=last.hex())
            out.append(entry_info(meta, tiers))
            last = kb
        return apb.ListEntriesResponse(entries=out)


def _sum(counter, **labels) -> float:
    total = 0.0
    for metric in counter.collect():
        for s in metric.samples:
            if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total

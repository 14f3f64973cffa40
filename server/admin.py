"""The control-plane servicer (proto/admin.proto): a thin adapter onto selectors, maintenance,
TTL, quotas and usage. Non-admin callers act on their own tenant only; changes are logged with who,
what selector and how much."""

from __future__ import annotations

import logging
import time

from kvbucket.core.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from kvbucket.core.keys import check_name
from kvbucket.proto import admin_pb2 as apb
from kvbucket.proto import admin_pb2_grpc
from kvbucket.server import maintenance
from kvbucket.server.auth import Authenticator, Caller
from kvbucket.server.clock import Clock
from kvbucket.server.errors import rpc
from kvbucket.server.metrics import Metrics
from kvbucket.server.owner import CacheOwner
from kvbucket.server.selectors import TIER_NAME, Selector, from_proto, scoped_namespace, select
from kvbucket.server.service import TIER_ENUM
from kvbucket.server.store import TieredStore
from kvbucket.server.tiers.base import EntryMeta

log = logging.getLogger("kvbucket.admin")


def entry_info(meta: EntryMeta, tiers: list[str]) -> apb.EntryInfo:
    k = meta.key
    return apb.EntryInfo(
        namespace=k.namespace, model=k.model, layout=k.layout, hash=k.hash, tokens=meta.tokens,
        raw_bytes=meta.raw_bytes, stored_bytes=meta.stored_bytes, codec=int(meta.codec),
        tiers=[TIER_ENUM[t] for t in tiers], created=meta.created, last_access=meta.last_access,
        hits=meta.hits, expires_at=meta.expires_at, pinned=meta.pinned, dtype=meta.dtype, shape=meta.shape,
        ttl_seconds=meta.ttl_seconds, ttl_sliding=meta.sliding, pin_expires_at=meta.pin_expires_at,
    )


def _progress(step: maintenance.Step) -> apb.Progress:
    return apb.Progress(phase=step.phase, tier=TIER_ENUM.get(step.tier, 0), done=step.done, total=step.total,
                        bytes=step.bytes, failed=step.failed, finished=step.finished, message=step.message)


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, store: TieredStore, auth: Authenticator, metrics: Metrics, version: str,
                 owner: CacheOwner | None = None, clock: Clock | None = None, debug_clock: bool = False) -> None:
        self.store = store
        self.auth = auth
        self.metrics = metrics
        self.version = version
        self.clock = clock or Clock()
        self.owner = owner or CacheOwner(store, self.clock, None)
        self.debug_clock = debug_clock
        self.started = time.time()

    def _caller(self, context) -> Caller:
        return self.auth.authenticate(context.invocation_metadata())

    def _admin(self, context, what: str) -> Caller:
        caller = self._caller(context)
        self.auth.require_admin(caller, what)
        return caller

    @rpc("stats")
    async def Stats(self, request: apb.StatsRequest, context) -> apb.StatsResponse:
        self._caller(context)
        m = self.metrics
        return apb.StatsResponse(
            tiers=self._tier_stats(),
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

    def _tier_stats(self) -> list[apb.TierStats]:
        m = self.metrics
        return [apb.TierStats(
            tier=TIER_ENUM[name], entries=s.entries, bytes=s.bytes, capacity_bytes=s.capacity_bytes,
            hits=int(_sum(m.hits, tier=name)), misses=s.misses, evictions=int(_sum(m.evictions, tier=name)),
        ) for name, s in self.store.stats().items()]

    # -- inspection ----------------------------------------------------------------------------

    @rpc("list_entries")
    async def ListEntries(self, request: apb.ListEntriesRequest, context) -> apb.ListEntriesResponse:
        where = apb.Selector()
        where.CopyFrom(request.where)
        if request.namespace:
            where.namespace = request.namespace
        if request.model:
            where.model = request.model
        if request.tier:
            del where.tiers[:]
            where.tiers.append(request.tier)
        sel = from_proto(where, self.auth, self._caller(context))
        size = min(request.page_size or 100, 1000)
        try:
            after = bytes.fromhex(request.page_token)
        except ValueError:
            raise InvalidArgument("page_token is not one this daemon returned") from None
        out: list[apb.EntryInfo] = []
        last = b""
        async for meta, tiers in select(self.store, sel, self.clock(), after):
            if len(out) == size:
                return apb.ListEntriesResponse(entries=out, next_page_token=last.hex())
            out.append(entry_info(meta, tiers))
            last = meta.key.to_bytes()
        return apb.ListEntriesResponse(entries=out)

    @rpc("get_entry")
    async def GetEntry(self, request: apb.GetEntryRequest, context) -> apb.GetEntryResponse:
        namespace, _ = scoped_namespace(self.auth, self._caller(context), request.namespace)
        namespace = namespace or self.auth.default_namespace
        if not (request.model and request.hash):
            raise InvalidArgument("inspect needs a namespace, a model and a hash")
        sel = Selector(namespace=namespace, model=request.model, layout=request.layout,
                       hashes=frozenset([request.hash]))
        found = [entry_info(m, t) async for m, t in select(self.store, sel, self.clock())]
        if not found:
            raise NotFound(f"no entry {request.hash.hex()[:16]} in {namespace}/{request.model}")
        return apb.GetEntryResponse(entries=found)

    # -- removal -------------------------------------------------------------------------------

    @rpc("evict")
    async def Evict(self, request: apb.EvictRequest, context) -> apb.EvictResponse:
        caller = self._caller(context)
        sel = from_proto(request.where, self.auth, caller)
        tiers = {TIER_NAME[t] for t in request.from_tiers if t in TIER_NAME}
        r = await maintenance.evict(self.store, sel, tiers, self.clock(), request.dry_run)
        log.info("admin evict by %s: %s from %s%s -> %d entries, %d bytes (%d pinned skipped)", caller.tenant,
                 sel.describe(), ",".join(sorted(tiers)) or "all tiers", " (dry run)" if request.dry_run else "",
                 r.entries, r.bytes, r.skipped_pinned)
        if not request.dry_run:
            await self.owner.recount()
        return apb.EvictResponse(
            entries=r.entries, bytes=r.bytes, skipped_pinned=r.skipped_pinned,
            tiers=[apb.TierCount(tier=TIER_ENUM[t], entries=r.tier_entries[t], bytes=r.tier_bytes[t])
                   for t in sorted(r.tier_entries)])

    @rpc("reset")
    async def Reset(self, request: apb.ResetRequest, context):
        caller = self._caller(context)
        if not request.namespace and not request.all:
            raise FailedPrecondition("reset without a namespace removes everything you can see; pass all=true"
                                     " (CLI: --all) to mean it, or name a namespace")
        if request.model and not request.namespace:
            raise InvalidArgument("reset of a model needs its namespace too")
        namespace, _ = scoped_namespace(self.auth, caller, request.namespace)
        if request.model:
            check_name("model", request.model)
        what = f"{namespace or '*'}/{request.model or '*'}"
        log.info("admin reset by %s: %s started", caller.tenant, what)
        last = None
        async for step in maintenance.reset(self.store, namespace, request.model, self.clock()):
            last = step
            yield _progress(step)
        await self.owner.recount()
        log.info("admin reset by %s: %s finished (%s)", caller.tenant, what, last.message if last else "")

    @rpc("drain")
    async def Drain(self, request: apb.DrainRequest, context):
        caller = self._admin(context, "drain")
        if request.namespace:
            check_name("namespace", request.namespace)
        last = None
        async for step in maintenance.drain(self.store, request.namespace):
            last = step
            yield _progress(step)
        log.info("admin drain by %s: %s -> %s", caller.tenant, request.namespace or "*",
                 last.message if last else "")

    # -- TTL and pins --------------------------------------------------------------------------

    async def _update(self, context, where: apb.Selector, op: str, fn) -> apb.UpdateResponse:
        caller = self._caller(context)
        sel = from_proto(where, self.auth, caller)
        sel.require_explicit(op)
        keys = [m.key async for m, _ in select(self.store, sel, self.clock())]
        n = sum(fn(k) for k in keys)
        log.info("admin %s by %s: %s -> %d entries", op, caller.tenant, sel.describe(), n)
        return apb.UpdateResponse(entries=n)

    @rpc("set_ttl")
    async def SetTtl(self, request: apb.SetTtlRequest, context) -> apb.UpdateResponse:
        r = request
        if not (r.clear or r.ttl_seconds > 0 or r.expire_at > 0):
            raise InvalidArgument("give ttl_seconds > 0, expire_at > 0, or clear")
        return await self._update(context, r.where, "ttl", lambda k: self.owner.expiry.set_ttl(
            k, r.ttl_seconds, r.sliding, r.expire_at, r.clear))

    @rpc("pin")
    async def Pin(self, request: apb.PinRequest, context) -> apb.UpdateResponse:
        r = request
        if r.ttl_seconds < 0:
            raise InvalidArgument("a pin lease must not be negative")
        return await self._update(context, r.where, "unpin" if r.unpin else "pin",
                                  lambda k: self.owner.expiry.pin(k, r.unpin, r.ttl_seconds))

    # -- policies, capacity, usage ---------------------------------------------------------------

    def _policy(self, namespace: str) -> apb.NamespacePolicy:
        p = self.owner.policies.get(namespace)
        return apb.NamespacePolicy(namespace=namespace, quota_bytes=p.quota_bytes,
                                   default_ttl_seconds=p.default_ttl_seconds, default_sliding=p.default_sliding,
                                   used_bytes=self.owner.quotas.used(namespace))

    @rpc("set_policy")
    async def SetPolicy(self, request: apb.SetPolicyRequest, context) -> apb.NamespacePolicy:
        caller = self._caller(context)
        if request.HasField("quota_bytes"):
            self.auth.require_admin(caller, "setting a quota")
        namespace, _ = scoped_namespace(self.auth, caller, request.namespace)
        if not namespace:
            raise InvalidArgument("set a policy on a named namespace")
        changes = {f: getattr(request, f) for f in ("quota_bytes", "default_ttl_seconds", "default_sliding")
                   if request.HasField(f)}
        self.owner.policies.set(namespace, **changes)
        log.info("admin policy by %s: %s %s", caller.tenant, namespace, changes)
        await self.owner.recount()
        return self._policy(namespace)

    @rpc("list_policies")
    async def ListPolicies(self, request: apb.ListPoliciesRequest, context) -> apb.ListPoliciesResponse:
        namespace, scoped = scoped_namespace(self.auth, self._caller(context), request.namespace)
        names = [namespace] if namespace else [ns for ns, _ in self.owner.policies.items()]
        return apb.ListPoliciesResponse(policies=[self._policy(ns) for ns in names])

    @rpc("capacity")
    async def Capacity(self, request: apb.CapacityRequest, context) -> apb.CapacityResponse:
        caller = self._caller(context)
        evicted = []
        if request.tier:
            self.auth.require_admin(caller, "changing a tier's capacity")
            name = TIER_NAME.get(request.tier)
            if name is None or self.store.tier(name) is None:
                raise InvalidArgument(f"tier {request.tier} is not enabled on this daemon")
            evicted = await self.store.resize(name, int(request.capacity_bytes))
            log.info("admin capacity by %s: %s -> %d bytes, %d entries evicted", caller.tenant, name,
                     request.capacity_bytes, len(evicted))
        return apb.CapacityResponse(tiers=self._tier_stats(), evicted_entries=len(evicted),
                                    evicted_bytes=sum(e.meta.stored_bytes for e in evicted))

    @rpc("usage")
    async def Usage(self, request: apb.UsageRequest, context) -> apb.UsageResponse:
        namespace, _ = scoped_namespace(self.auth, self._caller(context), request.namespace)
        await self.owner.recount()
        u = self.owner.usage
        rows = []
        for (ns, model), c in sorted(u.counters.items()):
            if (namespace and ns != namespace) or (request.model and model != request.model):
                continue
            s = u.stored.get((ns, model))
            asked = c.hits + c.misses
            rows.append(apb.UsageRow(
                namespace=ns, model=model, entries=s.entries if s else 0, tokens_stored=s.tokens if s else 0,
                tiers=[apb.TierCount(tier=TIER_ENUM[t], entries=s.tier_entries[t], bytes=n)
                       for t, n in sorted(s.tier_bytes.items())] if s else [],
                hits=c.hits, misses=c.misses, hit_rate=c.hits / asked if asked else 0.0,
                tokens_served=c.tokens_served, token_hours=c.token_hours, saved=u.saved(c),
            ))
        return apb.UsageResponse(rows=rows, price_per_million_tokens=u.price, since=u.since)

    @rpc("advance_clock")
    async def AdvanceClock(self, request: apb.AdvanceClockRequest, context) -> apb.AdvanceClockResponse:
        caller = self._admin(context, "advancing the clock")
        if not self.debug_clock:
            raise PermissionDenied("this daemon's clock is real; AdvanceClock needs admin.debug_clock=true (tests)")
        if request.seconds < 0:
            raise InvalidArgument("the clock only moves forward")
        now = self.clock.advance(request.seconds)
        log.warning("admin clock by %s: +%.1f s (test-only debug clock)", caller.tenant, request.seconds)
        return apb.AdvanceClockResponse(now=now)


def _sum(counter, **labels) -> float:
    total = 0.0
    for metric in counter.collect():
        for s in metric.samples:
            if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total

"""Admin calls for the blocking `Client` (mixed in): inspection, eviction, reset, TTL, pins,
quotas, capacity, usage and drain. Selectors are keyword filters, e.g.

    kv.evict(namespace="team-a", model="llama", idle_seconds=3600)
    for step in kv.reset(namespace="team-a"): print(step.done, step.total)
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from kvbucket.clients import wire
from kvbucket.proto import admin_pb2 as apb

TIER_ENUMS = {"ram": 1, "nvme": 2, "s3": 3}
PIN_FILTERS = {None: apb.PIN_ANY, True: apb.PIN_PINNED, False: apb.PIN_UNPINNED}


def selector(*, namespace: str = "", model: str = "", layout: str = "", hashes=(), hash_prefix: bytes = b"",
             tiers=(), min_hits: int = 0, idle_seconds: float = 0.0, pinned: bool | None = None,
             expires_before: float = 0.0, all: bool = False) -> apb.Selector:
    return apb.Selector(
        namespace=namespace, model=model, layout=layout, hashes=list(hashes), hash_prefix=hash_prefix,
        tiers=[TIER_ENUMS[t] for t in tiers], min_hits=min_hits, idle_seconds=idle_seconds,
        pinned=PIN_FILTERS[pinned], expires_before=expires_before, all=all,
    )


class AdminMixin:
    def _stream(self, method, request) -> Iterator:
        try:
            yield from method(request, timeout=None, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise wire.translate(exc) from None

    def list_page(self, page_size: int = 100, page_token: str = "", **where) -> apb.ListEntriesResponse:
        return self._call(self.admin.ListEntries, apb.ListEntriesRequest(
            where=selector(**where), page_size=page_size, page_token=page_token))

    def get_entry(self, namespace: str, model: str, hash: bytes, layout: str = "") -> list[apb.EntryInfo]:
        r = self._call(self.admin.GetEntry, apb.GetEntryRequest(namespace=namespace, model=model, hash=hash,
                                                                layout=layout))
        return list(r.entries)

    def evict(self, *, from_tiers=(), dry_run: bool = False, **where) -> apb.EvictResponse:
        return self._call(self.admin.Evict, apb.EvictRequest(
            where=selector(**where), from_tiers=[TIER_ENUMS[t] for t in from_tiers], dry_run=dry_run))

    def reset(self, namespace: str = "", model: str = "", all: bool = False) -> Iterator[apb.Progress]:
        return self._stream(self.admin.Reset, apb.ResetRequest(namespace=namespace, model=model, all=all))

    def drain(self, namespace: str = "") -> Iterator[apb.Progress]:
        return self._stream(self.admin.Drain, apb.DrainRequest(namespace=namespace))

    def set_ttl(self, ttl_seconds: float = 0.0, *, sliding: bool = False, expire_at: float = 0.0,
                clear: bool = False, **where) -> int:
        return self._call(self.admin.SetTtl, apb.SetTtlRequest(
            where=selector(**where), ttl_seconds=ttl_seconds, sliding=sliding, expire_at=expire_at,
            clear=clear)).entries

    def pin(self, *, lease_seconds: float = 0.0, unpin: bool = False, **where) -> int:
        return self._call(self.admin.Pin, apb.PinRequest(where=selector(**where), unpin=unpin,
                                                         ttl_seconds=lease_seconds)).entries

    def set_policy(self, namespace: str, **changes) -> apb.NamespacePolicy:
        return self._call(self.admin.SetPolicy, apb.SetPolicyRequest(namespace=namespace, **changes))

    def policies(self, namespace: str = "") -> list[apb.NamespacePolicy]:
        return list(self._call(self.admin.ListPolicies, apb.ListPoliciesRequest(namespace=namespace)).policies)

    def capacity(self, tier: str | None = None, capacity_bytes: int = 0) -> apb.CapacityResponse:
        return self._call(self.admin.Capacity, apb.CapacityRequest(
            tier=TIER_ENUMS[tier] if tier else 0, capacity_bytes=capacity_bytes))

    def usage(self, namespace: str = "", model: str = "") -> apb.UsageResponse:
        return self._call(self.admin.Usage, apb.UsageRequest(namespace=namespace, model=model))

    def advance_clock(self, seconds: float) -> float:
        """Test-only: needs a daemon started with admin.debug_clock=true."""
        return self._call(self.admin.AdvanceClock, apb.AdvanceClockRequest(seconds=seconds)).now

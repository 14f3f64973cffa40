"""Eviction policies, chosen by name in the settings (`ram.policy = "s3fifo"`)."""

from __future__ import annotations

from kvbucket.server.policies.base import EvictionPolicy, Protected
from kvbucket.server.policies.lru import LRUPolicy
from kvbucket.server.policies.s3fifo import S3FIFOPolicy

POLICIES: dict[str, type[EvictionPolicy]] = {cls.name: cls for cls in (LRUPolicy, S3FIFOPolicy)}


def make_policy(name: str, capacity_bytes: int) -> EvictionPolicy:
    """A fresh policy for a tier of `capacity_bytes`; ValueError names the valid choices."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown eviction policy {name!r}; valid: {', '.join(sorted(POLICIES))}") from None
    return cls(capacity_bytes)


__all__ = ["POLICIES", "EvictionPolicy", "LRUPolicy", "Protected", "S3FIFOPolicy", "make_policy"]

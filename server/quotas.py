"""Per-namespace policies (byte quota, default TTL), persisted, and the quota check on puts.

A quota bounds the raw bytes of a namespace's distinct entries, wherever they are (RAM, NVMe, S3;
one entry counts once). Usage comes from a census of the tier indexes (server/usage.py, every
`census_seconds` and after admin changes) plus the bytes of every new key put since, so between
censuses it over-counts deletions and evictions: the check errs on refusing, never on overshooting.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from kvbucket.core.errors import InvalidArgument, ResourceExhausted
from kvbucket.core.keys import EntryKey, check_name
from kvbucket.server.tiers.base import EntryMeta

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NamespacePolicy:
    quota_bytes: int = 0  # 0: none
    default_ttl_seconds: float = 0.0  # 0: entries do not expire unless the put says so
    default_sliding: bool = False


_NO_POLICY = NamespacePolicy()


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class Policies:
    """Namespace -> NamespacePolicy, saved as JSON in the data dir (temp file, then rename)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._by_ns: dict[str, NamespacePolicy] = {}
        if path is not None and path.exists():
            try:
                raw = json.loads(path.read_text())
                self._by_ns = {ns: NamespacePolicy(**v) for ns, v in raw.items()}
            except (OSError, ValueError, TypeError, AttributeError) as exc:  # AttributeError: not an object
                log.warning("cannot read namespace policies %s, starting without: %s", path, exc)

    def get(self, namespace: str) -> NamespacePolicy:
        return self._by_ns.get(namespace, _NO_POLICY)

    def items(self) -> list[tuple[str, NamespacePolicy]]:
        return sorted(self._by_ns.items())

    def set(self, namespace: str, **changes) -> NamespacePolicy:
        check_name("namespace", namespace)
        if changes.get("quota_bytes", 0) < 0 or changes.get("default_ttl_seconds", 0) < 0:
            raise InvalidArgument("quota and default TTL must not be negative (0 removes them)")
        new = replace(self.get(namespace), **changes)
        if new == NamespacePolicy():
            self._by_ns.pop(namespace, None)
        else:
            self._by_ns[namespace] = new
        self._save()
        return new

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({ns: asdict(p) for ns, p in self._by_ns.items()}, indent=1))
        os.replace(tmp, self.path)


class Quotas:
    def __init__(self, policies: Policies) -> None:
        self.policies = policies
        self._counted: dict[str, int] = {}  # raw bytes per namespace at the last census
        self._since: dict[str, int] = {}  # raw bytes of new keys put since

    def used(self, namespace: str) -> int:
        return self._counted.get(namespace, 0) + self._since.get(namespace, 0)

    def recounted(self, per_namespace: dict[str, int]) -> None:
        self._counted = dict(per_namespace)
        self._since = {}

    def check(self, key: EntryKey, meta: EntryMeta, is_new: bool) -> None:
        """Refuse a new key that would take its namespace over quota; count it otherwise."""
        if not is_new:
            return
        ns = key.namespace
        quota = self.policies.get(ns).quota_bytes
        used = self.used(ns)
        if quota and used + meta.raw_bytes > quota:
            raise ResourceExhausted(
                f"namespace {ns!r} is over its quota: {_mib(used)} used + {_mib(meta.raw_bytes)} > {_mib(quota)};"
                f" free space (kvbucket evict --namespace {ns} --idle 3600, kvbucket reset --namespace {ns}),"
                f" shorten its TTL, or ask an admin to raise it (kvbucket quota set {ns} SIZE)")
        self._since[ns] = self._since.get(ns, 0) + meta.raw_bytes

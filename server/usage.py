"""Usage per namespace x model: what is stored (census of the tier indexes) and what it was worth.

Counters (hits, misses, tokens served, token-hours) live in memory and are saved as JSON in the data
dir after every census and at stop, so they survive a restart. Token-hours are sampled: each census
adds (tokens stored at the previous census) x (hours since it). Money saved is the tokens served from
cache x the configured price per million input tokens: prefill the engines did not pay for.

Prometheus series carry namespace and model labels, bounded: the first `max_label_pairs` pairs seen
keep their own labels, every later pair is summed into namespace="other", model="other".
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from kvbucket.server.store import TieredStore

log = logging.getLogger(__name__)
Pair = tuple[str, str]
OTHER: Pair = ("other", "other")


@dataclass(slots=True)
class Stored:
    entries: int = 0
    tokens: int = 0
    raw_bytes: int = 0
    tier_bytes: Counter = field(default_factory=Counter)
    tier_entries: Counter = field(default_factory=Counter)


@dataclass(slots=True)
class Counters:
    hits: int = 0
    misses: int = 0
    tokens_served: int = 0
    token_hours: float = 0.0


async def census(store: TieredStore) -> dict[Pair, Stored]:
    """What each namespace x model holds now, from the indexes; an entry counts once, bytes per tier.

    Walks each tier's ordered index on its own (`Tier.scan`, read a batch at a time, never sorted
    here) and yields to the event loop every few thousand entries: a census of a million entries
    must not stall the data plane.
    """
    out: dict[Pair, Stored] = {}
    for i, tier in enumerate(store.tiers):
        faster = store.tiers[:i]
        name = tier.name
        n = 0
        async for meta in tier.scan():  # ~1-2 us an entry: the loop is kept lean
            key = meta.key
            s = out.get(pair := (key.namespace, key.model))
            if s is None:
                s = out[pair] = Stored()
            s.tier_bytes[name] += meta.stored_bytes
            s.tier_entries[name] += 1
            if not faster or all(t.meta(key) is None for t in faster):  # counted once, at its fastest tier
                s.entries += 1
                s.tokens += meta.tokens
                s.raw_bytes += meta.raw_bytes
            n += 1
            if n % 4096 == 0:
                await asyncio.sleep(0)
    return out


class Usage:
    def __init__(self, path: Path | None, clock: Callable[[], float], price_per_million: float = 0.0,
                 max_label_pairs: int = 50) -> None:
        self.path = path
        self.clock = clock
        self.price = price_per_million
        self.max_label_pairs = max_label_pairs
        self.counters: dict[Pair, Counters] = {}
        self.stored: dict[Pair, Stored] = {}
        self.since = clock()
        self._sampled_at = clock()
        self._labelled: list[Pair] = []
        self._load()

    # -- events ------------------------------------------------------------------------------

    def read(self, namespace: str, model: str, tokens: int | None) -> None:
        c = self._counters((namespace, model))
        if tokens is None:
            c.misses += 1
        else:
            c.hits += 1
            c.tokens_served += tokens

    def _counters(self, pair: Pair) -> Counters:
        c = self.counters.get(pair)
        if c is None:
            c = self.counters[pair] = Counters()
            if len(self._labelled) < self.max_label_pairs:
                self._labelled.append(pair)
        return c

    def sample(self, stored: dict[Pair, Stored]) -> None:
        """A new census: integrate token-hours over the interval since the previous one."""
        now = self.clock()
        hours = max(now - self._sampled_at, 0.0) / 3600
        for pair, s in self.stored.items():
            if s.tokens and hours:
                self._counters(pair).token_hours += s.tokens * hours
        for pair in stored:
            self._counters(pair)
        self.stored = stored
        self._sampled_at = now

    def saved(self, c: Counters) -> float:
        return c.tokens_served * self.price / 1e6

    # -- persistence -------------------------------------------------------------------------

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            doc = json.loads(self.path.read_text())
            self.since = doc.get("since", self.since)
            self.counters = {(r["namespace"], r["model"]): Counters(**r["counters"]) for r in doc.get("rows", [])}
            self._labelled = [p for p in self.counters][: self.max_label_pairs]
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:  # not a JSON object
            log.warning("cannot read usage counters %s, starting from zero: %s", self.path, exc)

    def save(self) -> None:
        if self.path is None:
            return
        rows = [{"namespace": ns, "model": m, "counters": asdict(c)} for (ns, m), c in self.counters.items()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"since": self.since, "rows": rows}))
        os.replace(tmp, self.path)

    # -- Prometheus --------------------------------------------------------------------------

    def label(self, pair: Pair) -> Pair:
        return pair if pair in self._labelled else OTHER

    def collect(self):
        labels = ["namespace", "model"]
        fams = {
            "hits": CounterMetricFamily("kvbucket_usage_hits", "Chunks served by Get", labels=labels),
            "misses": CounterMetricFamily("kvbucket_usage_misses", "Chunks asked for by Get, not found",
                                          labels=labels),
            "tokens_served": CounterMetricFamily("kvbucket_usage_tokens_served", "Tokens served from cache",
                                                 labels=labels),
            "token_hours": CounterMetricFamily("kvbucket_usage_token_hours", "Tokens stored x hours (sampled)",
                                               labels=labels),
        }
        saved = CounterMetricFamily("kvbucket_usage_saved", "Tokens served x price per million input tokens",
                                    labels=labels)
        sums: dict[Pair, Counters] = {}
        for pair, c in self.counters.items():
            s = sums.setdefault(self.label(pair), Counters())
            s.hits, s.misses = s.hits + c.hits, s.misses + c.misses
            s.tokens_served, s.token_hours = s.tokens_served + c.tokens_served, s.token_hours + c.token_hours
        for pair, c in sums.items():
            for name, fam in fams.items():
                fam.add_metric(list(pair), getattr(c, name))
            saved.add_metric(list(pair), self.saved(c))
        held = GaugeMetricFamily("kvbucket_usage_bytes", "Bytes held (stored form), at the last census",
                                 labels=[*labels, "tier"])
        entries = GaugeMetricFamily("kvbucket_usage_entries", "Entries held, at the last census", labels=labels)
        by_tier: Counter = Counter()
        by_pair: Counter = Counter()
        for pair, s in self.stored.items():
            lp = self.label(pair)
            by_pair[lp] += s.entries
            for tier, n in s.tier_bytes.items():
                by_tier[(*lp, tier)] += n
        for key, n in by_tier.items():
            held.add_metric(list(key), n)
        for lp, n in by_pair.items():
            entries.add_metric(list(lp), n)
        yield from (*fams.values(), saved, held, entries)

    def describe(self):
        return []

"""Bulk admin operations over the tiers: evict by selector, reset a scope, drain to S3.

Reset and drain are async generators of `Step`s so the servicer can stream progress; each ends with
a step whose `finished` is true. They act through the TieredStore and the tiers' own bulk helpers
(S3Tier.delete_listed, reset markers), never on another tier's internals.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

from kvbucket.core.errors import FailedPrecondition
from kvbucket.core.keys import scope_prefix
from kvbucket.server.selectors import Selector, select
from kvbucket.server.store import TieredStore

log = logging.getLogger(__name__)
_PROGRESS_EVERY = 64
_DRAIN_CONCURRENCY = 8


@dataclass(slots=True)
class Step:
    phase: str
    tier: str = ""
    done: int = 0
    total: int = 0
    bytes: int = 0
    failed: int = 0
    finished: bool = False
    message: str = ""


@dataclass(slots=True)
class Evicted:
    entries: int = 0
    bytes: int = 0
    skipped_pinned: int = 0
    tier_entries: Counter = None
    tier_bytes: Counter = None


async def evict(store: TieredStore, sel: Selector, from_tiers: set[str], now: float,
                dry_run: bool = False) -> Evicted:
    """Remove matching entries from `from_tiers` (all tiers when empty); pinned entries stay."""
    sel.require_explicit("evict")
    names = from_tiers or {t.name for t in store.tiers}
    out = Evicted(tier_entries=Counter(), tier_bytes=Counter())
    matched = [(m, tiers) async for m, tiers in select(store, sel, now)]
    for meta, tiers in matched:
        held = names.intersection(tiers)
        if not held:
            continue
        if meta.pinned:
            out.skipped_pinned += 1
            continue
        if dry_run:
            freed = {t: m.stored_bytes for t in held if (m := store.tier(t).meta(meta.key)) is not None}
        elif held == set(tiers):
            freed = {t: m.stored_bytes for t in held if (m := store.tier(t).meta(meta.key)) is not None}
            await store.delete(meta.key)
        else:
            freed = await store.remove_from(meta.key, held)
        if freed:
            out.entries += 1
            for t, n in freed.items():
                out.tier_entries[t] += 1
                out.tier_bytes[t] += n
                out.bytes += n
    return out


async def reset(store: TieredStore, namespace: str, model: str, now: float) -> AsyncIterator[Step]:
    """Delete a whole scope ("" = everything) from every tier, pinned entries included.

    Local tiers first (queued write-behind copies are cancelled), then S3 by listing the bucket, so
    objects other daemons wrote go too; a reset marker then tells every daemon sharing the bucket to
    drop its own copies created before `now`. A last pass removes copies a write that was already in
    flight when the reset began may have landed meanwhile.
    """
    prefix = scope_prefix(namespace, model) if namespace else b""
    store.cancel_pending(prefix)
    for tier in store.tiers:
        if tier.name == "s3":
            continue
        keys = [m.key async for m in tier.scan(prefix)]
        step = Step("delete", tier.name, total=len(keys))
        yield step
        for key in keys:
            meta = tier.meta(key)
            try:
                if meta is not None and await tier.delete(key):
                    step.done += 1
                    step.bytes += meta.stored_bytes
            except Exception as exc:  # a failing tier: count and carry on, the report says so
                step.failed += 1
                log.warning("reset: delete of %s from %s failed: %s", key, tier.name, exc)
            if (step.done + step.failed) % _PROGRESS_EVERY == 0:
                yield step
        yield step
    s3 = store.tier("s3")
    if s3 is not None:
        step = Step("delete", "s3", total=sum(1 for _ in [m async for m in s3.scan(prefix)]))
        yield step
        async for done, size in s3.delete_listed(namespace, model):
            step.done, step.bytes = done, size
            step.total = max(step.total, done)
            yield step
        await s3.put_reset_marker(namespace, model, now)
        yield Step("marker", "s3", done=1, total=1, message="other daemons drop their copies at their next refresh")
    late = 0
    for tier in store.tiers:
        for meta in [m async for m in tier.scan(prefix)]:
            if meta.created <= now:
                late += await store.delete(meta.key)
    yield Step("done", finished=True, done=late, message=f"{late} late copies removed")


def drop_local(store: TieredStore, namespace: str, model: str, before: float) -> asyncio.Task:
    """Apply another daemon's reset: delete local (non-S3) copies of a scope created before `before`.
    As `reset` does, write-behind copies of the scope are cancelled first (a chunk promoted from S3
    just before the reset is on its way to NVMe; one being written is deleted once it lands)."""

    async def run() -> int:
        prefix = scope_prefix(namespace, model) if namespace else b""
        store.cancel_pending(prefix)
        n = 0
        for tier in store.tiers:
            if tier.name == "s3":
                continue
            for meta in [m async for m in tier.scan(prefix)]:
                if meta.created < before:
                    n += await tier.delete(meta.key)
        if n:
            log.info("reset marker %s/%s: dropped %d local copies", namespace or "*", model or "*", n)
        return n

    return asyncio.get_running_loop().create_task(run())


async def drain(store: TieredStore, namespace: str) -> AsyncIterator[Step]:
    """Copy every local entry S3 does not hold yet to S3, fastest copy first; then wait for queues."""
    s3 = store.tier("s3")
    if s3 is None:
        raise FailedPrecondition("drain writes to S3, and this daemon has no S3 tier (--s3-bucket)")
    await store.flush(timeout=30)
    prefix = scope_prefix(namespace) if namespace else b""
    todo = [(m, tiers) async for m, tiers in store.entries(prefix) if "s3" not in tiers]
    step = Step("copy", "s3", total=len(todo))
    yield step
    sem = asyncio.Semaphore(_DRAIN_CONCURRENCY)

    async def copy(meta, tiers) -> int:
        async with sem:
            for name in tiers:
                rec = await store.tier(name).get(meta.key)
                if rec is None:
                    continue
                raw = await asyncio.to_thread(_decoded, rec)
                await s3.put(meta.key, raw, meta)
                return raw.header.raw_length
        return -1

    pending = [asyncio.ensure_future(copy(m, t)) for m, t in todo]
    for fut in asyncio.as_completed(pending):
        try:
            n = await fut
        except Exception as exc:
            n = -1
            log.warning("drain: copy to S3 failed: %s", exc)
        if n < 0:
            step.failed += 1
        else:
            step.done += 1
            step.bytes += n
        if (step.done + step.failed) % 8 == 0:
            yield step
    step.finished = True
    step.message = f"{step.done} copied, {step.failed} failed"
    yield step


def _decoded(rec):
    """Decode (and so checksum-verify) a local record before it is written anywhere else."""
    from kvbucket.server.store import _verified_raw

    return _verified_raw(rec)

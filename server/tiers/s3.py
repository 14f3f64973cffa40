"""The S3 tier: one object per chunk in an S3-compatible bucket, shared by every daemon that names it.

Object name: `{prefix}{namespace}/{model}/{layout}/{hash hex}`, namespace and model url-quoted
(`/` becomes %2F, so the four fields split back unambiguously). The body is the self-describing record,
recoded to `codec` (ZSTD: cold data is read rarely, so the ratio wins over speed). Tokens, raw bytes,
codec, dtype and shape travel as user metadata, so LIST + HEAD rebuild an index without reading bodies.

Index: an in-memory manifest, filled by a paginated ListObjectsV2 at `open()` and refreshed every
`manifest_refresh_s` by a background task, so daemon B finds what daemon A wrote. Puts and deletes
update it at once. Entries learned from a listing get their details (tokens, raw bytes, dtype, shape)
by HEAD, at most 512 per refresh; until then their meta has `tokens == 0` (contains() needs none).

Failures: S3 unreachable, timing out or answering 5xx makes `get` a miss (counted in
`stats().extra["errors"]`) and `put` raise Unavailable; timeouts are short and retries few, so a dead
endpoint costs about `timeout_s`, not minutes. A body whose header does not decode is deleted and
counted as `corrupt`; a payload that fails its checksum is returned for the store to verify.
`pinned` and `expires_at` live in the manifest only (S3 metadata cannot change without a copy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from typing import ClassVar
from urllib.parse import quote, unquote

from sortedcontainers import SortedList

from kvbucket.core.codecs import Codec
from kvbucket.core.errors import DataLoss, InvalidArgument, Unavailable
from kvbucket.core.keys import EntryKey
from kvbucket.core.record import Record, decode_record, recode
from kvbucket.server.tiers.base import EntryMeta, Evicted, Tier, TierStats, scan_ordered

log = logging.getLogger(__name__)

_HEAD_CONCURRENCY = 16
_HEADS_PER_REFRESH = 512  # details of a huge bucket arrive over several refreshes, not all at open
_session = None


def _get_session():
    """One botocore session per process: building one loads the service models (~0.5 s)."""
    global _session
    if _session is None:
        from aiobotocore.session import get_session

        _session = get_session()
    return _session
_DELETE_BATCH = 1000  # the DeleteObjects limit
_RESET_DIR = ".reset/"  # {prefix}.reset/{namespace|*}/{model|*}/{unix ms}: the namespace ".reset" is reserved


def _user_meta(meta: EntryMeta, record: Record) -> dict[str, str]:
    h = record.header
    return {
        "tokens": str(h.tokens), "raw-bytes": str(h.raw_length), "codec": str(int(h.codec)),
        "dtype": h.dtype, "shape": ",".join(map(str, h.shape)), "created": repr(meta.created),
        "expires-at": repr(meta.expires_at), "ttl": repr(meta.ttl_seconds), "sliding": str(int(meta.sliding)),
    }


def _meta_from_user(key: EntryKey, size: int, fallback_created: float, um: dict[str, str]) -> EntryMeta:
    try:
        created = float(um.get("created", fallback_created))
        shape = tuple(int(d) for d in um["shape"].split(",") if d) if um.get("shape") else ()
        return EntryMeta(key, int(um.get("tokens", 0)), int(um.get("raw-bytes", 0)), size,
                         Codec(int(um.get("codec", 0))), created, created, dtype=um.get("dtype", ""), shape=shape,
                         expires_at=float(um.get("expires-at", 0.0)), ttl_seconds=float(um.get("ttl", 0.0)),
                         sliding=um.get("sliding") == "1")
    except (ValueError, KeyError):  # metadata written by something else: keep what the listing said
        return EntryMeta(key, 0, 0, size, Codec.NONE, fallback_created, fallback_created)


class S3Tier(Tier):
    """Chunks as objects in `bucket` under `prefix`; unbounded (the bucket's lifecycle rules own expiry)."""

    name: ClassVar[str] = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "kvbucket/",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        path_style: bool = True,
        clock: Callable[[], float] = time.time,
        codec: Codec | None = Codec.ZSTD,
        manifest_refresh_s: float = 30.0,
        timeout_s: float = 5.0,
        *,
        max_attempts: int = 2,
        create_bucket: bool = False,
        list_page_size: int = 1000,
    ) -> None:
        if prefix and not prefix.endswith("/"):
            raise InvalidArgument(f"S3 prefix must end with '/', got {prefix!r}")
        self.bucket, self.prefix, self.endpoint_url = bucket, prefix, endpoint_url
        self._region, self._ak, self._sk, self._path_style = region, access_key, secret_key, path_style
        self._clock, self._codec = clock, codec
        self._refresh_s, self._timeout_s, self._attempts = manifest_refresh_s, timeout_s, max_attempts
        self._create_bucket, self._page_size = create_bucket, list_page_size
        self._manifest: dict[EntryKey, EntryMeta] = {}
        self._order = SortedList()  # the manifest's key bytes, sorted (scan)
        self._by_bytes: dict[bytes, EntryKey] = {}
        self._bytes = 0  # sum of the manifest's stored_bytes, kept as it changes (stats() is scraped)
        self._dirty: dict[EntryKey, EntryMeta | None] | None = None  # local changes during a listing
        self._unheaded: set[EntryKey] = set()
        self._seen_markers: set[str] = set()
        self._resets: list[tuple[str, str, float]] = []
        self._stats = TierStats()
        self._extra = Counter(errors=0, corrupt=0, refreshes=0, refresh_errors=0)
        self._client = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._refresher: asyncio.Task | None = None
        self._last_refresh = 0.0

    # ---- naming --------------------------------------------------------------------------------

    def object_name(self, key: EntryKey) -> str:
        return (f"{self.prefix}{quote(key.namespace, safe='')}/{quote(key.model, safe='')}/"
                f"{key.layout}/{key.hash.hex()}")

    def _parse_name(self, name: str) -> EntryKey | None:
        try:
            ns, model, layout, hexhash = name[len(self.prefix):].split("/")
            return EntryKey(unquote(ns), unquote(model), layout, bytes.fromhex(hexhash))
        except Exception:  # a foreign object under our prefix: not ours to index
            return None

    # ---- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> S3Tier:
        """Connect, build the manifest (an unreachable S3 is logged, not raised) and start refreshing."""
        from aiobotocore.config import AioConfig

        config = AioConfig(
            connect_timeout=self._timeout_s, read_timeout=self._timeout_s,
            retries={"total_max_attempts": self._attempts, "mode": "standard"},
            s3={"addressing_style": "path" if self._path_style else "auto"},
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
        )
        self._stack = contextlib.AsyncExitStack()
        self._client = await self._stack.enter_async_context(_get_session().create_client(
            "s3", region_name=self._region, endpoint_url=self.endpoint_url,
            aws_access_key_id=self._ak, aws_secret_access_key=self._sk, config=config,
        ))
        if self._create_bucket:
            await self._ensure_bucket()
        await self.refresh()
        if self._refresh_s > 0:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())
        return self

    start = open

    async def _ensure_bucket(self) -> None:
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except Exception:
            try:
                await self._client.create_bucket(Bucket=self.bucket)
            except Exception as exc:  # raced with another daemon, or unreachable: the listing will say
                log.warning("S3 tier: cannot create bucket %s: %s", self.bucket, exc)

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = self._client = None

    async def __aenter__(self) -> S3Tier:
        return await self.open()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # ---- manifest ------------------------------------------------------------------------------

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            await self.refresh()

    async def refresh(self) -> bool:
        """List the bucket and replace the manifest; False (manifest kept) if S3 did not answer.

        The sorted key index follows the listing by its differences, only rebuilt when over a quarter
        of the entries changed. At a million entries (benchmarks/bench_s3_refresh.py) the rebuild held
        the event loop 1.8-2.7 s every refresh; the update takes 0.24-0.31 s when other daemons removed
        entries (the manifest is walked to find them) and under 1 ms when none were."""
        if self._client is None:
            return False
        self._dirty = {}
        listed: dict[EntryKey, EntryMeta] = {}
        new: list[EntryKey] = []  # listed, not in the manifest when listed
        seen: set[int] = set()  # id() of the manifest's metas whose keys were listed (ints hash fast)
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix, PaginationConfig={"PageSize": self._page_size})
            async for page in pages:
                for obj in page.get("Contents", ()):
                    if obj["Key"].startswith(self.prefix + _RESET_DIR):
                        self._note_marker(obj["Key"])
                        continue
                    key = self._parse_name(obj["Key"])
                    if key is None:
                        continue
                    known = self._manifest.get(key)
                    created = obj["LastModified"].timestamp()
                    if known is None:
                        new.append(key)
                    else:
                        seen.add(id(known))
                    if known is not None and known.stored_bytes == obj["Size"]:
                        listed[key] = known
                    else:
                        listed[key] = EntryMeta(key, 0, 0, obj["Size"], Codec.NONE, created, created)
                        self._unheaded.add(key)
        except Exception as exc:
            self._extra["refresh_errors"] += 1
            log.warning("S3 tier: listing s3://%s/%s failed: %s", self.bucket, self.prefix, exc)
            self._dirty = None
            return False
        for key, meta in self._dirty.items():  # what this daemon did while the listing ran wins
            if meta is None:
                listed.pop(key, None)
            else:
                listed[key] = meta
        self._dirty = None
        self._reorder(listed, new, seen)
        self._manifest = listed
        self._bytes = sum(m.stored_bytes for m in listed.values())  # once per listing, itself O(n)
        self._unheaded = {k for k in self._unheaded if k in listed and listed[k].tokens == 0}
        self._extra["refreshes"] += 1
        self._last_refresh = self._clock()
        if self._unheaded:
            await self._fill_details()
        return True

    def _reorder(self, listed: dict[EntryKey, EntryMeta], new: list[EntryKey], seen: set[int]) -> None:
        """Make the sorted index hold `listed`'s keys, from the manifest's: `new` are the listed keys
        the manifest lacked when listed (it may have gained some since: this daemon's puts), `seen`
        the metas it had for the others (only keys whose meta is not among them are looked up)."""
        added = [k for k in new if k in listed and k not in self._manifest]
        removed = len(self._manifest) - (len(listed) - len(added))  # manifest keys not listed
        if len(added) + removed > len(listed) // 4:
            self._by_bytes = {k.to_bytes(): k for k in listed}
            self._order = SortedList(self._by_bytes)
            return
        if removed:
            for key in [k for k, m in self._manifest.items() if id(m) not in seen and k not in listed]:
                kb = key.to_bytes()
                self._order.remove(kb)
                del self._by_bytes[kb]
        for key in added:
            kb = key.to_bytes()
            self._order.add(kb)
            self._by_bytes[kb] = key

    async def _fill_details(self) -> None:
        """HEAD the entries a listing introduced, to learn tokens/raw bytes/dtype/shape."""
        sem = asyncio.Semaphore(_HEAD_CONCURRENCY)

        async def head(key: EntryKey) -> None:
            async with sem:
                try:
                    resp = await self._client.head_object(Bucket=self.bucket, Key=self.object_name(key))
                except Exception:
                    return
            cur = self._manifest.get(key)
            if cur is not None and cur.tokens == 0:
                new = _meta_from_user(key, resp["ContentLength"], cur.created, resp.get("Metadata", {}))
                self._manifest[key] = new.copy(pinned=cur.pinned, expires_at=cur.expires_at or new.expires_at)
                self._bytes += new.stored_bytes - cur.stored_bytes
            self._unheaded.discard(key)

        await asyncio.gather(*(head(k) for k in list(self._unheaded)[:_HEADS_PER_REFRESH]))

    def _set(self, key: EntryKey, meta: EntryMeta | None) -> None:
        old = self._manifest.pop(key, None) if meta is None else self._manifest.get(key)
        if meta is not None:
            self._manifest[key] = meta
        if (old is None) != (meta is None):  # added or removed: the order changes
            kb = key.to_bytes()
            if meta is None:
                self._order.remove(kb)
                del self._by_bytes[kb]
            else:
                self._order.add(kb)
                self._by_bytes[kb] = key
        self._bytes += (meta.stored_bytes if meta is not None else 0) - (old.stored_bytes if old is not None else 0)
        if self._dirty is not None:
            self._dirty[key] = meta

    # ---- the Tier protocol ---------------------------------------------------------------------

    def _require_client(self):
        if self._client is None:
            raise Unavailable("S3 tier is not open: call `await tier.open()` first")
        return self._client

    async def get(self, key: EntryKey) -> Record | None:
        if self._client is None:
            self._stats.misses += 1
            return None
        name = self.object_name(key)
        try:
            resp = await self._client.get_object(Bucket=self.bucket, Key=name)
            async with resp["Body"] as body:
                buf = await body.read()
        except Exception as exc:
            self._stats.misses += 1
            if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                self._set(key, None)  # deleted by another daemon since the last listing
            else:
                self._extra["errors"] += 1
                log.warning("S3 tier: get %s failed: %s", name, exc)
            return None
        try:
            record = decode_record(buf)
        except DataLoss as exc:
            self._extra["corrupt"] += 1
            log.warning("S3 tier: corrupt object %s deleted: %s", name, exc)
            with contextlib.suppress(Exception):
                await self.delete(key)
            self._stats.misses += 1
            return None
        self._stats.hits += 1
        if key not in self._manifest:
            self._set(key, _meta_from_user(key, len(buf), self._clock(), resp.get("Metadata", {})))
        return record

    async def put(self, key: EntryKey, record: Record, meta: EntryMeta) -> list[Evicted]:
        client = self._require_client()
        if self._codec is not None and record.header.codec != self._codec:
            record = await asyncio.to_thread(recode, record, self._codec)
        body = record.to_bytes()
        try:
            await client.put_object(Bucket=self.bucket, Key=self.object_name(key), Body=body,
                                    Metadata=_user_meta(meta, record))
        except Exception as exc:
            self._extra["errors"] += 1
            raise Unavailable(f"S3 tier cannot write s3://{self.bucket}/{self.object_name(key)}: {exc}") from exc
        h = record.header
        self._set(key, meta.copy(key=key, stored_bytes=len(body), codec=h.codec, tokens=h.tokens,
                                 raw_bytes=h.raw_length, dtype=h.dtype, shape=h.shape))
        return []

    async def delete(self, key: EntryKey) -> bool:
        client = self._require_client()
        existed = key in self._manifest
        try:
            await client.delete_object(Bucket=self.bucket, Key=self.object_name(key))
        except Exception as exc:
            self._extra["errors"] += 1
            raise Unavailable(f"S3 tier cannot delete {self.object_name(key)}: {exc}") from exc
        self._set(key, None)
        return existed

    async def delete_many(self, keys: Sequence[EntryKey]) -> int:
        """DeleteObjects in batches of 1000; returns how many were deleted."""
        client = self._require_client()
        done = 0
        for i in range(0, len(keys), _DELETE_BATCH):
            batch = keys[i : i + _DELETE_BATCH]
            try:
                resp = await client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": self.object_name(k)} for k in batch], "Quiet": True})
            except Exception as exc:
                self._extra["errors"] += 1
                raise Unavailable(f"S3 tier cannot delete objects: {exc}") from exc
            failed = {e["Key"] for e in resp.get("Errors", ())}
            for k in batch:
                if self.object_name(k) not in failed:
                    self._set(k, None)
                    done += 1
        return done

    async def delete_prefix(self, prefix: bytes) -> int:
        """Delete every manifest entry whose `key.to_bytes()` starts with `prefix` (see keys.scope_prefix)."""
        return await self.delete_many([m.key async for m in self.scan(prefix)])

    # ---- reset: bulk delete by listing, and markers other daemons apply to their own tiers ------

    def scope_object_prefix(self, namespace: str = "", model: str = "") -> str:
        """The object-name prefix of a namespace (and model); empty namespace: every entry."""
        if not namespace:
            return self.prefix
        name = f"{self.prefix}{quote(namespace, safe='')}/"
        return f"{name}{quote(model, safe='')}/" if model else name

    async def delete_listed(self, namespace: str = "", model: str = "") -> AsyncIterator[tuple[int, int]]:
        """Delete every object of a scope found by listing the bucket (not only this daemon's manifest),
        in DeleteObjects batches; yields (deleted so far, bytes so far) after each batch."""
        client = self._require_client()
        done = size = 0
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.scope_object_prefix(namespace, model),
            PaginationConfig={"PageSize": _DELETE_BATCH})
        try:
            async for page in pages:
                objs = [(o["Key"], o["Size"]) for o in page.get("Contents", ())
                        if not o["Key"].startswith(self.prefix + _RESET_DIR)]
                if not objs:
                    continue
                resp = await client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": name} for name, _ in objs], "Quiet": True})
                failed = {e["Key"] for e in resp.get("Errors", ())}
                for name, n in objs:
                    if name in failed:
                        continue
                    if (key := self._parse_name(name)) is not None:
                        self._set(key, None)
                    done, size = done + 1, size + n
                yield done, size
        except Exception as exc:
            self._extra["errors"] += 1
            raise Unavailable(f"S3 tier cannot delete under s3://{self.bucket}/{self.prefix}: {exc}") from exc

    async def put_reset_marker(self, namespace: str, model: str, at: float) -> None:
        """Tell every daemon sharing the bucket to drop its local copies of a scope created before `at`."""
        name = (f"{self.prefix}{_RESET_DIR}{quote(namespace, safe='') or '*'}/"
                f"{quote(model, safe='') or '*'}/{int(at * 1000)}")
        self._seen_markers.add(name)
        try:
            await self._require_client().put_object(Bucket=self.bucket, Key=name, Body=b"")
        except Exception as exc:
            self._extra["errors"] += 1
            raise Unavailable(f"S3 tier cannot write reset marker {name}: {exc}") from exc

    def _note_marker(self, name: str) -> None:
        if name in self._seen_markers:
            return
        self._seen_markers.add(name)
        try:
            ns, model, at_ms = name[len(self.prefix + _RESET_DIR):].split("/")
            self._resets.append((unquote(ns) if ns != "*" else "", unquote(model) if model != "*" else "",
                                 int(at_ms) / 1000))
        except ValueError:
            log.warning("S3 tier: ignoring malformed reset marker %s", name)

    def take_resets(self) -> list[tuple[str, str, float]]:
        """Resets seen in the bucket since the last call: (namespace or "", model or "", unix time)."""
        out, self._resets = self._resets, []
        return out

    def meta(self, key: EntryKey) -> EntryMeta | None:
        return self._manifest.get(key)

    def scan(self, prefix: bytes = b"", after: bytes = b"") -> AsyncIterator[EntryMeta]:
        return scan_ordered(self._order, prefix, after, self._meta_of)

    def _meta_of(self, kb: bytes) -> EntryMeta | None:
        key = self._by_bytes.get(kb)
        return self._manifest.get(key) if key is not None else None

    def stats(self) -> TierStats:
        s = self._stats
        s.entries = len(self._manifest)
        s.bytes = self._bytes
        s.extra = {k: float(v) for k, v in self._extra.items()}
        s.extra["manifest_age_s"] = self._clock() - self._last_refresh if self._last_refresh else -1.0
        return s

    def touch(self, key: EntryKey, now: float) -> None:
        m = self._manifest.get(key)
        if m is not None:
            m.last_access = now
            m.hits += 1

    def set_meta(self, key: EntryKey, **changes) -> EntryMeta | None:
        m = self._manifest.get(key)
        if m is None:
            return None
        new = m.copy(**changes)
        self._set(key, new)
        return new

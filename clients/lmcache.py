"""kvbucket as an LMCache 0.5.6 remote storage plugin, loaded through LMCache's config alone.

    remote_storage_plugins: ["kvbucket"]
    extra_config:
      remote_storage_plugin.kvbucket.module_path: kvbucket.clients.lmcache
      remote_storage_plugin.kvbucket.class_name: KVBucketAdapter
      remote_storage_plugin.kvbucket.url: kvbucket://127.0.0.1:7070

Keys. A `CacheEngineKey` (model_name, world_size, worker_id, chunk_hash, dtype, tags) becomes
scope model = the model name in kvbucket's alphabet (+ LMCache tags), layout tp_rank/tp_size =
worker_id/world_size, hash = chunk_hash as a signed big-endian int64 (wider ints, bytes and str
hashes keep their own bytes, digested only beyond 64 bytes).

Values. Every value is one fixed-size slot: LMCache's `RemoteMetadata` (4 * (2 + 5 * groups) bytes,
28 for one group), then the MemoryObj's bytes, then zeros. kvbucket requires a value to be exactly
its layout's size, and `get` must name the layout before it knows the value, so the layout is the
full-chunk slot: dtype = the key's KV dtype (so daemon-side shuffle codecs see real elements; the
header is a multiple of 4 bytes and keeps them aligned), shape = (slot elements,). A partial last
chunk is padded, and the stored metadata gives back its real shape and length.

Threads. LMCache runs the async methods on its storage event loop and calls `exists_sync`,
`batched_contains` and `remove_sync` from other threads. One blocking `Client` (a thread-safe gRPC
channel) serves both: sync methods call it in place, async ones through a small executor, which also
keeps payload copies off LMCache's loop. A grpc.aio channel would be bound to one loop.

Faults never reach LMCache: every call has a deadline (`timeout`, `lookup_timeout`), a failure is
a miss (False, None, 0) or a dropped put, warnings are rate-limited, and once the daemon is
unreachable calls are skipped for `backoff` seconds.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from lmcache.v1.protocol import RemoteMetadata
from lmcache.v1.storage_backend.connector import ConnectorAdapter, ConnectorContext, extract_plugin_type
from lmcache.v1.storage_backend.connector.base_connector import RemoteConnector

from kvbucket.clients.sdk import Client
from kvbucket.clients.wire import as_bytes
from kvbucket.core import errors
from kvbucket.core.buffers import BufferPool
from kvbucket.core.keys import DTYPE_SIZES, MAX_HASH_BYTES, Layout, sanitize_name

logger = logging.getLogger(__name__)

PLUGIN_TYPE = "kvbucket"
MAX_KEYS_PER_CALL = 4096  # the daemon's limit on hashes in one call
STAGING_POOL_BYTES = 256 << 20
_TORCH_DTYPES = {
    torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
    torch.float8_e4m3fn: "float8_e4m3fn", torch.float8_e5m2: "float8_e5m2",
    torch.uint8: "uint8", torch.int8: "int8",
}


# -- key mapping (pure) ------------------------------------------------------------------------


def _fit(raw: bytes) -> bytes:
    return raw if 1 <= len(raw) <= MAX_HASH_BYTES else hashlib.blake2b(raw, digest_size=32).digest()


def hash_bytes(chunk_hash) -> bytes:
    """A chunk hash as kvbucket hash bytes: int64 as 8 signed big-endian bytes (LMCache's are often
    negative), wider ints in as many bytes as they need, bytes/str as themselves."""
    if isinstance(chunk_hash, int):
        n = 8 if -(1 << 63) <= chunk_hash < (1 << 63) else (chunk_hash.bit_length() + 8) // 8
        return _fit(chunk_hash.to_bytes(n, "big", signed=True))
    if isinstance(chunk_hash, str):
        return _fit(chunk_hash.encode())
    return _fit(bytes(chunk_hash))


def key_hash(key) -> bytes:
    """The hash part of a key; a LayerCacheEngineKey adds its layer so layers never collide."""
    base = hash_bytes(key.chunk_hash)
    layer = getattr(key, "layer_id", None)
    return base if layer is None else _fit(base + b"/L" + int(layer).to_bytes(4, "big"))


def model_identity(model_name: str, tags=None) -> str:
    """The model name in kvbucket's alphabet, LMCache tags appended as `+k=v`.

    A name that had to change gets `=` and a digest of the original, so two names that sanitize
    alike stay apart."""
    return sanitize_name(model_name + "".join(f"+{k}={v}" for k, v in (tags or ())))


def slot_layout(key, slot_bytes: int, chunk_size: int) -> Layout:
    dtype = _TORCH_DTYPES.get(key.dtype, "uint8")
    if slot_bytes % DTYPE_SIZES[dtype]:
        dtype = "uint8"
    return Layout(dtype, (slot_bytes // DTYPE_SIZES[dtype],), tokens_per_chunk=chunk_size,
                  tp_rank=key.worker_id, tp_size=key.world_size)


# -- settings and faults -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """`remote_storage_plugin.<name>.<field>` keys of LMCache's extra_config."""

    url: str
    namespace: str | None = None  # None: the URL's, else the daemon's default or the token's tenant
    token: str | None = None
    timeout: float = 5.0  # deadline of a get or put call, seconds
    lookup_timeout: float = 1.0  # deadline of exists / contains
    backoff: float = 1.0  # after the daemon was unreachable, skip calls this long
    workers: int = 4  # threads serving LMCache's async calls
    codec: str = "none"  # compression on the wire: none, lz4 or zstd (blosc2, shuffled by the KV dtype)

    @classmethod
    def from_extra_config(cls, extra: dict | None, plugin_name: str) -> Settings:
        prefix = f"remote_storage_plugin.{plugin_name}."
        got = {k[len(prefix):]: v for k, v in (extra or {}).items() if k.startswith(prefix)}
        if not got.get("url"):
            raise ValueError(f"set extra_config {prefix}url, e.g. kvbucket://127.0.0.1:7070")
        casts = {"timeout": float, "lookup_timeout": float, "backoff": float, "workers": int}
        fields = {f: casts.get(f, str)(got[f]) for f in cls.__slots__ if got.get(f) not in (None, "")}
        return cls(**fields)


class _Faults:
    """Turns failures into misses: rate-limited warnings, and a short pause after an unreachable
    daemon so a dead one costs one deadline per `backoff`, not one per call. Thread-safe."""

    def __init__(self, backoff: float, warn_every: float = 30.0, clock=time.monotonic) -> None:
        self.backoff = backoff
        self.warn_every = warn_every
        self.clock = clock
        self.failures: dict[str, int] = {}  # op -> count, for tests and debugging
        self._down_until = float("-inf")
        self._warned: dict[str, float] = {}
        self._lock = threading.Lock()

    def down(self) -> bool:
        return self.clock() < self._down_until

    def skipped(self, op: str) -> None:
        with self._lock:
            self.failures[op] = self.failures.get(op, 0) + 1

    def record(self, op: str, exc: BaseException) -> None:
        now = self.clock()
        with self._lock:
            self.failures[op] = self.failures.get(op, 0) + 1
            if isinstance(exc, errors.Unavailable):
                self._down_until = now + self.backoff
            kind = f"{op}:{type(exc).__name__}"
            if now - self._warned.get(kind, float("-inf")) < self.warn_every:
                return
            self._warned[kind] = now
            count = self.failures[op]
        logger.warning("kvbucket %s failed (%s: %s); treated as a miss/drop (%d %s failures so far)",
                       op, type(exc).__name__, exc, count, op)


# -- the connector -----------------------------------------------------------------------------


class KVBucketConnector(RemoteConnector):
    """LMCache's RemoteConnector over a kvbucket daemon."""

    def __init__(self, loop: asyncio.AbstractEventLoop, local_cpu_backend, config=None, metadata=None,
                 plugin_name: str | None = None) -> None:
        config = config if config is not None else local_cpu_backend.config
        metadata = metadata if metadata is not None else local_cpu_backend.metadata
        super().__init__(config, metadata)  # meta_shapes, full_chunk_size_bytes, remote_metadata_bytes
        self.plugin_name = plugin_name or _find_plugin_name(config)
        self.settings = Settings.from_extra_config(config.extra_config, self.plugin_name)
        self.loop = loop
        self.local_cpu_backend = local_cpu_backend
        self.chunk_size = metadata.chunk_size
        self.slot_bytes = self.remote_metadata_bytes + self.full_chunk_size_bytes
        s = self.settings
        self.client = Client(s.url, namespace=s.namespace, token=s.token, timeout=s.timeout, codec=s.codec)
        self.faults = _Faults(s.backoff)
        self._pool = ThreadPoolExecutor(max_workers=s.workers, thread_name_prefix="kvbucket-lmcache")
        self._staging = BufferPool(max(STAGING_POOL_BYTES, 2 * self.slot_bytes))
        self._scopes: dict[tuple, Client] = {}
        logger.info("kvbucket plugin %r -> %s (slot %d bytes)", self.plugin_name, s.url, self.slot_bytes)

    # -- key → scope ---------------------------------------------------------------------------

    def _scope(self, key) -> Client:
        tags = getattr(key, "tags", None)
        ident = (key.model_name, tags, key.dtype, key.worker_id, key.world_size)
        client = self._scopes.get(ident)
        if client is None:
            layout = slot_layout(key, self.slot_bytes, self.chunk_size)
            model = model_identity(key.model_name, tags)
            client = self._scopes[ident] = self.client.scoped(model=model, layout=layout)
        return client

    def _runs(self, keys):
        """Consecutive keys of one scope, at most MAX_KEYS_PER_CALL each: (client, start, hashes)."""
        start = 0
        while start < len(keys):
            client = self._scope(keys[start])
            end = start + 1
            while end < len(keys) and end - start < MAX_KEYS_PER_CALL and self._scope(keys[end]) is client:
                end += 1
            yield client, start, [key_hash(k) for k in keys[start:end]]
            start = end

    # -- blocking bodies (run in LMCache's threads or our executor) -----------------------------

    def _guard(self, op: str, default, fn, *args):
        if self.faults.down():
            self.faults.skipped(op)
            return default
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - nothing may escape into LMCache
            self.faults.record(op, exc)
            return default

    def _lookup(self, keys) -> int:
        hits = 0
        for client, _, hashes in self._runs(keys):
            n = client.lookup(hashes, timeout=self.settings.lookup_timeout).hits
            hits += n
            if n < len(hashes):
                break
        return hits

    def _put(self, keys, objs) -> None:
        for client, start, hashes in self._runs(keys):
            stored = client.put_many(self._slots(hashes, objs[start : start + len(hashes)]))
            if not all(stored):
                logger.debug("kvbucket declined %d of %d chunks", stored.count(False), len(stored))

    def _slots(self, hashes, objs):
        """(hash, slot, tokens) items, packed lazily into one reused staging buffer at a time: the
        Put stream has framed (copied) an item before it asks for the next one."""
        buf = None
        try:
            for h, obj in zip(hashes, objs, strict=True):
                kv = as_bytes(obj.byte_array)
                if len(kv) > self.slot_bytes - self.remote_metadata_bytes:  # skip it, keep the batch
                    self.faults.record("put", errors.ResourceExhausted(f"{len(kv)}-byte value exceeds the slot"))
                    continue
                if buf is None:
                    buf = self._staging.acquire(self.slot_bytes)
                RemoteMetadata(len(kv), obj.get_shapes(), obj.get_dtypes(), obj.get_memory_format()
                               ).serialize_into(buf)
                end = self.remote_metadata_bytes + len(kv)
                buf[self.remote_metadata_bytes : end] = kv
                if end < self.slot_bytes:
                    buf[end:] = bytes(self.slot_bytes - end)
                yield h, buf, self._tokens(obj)
        finally:
            if buf is not None:
                self._staging.release(buf)

    def _tokens(self, obj) -> int:
        try:
            return min(max(int(obj.get_num_tokens()), 1), self.chunk_size)
        except Exception:  # noqa: BLE001 - binary (serde-compressed) objects have no token count
            return self.chunk_size

    def _get(self, keys) -> list:
        out: list = [None] * len(keys)
        for client, start, hashes in self._runs(keys):
            bufs = [self._staging.acquire(self.slot_bytes) for _ in hashes]
            try:
                views = client.get_many(hashes, out=bufs)
                for i, view in enumerate(views):
                    out[start + i] = None if view is None else self._unpack(view)
            except BaseException:
                _release(out)
                raise
            finally:
                for b in bufs:
                    self._staging.release(b)
        return out

    def _unpack(self, view):
        """A MemoryObj from LMCache's allocator holding the slot's value, or None."""
        mb = self.remote_metadata_bytes
        try:
            meta = RemoteMetadata.deserialize(view[:mb])
            if not 0 < meta.length <= len(view) - mb:
                raise errors.DataLoss(f"slot metadata says {meta.length} bytes in a {len(view)}-byte slot")
        except Exception as exc:  # noqa: BLE001
            self.faults.record("decode", exc)
            return None
        # busy_loop=False: a full CPU pool makes this hit a miss instead of stalling the reader
        obj = self.local_cpu_backend.allocate(meta.shapes, meta.dtypes, meta.fmt, busy_loop=False)
        if obj is None:
            self.faults.record("get", errors.ResourceExhausted("LMCache's CPU buffer is full; dropped a hit"))
            return None
        dst = as_bytes(obj.byte_array)
        if len(dst) < meta.length:
            obj.ref_count_down()
            self.faults.record("decode", errors.DataLoss(f"allocated {len(dst)} bytes for {meta.length}"))
            return None
        dst[: meta.length] = view[mb : mb + meta.length]
        return obj

    def _delete(self, keys) -> int:
        return sum(client.delete(hashes) for client, _, hashes in self._runs(keys))

    async def _offload(self, op: str, default, fn, *args, release=None):
        """Run a blocking body on our executor. If the awaiting task is cancelled (LMCache cancels
        timed-out gets), wait for the body anyway - a put's buffer is LMCache's again once we
        return - and hand back what a late get allocated."""
        if self.faults.down():
            self.faults.skipped(op)
            return default
        try:
            fut = asyncio.get_running_loop().run_in_executor(
                self._pool, functools.partial(self._guard, op, default, fn, *args))
        except RuntimeError as exc:  # executor shut down by close()
            self.faults.record(op, exc)
            return default
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            await asyncio.wait([fut])
            if release is not None and not fut.cancelled() and fut.exception() is None:
                release(fut.result())
            raise

    # -- RemoteConnector -----------------------------------------------------------------------

    async def exists(self, key) -> bool:
        return await self._offload("exists", 0, self._lookup, [key]) == 1

    def exists_sync(self, key) -> bool:
        return self._guard("exists", 0, self._lookup, [key]) == 1

    def support_batched_contains(self) -> bool:
        return True

    def batched_contains(self, keys) -> int:
        """Leading keys stored: one Lookup call (per run of keys sharing a scope)."""
        return self._guard("contains", 0, self._lookup, list(keys)) if keys else 0

    def support_batched_async_contains(self) -> bool:
        return True

    async def batched_async_contains(self, lookup_id: str, keys, pin: bool = False) -> int:
        return await self._offload("contains", 0, self._lookup, list(keys)) if keys else 0

    async def get(self, key):
        return (await self._offload("get", [None], self._get, [key], release=_release))[0]

    def support_batched_get(self) -> bool:
        return True

    async def batched_get(self, keys) -> list:
        keys = list(keys)
        return await self._offload("get", [None] * len(keys), self._get, keys, release=_release)

    def support_batched_get_non_blocking(self) -> bool:
        return True

    async def batched_get_non_blocking(self, lookup_id: str, keys) -> list:
        """The leading hits only; objects after the first miss go back to LMCache's allocator."""
        objs = await self.batched_get(keys)
        n = next((i for i, o in enumerate(objs) if o is None), len(objs))
        _release(objs[n:])
        return objs[:n]

    async def put(self, key, memory_obj) -> None:
        await self._offload("put", None, self._put, [key], [memory_obj])

    def support_batched_put(self) -> bool:
        return True

    async def batched_put(self, keys, memory_objs) -> None:
        await self._offload("put", None, self._put, list(keys), list(memory_objs))

    def remove_sync(self, key) -> bool:
        return self._guard("remove", 0, self._delete, [key]) > 0

    async def list(self) -> list[str]:
        """Empty: kvbucket keys cannot be turned back into LMCache key strings (use `kvbucket ls`)."""
        return []

    def support_ping(self) -> bool:
        return True

    async def ping(self) -> int:
        """0 when the daemon answers within lookup_timeout, else LMCache's timeout code -1."""
        ok = await self._offload("ping", False, self.client.ping, self.settings.lookup_timeout)
        return 0 if ok else -1

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)  # waits for bodies
        self.client.close()
        self._staging.clear()

    def __repr__(self) -> str:
        return f"<KVBucketConnector {self.plugin_name} {self.settings.url}>"


def _release(objs) -> None:
    for obj in objs:
        if obj is not None:
            obj.ref_count_down()


def _find_plugin_name(config) -> str:
    """When LMCache builds the connector class itself it passes no plugin name: find the one entry
    of remote_storage_plugins whose module_path is this module."""
    extra = config.extra_config or {}
    names = [n for n in (config.remote_storage_plugins or [])
             if extra.get(f"remote_storage_plugin.{n}.module_path") == __name__]
    if len(names) != 1:
        raise ValueError(f"{len(names)} remote_storage_plugins use {__name__}; with several, set "
                         "class_name: KVBucketAdapter so each gets its own settings")
    return names[0]


class KVBucketAdapter(ConnectorAdapter):
    """What `class_name` should name: builds a KVBucketConnector for plugins named `kvbucket` or
    `kvbucket.<instance>` (several daemons: one plugin each, each with its own keys)."""

    def __init__(self) -> None:
        super().__init__(f"plugin://{PLUGIN_TYPE}")

    def can_parse(self, url: str) -> bool:
        return url.startswith("plugin://") and extract_plugin_type(url[len("plugin://"):]) == PLUGIN_TYPE

    def create_connector(self, context: ConnectorContext) -> KVBucketConnector:
        return KVBucketConnector(context.loop, context.local_cpu_backend, context.config, context.metadata,
                                 plugin_name=context.plugin_name)

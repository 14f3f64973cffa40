"""The NVMe tier: chunks in RocksDB (rocksdict, raw mode), split into parts, committed in one batch.

Layout, one column family, two key prefixes so startup reads only metadata:

    b"M" + key.to_bytes()                     -> meta row (struct, ~80 bytes; see _MetaCodec)
    b"D" + key.to_bytes() + u32 BE part index -> part i of the encoded record (header + payload)

A put writes every part and the meta row in ONE WriteBatch: a reader sees all of it or none. Parts are
`part_bytes` (default 1 MiB) because RocksDB writes 256 KiB-1 MiB values at ~1.3 GB/s and stalls on
4-16 MiB values (FACTS.md). On open, only the b"M" range is iterated to rebuild the index.

Durability (the WAL is off for every write):
- A write lives in the memtable until RocksDB flushes it to an SST (when `write_buffer_size` fills,
  on `flush()`, on `close()`). After kill -9 the unflushed tail of writes is lost; everything in an
  SST survives. A batch never straddles two memtables, and there is one column family, so a chunk
  is whole or absent after a crash, never partial. Deletes and `set_meta` updates are lost the same
  way: an evicted chunk may come back after a crash (it is still a valid chunk), a pin may revert.
- Why not the WAL: with the WAL every byte is written twice (WAL + SST), roughly halving put
  throughput for 32 MiB chunks; with `sync=True` each put also waits for an fsync (~0.8 GB/s disk
  ceiling here). Both buy survival of recent puts, which for a cache of recomputable KV is worth less
  than the bandwidth. Mixing WAL writes for meta-only updates is unsafe (a logged meta row could
  outlive its unlogged parts), so every write is unlogged and `flush()` is the durability point.
- `get` trusts nothing: a meta row whose parts are missing or whose record header does not decode is
  deleted and counted as `corrupt`; a payload that fails its checksum is returned for the store to
  verify (the tier protocol), and RocksDB's own block checksums are skipped on reads for speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar

from sortedcontainers import SortedList

from kvbucket.core.codecs import Codec
from kvbucket.core.errors import DataLoss, InvalidArgument, ResourceExhausted, Unavailable
from kvbucket.core.keys import _SEP, EntryKey, check_hash
from kvbucket.core.record import Record, RecordHeader, decode_header, decode_record
from kvbucket.server.policies import make_policy
from kvbucket.server.tiers.base import EntryMeta, Evicted, Tier, TierStats, scan_ordered

log = logging.getLogger(__name__)

_META, _DATA = b"M", b"D"
_PART = struct.Struct(">I")


class _MetaCodec:
    """Meta row: fixed struct, then dtype (ascii) and ndim x u64 shape."""

    VERSION = 2
    FIXED = struct.Struct("<BBB?IQQQIIddd")
    TTL = struct.Struct("<d?d")  # v2: ttl_seconds, sliding, pin_expires_at (v1 rows lack it)

    @classmethod
    def encode(cls, m: EntryMeta, length: int, nparts: int) -> bytes:
        dtype = m.dtype.encode()
        return cls.FIXED.pack(
            cls.VERSION, int(m.codec), len(dtype), m.pinned, m.tokens, m.raw_bytes, m.stored_bytes,
            length, nparts, min(m.hits, 0xFFFFFFFF), m.created, m.last_access, m.expires_at,
        ) + cls.TTL.pack(m.ttl_seconds, m.sliding, m.pin_expires_at) + dtype + struct.pack(
            f"<{len(m.shape)}Q", *m.shape)

    @classmethod
    def decode(cls, key: EntryKey, raw: bytes) -> tuple[EntryMeta, int, int]:
        (version, codec, dlen, pinned, tokens, raw_bytes, stored, length, nparts, hits, created,
         last_access, expires_at) = cls.FIXED.unpack_from(raw)
        if version not in (1, cls.VERSION):
            raise DataLoss(f"meta row version {version} is not supported")
        off = cls.FIXED.size
        ttl, sliding, pin_until = 0.0, False, 0.0
        if version >= 2:
            ttl, sliding, pin_until = cls.TTL.unpack_from(raw, off)
            off += cls.TTL.size
        dtype = raw[off : off + dlen].decode("ascii")
        ndim = (len(raw) - off - dlen) // 8
        shape = struct.unpack_from(f"<{ndim}Q", raw, off + dlen)
        meta = EntryMeta(key, tokens, raw_bytes, stored, _CODECS[codec], created, last_access, hits,
                         expires_at, pinned, dtype, tuple(shape), ttl, sliding, pin_until)
        return meta, length, nparts

    @classmethod
    def peek_layout(cls, raw: bytes) -> tuple[int, int]:
        """(record length, number of parts) of a meta row."""
        _, _, _, _, _, _, _, length, nparts, *_ = cls.FIXED.unpack_from(raw)
        return length, nparts


_CODECS = {int(c): c for c in Codec}
_set = object.__setattr__


class _KeyParser:
    """EntryKey.from_bytes for startup: 100k keys share a few namespace/model/layout triples, so each
    triple is validated once (through EntryKey itself) and later keys skip the regex checks."""

    def __init__(self) -> None:
        self._scopes: dict[bytes, tuple[str, str, str]] = {}

    def parse(self, kb: bytes) -> EntryKey:
        scope, _, h = _split_key(kb)
        names = self._scopes.get(scope)
        if names is None:
            k = EntryKey.from_bytes(kb)
            self._scopes[scope] = (k.namespace, k.model, k.layout)
            return k
        check_hash(h)
        key = object.__new__(EntryKey)  # fields already validated for this scope: skip __post_init__
        _set(key, "namespace", names[0])
        _set(key, "model", names[1])
        _set(key, "layout", names[2])
        _set(key, "hash", h)
        return key


def _split_key(kb: bytes) -> tuple[bytes, bytes, bytes]:
    """(scope prefix, separator, hash): the hash is everything after the third separator."""
    i = kb.index(_SEP)
    i = kb.index(_SEP, i + 1)
    i = kb.index(_SEP, i + 1)
    return kb[: i + 1], _SEP, kb[i + 1 :]


@dataclass(slots=True)
class _Slot:
    meta: EntryMeta
    length: int  # bytes of the encoded record (header + payload) on disk
    nparts: int


def _meta_key(kb: bytes) -> bytes:
    return _META + kb


def _part_keys(kb: bytes, nparts: int, start: int = 0) -> list[bytes]:
    return [_DATA + kb + _PART.pack(i) for i in range(start, nparts)]


def _split(record: Record, part_bytes: int) -> Iterator[bytes]:
    """The encoded record cut into `part_bytes` pieces, one at a time: rocksdict takes only bytes, so
    each piece is a copy, and consuming them one by one keeps that copy in a warm, reused buffer
    (materializing all 32 pieces of a 32 MiB chunk first made puts ~2x slower)."""
    head = record.header.encode()
    payload = memoryview(record.payload).cast("B")
    first = max(part_bytes - len(head), 0)
    yield head + bytes(payload[:first])
    for i in range(first, len(payload), part_bytes):
        yield bytes(payload[i : i + part_bytes])


def _count_parts(length: int, part_bytes: int) -> int:
    return max(1, -(-length // part_bytes))


def _placeholder(meta: EntryMeta) -> Record:
    """What `Evicted.record` holds: the store does not demote from NVMe, so the payload is not read.
    It has no payload, so `raw()` raises DataLoss; it can never pass for the chunk."""
    header = RecordHeader(meta.codec, meta.dtype, meta.shape, meta.raw_bytes, 0, 0, meta.tokens)
    return Record(header, b"")


class RocksTier(Tier):
    """Chunks on local disk in RocksDB; LRU eviction beyond `capacity_bytes` (0 = unbounded).

    The constructor opens the database and rebuilds the index from the meta rows (blocking; ~1 s per
    100k entries); call it through `asyncio.to_thread` from async code if that matters.
    """

    name: ClassVar[str] = "nvme"

    def __init__(
        self,
        path: str | os.PathLike,
        capacity_bytes: int,
        policy: str = "lru",
        part_bytes: int = 1 << 20,
        clock: Callable[[], float] = time.time,
        executor: Executor | None = None,
        *,
        write_buffer_bytes: int = 128 << 20,
    ) -> None:
        try:  # unbounded (0) still needs an order: a policy of a practically infinite capacity
            self._policy = make_policy(policy, capacity_bytes or 1 << 62)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        if part_bytes < 4096:
            raise InvalidArgument("part_bytes must be at least 4096")
        self.path = os.fspath(path)
        self.capacity_bytes = capacity_bytes
        self.part_bytes = part_bytes
        self._clock = clock
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(4, thread_name_prefix="kvbucket-rocks")
        self._index: dict[EntryKey, _Slot] = {}
        self._by_bytes: dict[bytes, EntryKey] = {}  # the policy's keys back to entry keys
        self._order = SortedList()  # the keys of _by_bytes, sorted (scan)
        self._readers: Counter[EntryKey] = Counter()
        self._locks: dict[EntryKey, list] = {}  # key -> [Lock, users]
        self._pending: set[asyncio.Task] = set()
        self._used = 0
        self._reserved = 0
        self._stats = TierStats(capacity_bytes=capacity_bytes)
        self._extra = Counter(corrupt=0, read_errors=0, write_errors=0)
        self._db = self._open(write_buffer_bytes)
        self._closed = False
        t0 = time.perf_counter()
        self._rebuild_index()
        self._extra["open_seconds"] = time.perf_counter() - t0
        self._trim_on_open()

    # ---- opening -------------------------------------------------------------------------------

    def _open(self, write_buffer_bytes: int):
        import rocksdict as rd

        opts = rd.Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_compression_type(rd.DBCompressionType.none())
        opts.set_write_buffer_size(write_buffer_bytes)
        opts.set_max_write_buffer_number(4)
        opts.set_target_file_size_base(256 << 20)
        opts.set_max_background_jobs(4)
        self._wopts = rd.WriteOptions()
        self._wopts.disable_wal = True
        self._ropts = rd.ReadOptions()
        self._ropts.set_verify_checksums(False)
        try:
            os.makedirs(self.path, exist_ok=True)
            db = rd.Rdict(self.path, opts)
        except Exception as exc:  # OSError, or rocksdict's plain Exception carrying RocksDB's status
            raise Unavailable(f"cannot open the NVMe tier at {self.path!r}: {exc}") from exc
        db.set_read_options(self._ropts)
        db.set_write_options(self._wopts)
        return db

    def _rebuild_index(self) -> None:
        import rocksdict as rd

        ro = rd.ReadOptions()
        ro.set_verify_checksums(False)
        ro.fill_cache(False)
        ro.set_iterate_upper_bound(bytes([_META[0] + 1]))
        rows = []
        bad = []
        keys = _KeyParser()
        for mk, raw in self._db.items(from_key=_META, read_opt=ro):
            try:
                kb = mk[1:]
                rows.append((kb, *_MetaCodec.decode(keys.parse(kb), raw)))
            except Exception:  # a meta row we cannot parse names nothing we can serve
                bad.append(mk)
        rows.sort(key=lambda r: r[1].last_access)
        self._order.update(r[0] for r in rows)  # one sort, not an insertion per row
        for kb, meta, length, nparts in rows:
            self._insert(_Slot(meta, length, nparts), kb, ordered=True)
        for mk in bad:
            self._db.delete(mk)
        self._extra["corrupt"] += len(bad)
        self._extra["recovered_entries"] = len(rows)

    def _trim_on_open(self) -> None:
        """Capacity may have shrunk, or evictions were lost in a crash: evict down to capacity."""
        victims = self._pick_victims(0, exclude=None)
        if victims is None:
            return
        if victims:
            self._write(self._batch(deletes=victims))

    # ---- index helpers (event-loop thread only) ------------------------------------------------

    @contextlib.asynccontextmanager
    async def _key_lock(self, key: EntryKey):
        """Serialize writes (put, delete, meta rewrite) of one key; the lock lives while it is used."""
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self._locks[key]

    def _drop(self, key: EntryKey, *, evicted: bool = False) -> _Slot | None:
        slot = self._index.pop(key, None)
        if slot is not None:
            kb = key.to_bytes()
            if self._by_bytes.pop(kb, None) is not None:
                self._order.remove(kb)
            if not evicted:  # the policy already let go of its victims
                self._policy.remove(kb)
            self._used -= slot.length
        return slot

    def _insert(self, slot: _Slot, kb: bytes | None = None, ordered: bool = False) -> None:
        """Index `slot`; `ordered`: its key bytes are in `_order` already (a rebuild adds them at once)."""
        key = slot.meta.key
        kb = kb or key.to_bytes()
        self._index[key] = slot
        if not ordered and kb not in self._by_bytes:
            self._order.add(kb)
        self._by_bytes[kb] = key
        self._policy.insert(kb, slot.length)
        self._used += slot.length

    def _pick_victims(self, need: int, exclude: EntryKey | None) -> list[_Slot] | None:
        """Remove entries from the index, in policy order, until `need` more bytes fit; None (and no
        change) if they cannot. Pinned entries, entries being read or written and `exclude` stay."""
        if not self.capacity_bytes:
            return []
        over = self._used + self._reserved + need - self.capacity_bytes
        if over <= 0:
            return []

        chosen = self._policy.victims(over, lambda kb: self._protected(kb, exclude))
        if chosen is None:
            return None
        return [self._drop(self._by_bytes[kb], evicted=True) for kb in chosen]

    def _protected(self, kb: bytes, exclude: EntryKey | None = None) -> bool:
        k = self._by_bytes[kb]
        return k == exclude or self._index[k].meta.pinned or k in self._readers or k in self._locks

    async def resize(self, capacity_bytes: int) -> list[Evicted]:
        """A new capacity (0: unbounded), applied at once: evicts down to it, or, when pinned and busy
        entries hold more than it, evicts every other entry and stays over until they are released."""
        if capacity_bytes < 0:
            raise InvalidArgument(f"NVMe tier capacity must be >= 0, got {capacity_bytes}")
        self.capacity_bytes = self._stats.capacity_bytes = capacity_bytes
        self._policy.resize(capacity_bytes or 1 << 62)
        victims = self._pick_victims(0, exclude=None)
        if victims is None:
            free = sum(s.length for kb, k in self._by_bytes.items() if not self._protected(kb)
                       for s in (self._index[k],))
            chosen = self._policy.victims(free, self._protected) or []
            victims = [self._drop(self._by_bytes[kb], evicted=True) for kb in chosen]
        if victims:
            try:
                await self._run(lambda: self._write(self._batch(deletes=victims)))
            except BaseException:
                for v in victims:
                    if v.meta.key not in self._index:
                        self._insert(v)
                raise
            self._stats.evictions += len(victims)
        return [Evicted(v.meta.key, _placeholder(v.meta), v.meta) for v in victims]

    # ---- blocking work (executor) --------------------------------------------------------------

    def _batch(self, puts=(), deletes: list[_Slot] = (), extra_deletes=()):
        import rocksdict as rd

        wb = rd.WriteBatch(raw_mode=True)
        for slot in deletes:
            kb = slot.meta.key.to_bytes()
            wb.delete(_meta_key(kb))
            for pk in _part_keys(kb, slot.nparts):
                wb.delete(pk)
        for k in extra_deletes:
            wb.delete(k)
        for k, v in puts:
            wb.put(k, v)
        return wb

    def _write(self, wb) -> None:
        try:
            self._db.write(wb, self._wopts)
        except Exception as exc:  # RocksDB IOError (no space, read-only fs) arrives as a plain Exception
            self._extra["write_errors"] += 1
            raise Unavailable(f"NVMe tier at {self.path!r} cannot write: {exc}") from exc

    def _commit(self, key, record, meta, length, victims, old) -> int:
        """One batch: victims' deletes, the parts, stale parts of the old version, the meta row."""
        nparts = _count_parts(length, self.part_bytes)
        kb = key.to_bytes()
        wb = self._batch(deletes=victims, extra_deletes=_part_keys(kb, old.nparts, nparts) if old else ())
        n = 0
        for pk, part in zip(_part_keys(kb, nparts), _split(record, self.part_bytes)):
            wb.put(pk, part)
            n += 1
        if n != nparts:
            raise DataLoss(f"record is shorter than its header says ({n} parts of {nparts})")
        wb.put(_meta_key(kb), _MetaCodec.encode(meta, length, nparts))
        self._write(wb)
        return nparts

    def _read(self, kb: bytes, nparts: int) -> tuple[bytes | None, list[bytes | None]]:
        """The meta row and `nparts` parts in one MultiGet (one consistent view)."""
        got = self._db.get([_meta_key(kb), *_part_keys(kb, nparts)], read_opt=self._ropts)
        return got[0], got[1:]

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ---- the Tier protocol ---------------------------------------------------------------------

    async def put(self, key: EntryKey, record: Record, meta: EntryMeta) -> list[Evicted]:
        if self._closed:
            raise Unavailable("NVMe tier is closed")
        h = record.header
        meta = meta.copy(key=key, codec=h.codec, tokens=h.tokens, raw_bytes=h.raw_length,
                         stored_bytes=len(h.encode()) + h.payload_length, dtype=h.dtype, shape=h.shape)
        async with self._key_lock(key):
            return await self._put_locked(key, record, meta)

    async def _put_locked(self, key: EntryKey, record: Record, meta: EntryMeta) -> list[Evicted]:
        length = meta.stored_bytes  # header + payload: what the parts hold on disk
        if memoryview(record.payload).nbytes != record.header.payload_length:
            raise InvalidArgument("record payload length does not match its header")
        if self.capacity_bytes and length > self.capacity_bytes:
            raise ResourceExhausted(f"chunk of {length} bytes exceeds the NVMe tier capacity {self.capacity_bytes}")
        old = self._index.get(key)
        need = length - (old.length if old else 0)
        victims = self._pick_victims(need, exclude=key)
        if victims is None:
            raise ResourceExhausted(f"NVMe tier is full: {length} bytes do not fit; the rest is pinned or in use")
        reserve = max(need, 0)
        self._reserved += reserve
        try:
            async with contextlib.AsyncExitStack() as held:
                for v in victims:  # fresh, uncontended locks: a put of a victim's key waits for this batch
                    await held.enter_async_context(self._key_lock(v.meta.key))
                nparts = await self._run(self._commit, key, record, meta, length, victims, old)
        except BaseException:
            for v in victims:  # the batch did not land: they are still on disk
                if v.meta.key not in self._index:
                    self._insert(v)
            raise
        finally:
            self._reserved -= reserve
        if old is not None:
            self._drop(key)
        self._insert(_Slot(meta, length, nparts))
        self._stats.evictions += len(victims)
        return [Evicted(v.meta.key, _placeholder(v.meta), v.meta) for v in victims]

    async def get(self, key: EntryKey) -> Record | None:
        for _ in range(3):  # retry when an overwrite landed between the index lookup and the read
            slot = self._index.get(key)
            if slot is None or self._closed:
                self._stats.misses += 1
                return None
            kb = key.to_bytes()
            try:
                row, parts = await self._run(self._read, kb, slot.nparts)
            except Exception as exc:
                self._extra["read_errors"] += 1
                log.warning("NVMe tier read failed for %s: %s", key, exc)
                self._stats.misses += 1
                return None
            if row is None:  # deleted meanwhile
                self._stats.misses += 1
                return None
            length, nparts = _MetaCodec.peek_layout(row)
            if nparts != slot.nparts or length != slot.length:
                continue
            record = self._assemble(parts, length)
            if record is None:
                await self._discard_corrupt(key, slot)
                return None
            self._stats.hits += 1
            self.touch(key, self._clock())
            return record
        self._stats.misses += 1
        return None

    @staticmethod
    def _assemble(parts: list[bytes | None], length: int) -> Record | None:
        if any(p is None for p in parts):
            return None
        buf = parts[0] if len(parts) == 1 else b"".join(parts)
        if len(buf) != length:
            return None
        try:
            decode_header(buf)
            return decode_record(buf)
        except DataLoss:
            return None

    async def _discard_corrupt(self, key: EntryKey, slot: _Slot) -> None:
        self._extra["corrupt"] += 1
        log.warning("NVMe tier: corrupt entry %s deleted", key)
        with contextlib.suppress(Unavailable):
            await self._delete_slot(key, slot)

    async def delete(self, key: EntryKey) -> bool:
        async with self._key_lock(key):
            slot = self._index.get(key)
            return slot is not None and await self._delete_slot(key, slot)

    async def _delete_slot(self, key: EntryKey, slot: _Slot) -> bool:
        if self._index.get(key) is not slot:
            return False
        self._drop(key)
        try:
            await self._run(lambda: self._write(self._batch(deletes=[slot])))
        except BaseException:
            if key not in self._index:
                self._insert(slot)
            raise
        return True

    def meta(self, key: EntryKey) -> EntryMeta | None:
        slot = self._index.get(key)
        return slot.meta if slot else None

    def scan(self, prefix: bytes = b"", after: bytes = b"") -> AsyncIterator[EntryMeta]:
        return scan_ordered(self._order, prefix, after, self._meta_of)

    def _meta_of(self, kb: bytes) -> EntryMeta | None:
        key = self._by_bytes.get(kb)
        slot = self._index.get(key) if key is not None else None
        return slot.meta if slot is not None else None

    def stats(self) -> TierStats:
        s = self._stats
        s.entries, s.bytes = len(self._index), self._used
        s.extra = {k: float(v) for k, v in self._extra.items()}
        return s

    def touch(self, key: EntryKey, now: float) -> None:
        """In memory only (a write per hit is not worth it); persisted at the next `set_meta`."""
        slot = self._index.get(key)
        if slot is not None:
            slot.meta.last_access = now
            slot.meta.hits += 1
            self._policy.touch(key.to_bytes())

    def set_meta(self, key: EntryKey, **changes) -> EntryMeta | None:
        """Updates the index now and rewrites the meta row in the background (see `flush`)."""
        slot = self._index.get(key)
        if slot is None:
            return None
        slot.meta = slot.meta.copy(**changes)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the event loop (tools, tests): write it now
            row = _MetaCodec.encode(slot.meta, slot.length, slot.nparts)
            self._write(self._batch([(_meta_key(key.to_bytes()), row)]))
            return slot.meta
        task = loop.create_task(self._persist_meta(key, slot))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return slot.meta

    async def _persist_meta(self, key: EntryKey, slot: _Slot) -> None:
        async with self._key_lock(key):
            if self._index.get(key) is not slot:  # deleted or replaced meanwhile: nothing to rewrite
                return
            row = _MetaCodec.encode(slot.meta, slot.length, slot.nparts)
            try:
                await self._run(lambda: self._write(self._batch([(_meta_key(key.to_bytes()), row)])))
            except Unavailable as exc:
                log.warning("NVMe tier: meta update for %s not persisted: %s", key, exc)

    @contextlib.asynccontextmanager
    async def reading(self, key: EntryKey) -> AsyncIterator[Record | None]:
        self._readers[key] += 1
        try:
            yield await self.get(key)
        finally:
            self._readers[key] -= 1
            if not self._readers[key]:
                del self._readers[key]

    async def flush(self) -> None:
        """Make every committed put durable (memtable -> SST); see the module docstring."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self._run(self._flush_sync)

    def _flush_sync(self) -> None:
        try:
            self._db.flush(True)
        except Exception as exc:
            raise Unavailable(f"NVMe tier at {self.path!r} cannot flush: {exc}") from exc

    async def close(self) -> None:
        """Flush (the durability point) and close; raises Unavailable if the flush failed."""
        if self._closed:
            return
        self._closed = True
        error: Exception | None = None
        try:
            await self.flush()
        except Unavailable as exc:
            error = exc
        try:
            await self._run(self._db.close)
        except Exception as exc:  # the same IOError again, when the flush failed
            error = error or Unavailable(f"NVMe tier at {self.path!r} did not close cleanly: {exc}")
        if self._own_executor:
            self._executor.shutdown(wait=True)
        if error is not None:
            raise error

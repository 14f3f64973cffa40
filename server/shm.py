"""The same-host data plane (proto/store.proto, service KVBucketShm): bytes in the arena, control in gRPC.

Put: ShmReserve validates the headers as Put does and allocates one arena slot per chunk (evicting
arena-held RAM entries when the arena is full; `fallback` when it still cannot); the client writes the
bytes; ShmCommit verifies each slot's xxh3 and stores a record whose payload *is* the slot -- the RAM
tier keeps it, no copy. Get: ShmGet returns the offsets of the slots holding the entries (an entry
held outside the arena -- a compressed put, a heap buffer -- is copied into a fresh slot) under a
lease; the client copies and releases -- by listing the lease in its next request (`release`), so a
get costs one round trip. Most gets cost none: entries held in slots are listed in the catalog
(server/catalog.py, core/catalog.py), which clients read directly, and `hits` (ShmHits) counts those
reads afterwards. Entries promoted from NVMe or S3 are decoded into slots (`promotion_buffer`), so
they are listed too. ShmPut is the one-round-trip put: the client holds a *pool* of spare
slots (a lease of kind "pool", refilled by each ShmPut), writes a chunk into one, and ShmPut
stores it (see Checksums) and refills the pool (evicting by policy when the arena is full, as a reserve
does; a pool holds at most `pool_bytes`). A lease holds references to its slots; a slot goes back to
the allocator only when nothing refers to it (server/arena.py), so a slot under a read lease is not
reused even when its entry is evicted or deleted meanwhile. A lease that is neither committed nor
released expires after `lease_seconds` and drops its references.

Checksums: a client gives each chunk's xxh3 and the daemon verifies it (DATA_LOSS on a mismatch), or
sets `daemon_checksums` and the daemon stores its own, or -- ShmPut's `hashed_in_slot`, what the SDK
does -- gives the xxh3 of the bytes it wrote into the slot, stored without the daemon reading the slot.
A slot whose bytes differ from the stored checksum (source bytes changed between the client's hash
and copy, a byte changed afterwards) fails every reader's check. When the daemon reads, over the fast
wire the writer may announce the pieces it has copied (ShmWritten, one-way) and a single worker
thread hashes each while the next is copied, so a commit waits only for the last piece (`written`,
`_digests`).

The servicer reuses the data-plane validation of server/service.py and the store's read path, so
scopes, auth, hits, misses and metrics behave as with Put/Get.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import secrets
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import xxhash
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from kvbucket.core import buffers
from kvbucket.core.errors import DataLoss, FailedPrecondition, InvalidArgument
from kvbucket.core.keys import EntryKey, Layout
from kvbucket.core.record import Record, checksum
from kvbucket.proto import store_pb2 as pb
from kvbucket.proto import store_pb2_grpc
from kvbucket.server.arena import Arena
from kvbucket.server.errors import rpc
from kvbucket.server.service import MAX_KEYS, KVBucketService, raw_entry

log = logging.getLogger(__name__)
THREAD_BYTES = 4 << 20  # a copy larger than this runs off the event loop (numpy releases the GIL)
MAKE_ROOM_TRIES = 8


@dataclass(slots=True)
class _Progress:
    """A pool slot hashed piece by piece as its writer announces them (ShmWritten)."""
    hasher: xxhash.xxh3_64
    hashed: int = 0  # bytes [0, hashed) are handed to the hasher
    # The latest piece's hashing (one worker runs pieces in order). A concurrent future, not an
    # asyncio one: a finished piece does not wake the event loop.
    last: Future | None = None


@dataclass(slots=True)
class _Pending:
    key: EntryKey
    layout: Layout
    header: pb.ChunkHeader
    view: np.ndarray | None  # None: fallback (no room)
    progress: _Progress | None = None


@dataclass(slots=True)
class Lease:
    id: int
    tenant: str
    kind: str  # "put" | "get" | "pool"
    expires: float
    pending: list[_Pending] = field(default_factory=list)  # put
    held: list[np.ndarray] = field(default_factory=list)  # get
    spare: dict[int, np.ndarray] = field(default_factory=dict)  # pool: offset -> slot not yet written
    progress: dict[int, _Progress] = field(default_factory=dict)  # pool: offset -> announced pieces

    @property
    def spare_bytes(self) -> int:
        return sum(len(v) for v in self.spare.values())

    def drop(self) -> None:
        """Let go of every slot now: a traceback still referring to this lease must not keep them."""
        self.pending.clear()
        self.held.clear()
        self.spare.clear()
        self.progress.clear()


class Leases:
    """Open leases by id; expiry is an absolute time, checked on use and by `sweep`."""

    def __init__(self, clock: Callable[[], float], seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds
        self._open: dict[int, Lease] = {}
        self.expired = 0
        # No open lease expires before this (renewals only move expiries later, so it stays a lower
        # bound): `sweep`, which every call makes, looks at the leases only once it has passed.
        self._due = math.inf

    def open(self, tenant: str, kind: str, **parts) -> Lease:
        lease = Lease(secrets.randbits(63) or 1, tenant, kind, self.clock() + self.seconds, **parts)
        self._open[lease.id] = lease
        self._due = min(self._due, lease.expires)
        return lease

    def take(self, lease_id: int, tenant: str, kind: str | None = None) -> Lease | None:
        """Remove and return a live lease of this tenant; None if unknown, expired or someone else's."""
        lease = self._open.get(lease_id)
        if lease is None or lease.tenant != tenant or (kind and lease.kind != kind):
            return None
        del self._open[lease_id]
        if lease.expires <= self.clock():
            self.expired += 1
            lease.drop()
            return None
        return lease

    def renew(self, lease_id: int, tenant: str, kind: str) -> Lease | None:
        """A live lease of this tenant and kind, kept open for another `seconds`; None as in `take`."""
        lease = self._open.get(lease_id)
        if lease is None or lease.tenant != tenant or lease.kind != kind:
            return None
        now = self.clock()
        if lease.expires <= now:
            del self._open[lease_id]
            self.expired += 1
            lease.drop()
            return None
        lease.expires = now + self.seconds
        return lease

    def sweep(self) -> int:
        """Drop the expired leases; how many."""
        now = self.clock()
        if now < self._due:
            return 0
        dead = [i for i, lease in self._open.items() if lease.expires <= now]
        for i in dead:
            self._open.pop(i).drop()
        self.expired += len(dead)
        self._due = min((lease.expires for lease in self._open.values()), default=math.inf)
        return len(dead)

    def __len__(self) -> int:
        return len(self._open)


class ShmService(store_pb2_grpc.KVBucketShmServicer):
    def __init__(self, data: KVBucketService, arena: Arena | None, leases: Leases,
                 pool_bytes: int = 256 << 20) -> None:
        self.data = data
        self.store = data.store
        self.metrics = data.metrics
        self.arena = arena
        self.leases = leases
        self.fallbacks = {"put": 0, "get": 0}
        self.announced = {"hashed": 0, "ignored": 0}  # ShmWritten pieces
        # One thread hashes every announced piece: FIFO, so a slot's pieces reach its hasher in order.
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="kvbucket-shm-hash")
        self.copied_in = 0
        # Spare slots one client's pool may hold: bounded so idle pools cannot starve the arena.
        self.pool_bytes = min(pool_bytes, arena.size // 4) if arena is not None else 0
        # Entries in arena slots listed for clients to read without a call (server/catalog.py).
        self.catalog = arena.catalog() if arena is not None else None
        # ShmHits chunks: counted (still in the RAM tier), gone (not any more); messages refused (bad scope)
        self.catalog_reads = {"counted": 0, "gone": 0, "refused": 0}
        if arena is not None:
            data.allocate = self.put_buffer
            self.store.promotion_buffer = self.promotion_buffer
        if self.catalog is not None:
            self.store.first.listener = self.catalog

    def put_buffer(self, n: int) -> memoryview:
        """Where a gRPC or fast-wire Put receives a raw chunk: a free arena slot (pre-faulted memory,
        readable by shm clients without a copy-in) while enough of the arena stays free for the
        shared-memory puts that need it -- a quarter of it, or less when the RAM tier has less room
        than that left: beyond its room a shared-memory put evicts anyway, so an arena as large as the
        RAM tier takes every socket put. Past that (or with no free extent that large), when the RAM
        tier is full -- the put will evict that much anyway -- a slot freed by evicting arena-held
        entries: a fresh heap buffer there would fault in new pages on every put while the evicted
        slots sat idle (2 MiB puts over the fast wire: p50 5.4 ms -> 1.5 ms measured here). Else heap
        memory (`buffers.empty`)."""
        view = self._spare_slot(n)
        return memoryview(view) if view is not None else buffers.empty(n)

    def promotion_buffer(self, n: int) -> memoryview | None:
        """Where the store decodes a chunk it promotes from NVMe or S3: a slot as for a socket put (then
        shm clients read it from the catalog, no copy-in), or None (a heap buffer of the store's)."""
        view = self._spare_slot(n)
        return memoryview(view) if view is not None else None

    def _spare_slot(self, n: int) -> np.ndarray | None:
        """A slot for bytes arriving other than by shared memory (`put_buffer`), or None."""
        a = self.arena
        room = getattr(self.store.first, "free_bytes", None)  # the RAM tier's (a tier without it: None)
        keep = a.size // 4 if room is None else min(a.size // 4, max(0, room - n))
        view = a.slot(n) if a.extents.free_bytes - n >= keep else None  # None too: no free extent that large
        if view is None and room is not None and room < n:
            view = self._slot(n)
        return view

    # -- lifecycle -------------------------------------------------------------------------

    async def sweep_forever(self) -> None:
        period = max(0.05, min(1.0, self.leases.seconds / 4))
        while True:
            await asyncio.sleep(period)
            self.leases.sweep()

    def close(self) -> None:
        self._hasher.shutdown(wait=True)
        if self.catalog is not None:
            self.catalog.close()
        if self.arena is not None:
            self.arena.close()

    # -- helpers ---------------------------------------------------------------------------

    def _begin(self, context):
        if self.arena is None:
            raise FailedPrecondition(
                "shared memory is off on this daemon: start it with --shm-size (or a unix socket); "
                "use Put/Get"
            )
        self.leases.sweep()
        return self.data._caller(context)

    def _release(self, caller, leases) -> None:
        """Drop the leases a request lists as done (unknown or expired ones are ignored)."""
        for lease_id in leases:
            if (lease := self.leases.take(lease_id, caller.tenant)) is not None:
                lease.drop()

    def _in_arena(self, rec: Record) -> bool:
        return self.arena.offset_of(rec.payload) is not None

    def _slot(self, n: int) -> np.ndarray | None:
        """A slot of n bytes, evicting arena-held RAM entries (by the tier's policy) when full."""
        view = self.arena.slot(n)
        for _ in range(MAKE_ROOM_TRIES):
            if view is not None:
                return view
            if not self.store.evict_first(n, lambda rec: not self._in_arena(rec)):
                break
            view = self.arena.slot(n)
        if view is None:  # last resort: slots held only by reference cycles (an exception's frames)
            gc.collect()
            view = self.arena.slot(n)
        return view

    def stats(self) -> pb.ShmStats:
        s = self.arena.stats()
        return pb.ShmStats(size=s.size, used_bytes=s.used_bytes, slots=s.slots, leases=len(self.leases),
                           largest_free=s.largest_free, expired_leases=self.leases.expired)

    # -- RPCs ------------------------------------------------------------------------------

    @rpc("shm_attach")
    async def ShmAttach(self, request: pb.ShmAttachRequest, context) -> pb.ShmAttachResponse:
        caller = self._begin(context)
        a, auth = self.arena, self.data.auth
        return pb.ShmAttachResponse(path=str(a.path), size=a.size, nonce=a.nonce,
                                    lease_seconds=self.leases.seconds, stats=self.stats(),
                                    catalog_offset=a.catalog_offset if self.catalog is not None else 0,
                                    catalog_buckets=a.catalog_buckets if self.catalog is not None else 0,
                                    namespace=auth.namespace(caller, ""),
                                    any_namespace=not auth.enabled or caller.admin)

    @rpc("shm_reserve")
    async def ShmReserve(self, request: pb.ShmReserveRequest, context) -> pb.ShmReserveResponse:
        caller = self._begin(context)
        self._release(caller, request.release)
        if len(request.chunks) > MAX_KEYS:
            raise InvalidArgument(f"{len(request.chunks)} chunks in one call; the limit is {MAX_KEYS}")
        checked = []
        for h in request.chunks:
            if h.codec != pb.CODEC_NONE:
                raise InvalidArgument("shared-memory puts carry raw bytes: codec must be CODEC_NONE; use Put")
            checked.append((h, *self.data.check_header(caller, h)))
        pending = [_Pending(key, layout, h, self._slot(h.raw_length)) for h, key, layout in checked]
        slots = []
        for p in pending:
            if p.view is None:
                self.fallbacks["put"] += 1
                slots.append(pb.ShmSlot(fallback=True))
            else:
                slots.append(pb.ShmSlot(offset=self.arena.offset_of(p.view), length=len(p.view)))
        if all(p.view is None for p in pending):
            return pb.ShmReserveResponse(lease=0, slots=slots, nonce=self.arena.nonce)
        lease = self.leases.open(caller.tenant, "put", pending=pending)
        return pb.ShmReserveResponse(lease=lease.id, slots=slots, nonce=self.arena.nonce)

    @rpc("shm_commit")
    async def ShmCommit(self, request: pb.ShmCommitRequest, context) -> pb.ShmCommitResponse:
        caller = self._begin(context)
        lease = self.leases.take(request.lease, caller.tenant, "put")
        if lease is None:
            raise FailedPrecondition(
                f"put lease {request.lease} is unknown or expired (lease_seconds {self.leases.seconds}); "
                "nothing was stored: put the chunks again"
            )
        try:
            if request.daemon_checksums and request.checksums:
                raise InvalidArgument("give checksums or set daemon_checksums, not both")
            if not request.daemon_checksums and len(request.checksums) != len(lease.pending):
                raise InvalidArgument(f"{len(request.checksums)} checksums for {len(lease.pending)} slots")
            resp = pb.ShmCommitResponse()
            await self._commit(lease.pending, None if request.daemon_checksums else request.checksums, resp.results)
            return resp
        finally:
            for p in lease.pending:  # slots not stored go back now, not when a traceback is collected
                p.view = None

    async def _commit(self, pending: list[_Pending], checksums, results, read: bool = True) -> None:
        """Store the written slots, adding a ChunkResult for each to `results` (a reply's repeated
        field). `checksums`: what the client says each slot holds, verified against the daemon's
        digests (any mismatch: DATA_LOSS, nothing stored), or stored as given with `read` False
        (hashed_in_slot: the slots are not read); None: the daemon's digests are stored."""
        todo = [p for p in pending if p.view is not None]
        given = None
        if checksums is not None:
            given = [c for p, c in zip(pending, checksums, strict=True) if p.view is not None]
        if not read:
            sums = given
        else:
            sums = await self._digests(todo)
            pairs = zip(todo, given or (), sums)
            bad = next((p.key for p, want, got in pairs if got != want), None)
            if bad is not None:
                self.metrics.rejected.labels("checksum").inc()
                raise DataLoss(
                    f"chunk {bad.hash.hex()[:16]}: the bytes in its shared-memory slot do not match the "
                    "checksum given at commit; nothing of this lease was stored"
                )
        for p, digest in zip(todo, sums, strict=True):
            n = len(p.view)
            record, meta = raw_entry(p.key, p.layout, p.header, memoryview(p.view), digest)
            p.view = None  # the record holds the slot now
            await self.store.put(p.key, record, meta)
            self.metrics.bytes_in.inc(n)
            results.add(hash=p.header.hash, stored=True)

    async def _digests(self, pending: list[_Pending]) -> list[int]:
        """The xxh3 of each slot: what its announcements started, finished on the same worker (it
        runs pieces in order), or the whole slot at once."""
        out = await _checksums([p.view for p in pending if p.progress is None])
        whole = iter(out)
        sums = []
        for p in pending:
            prog = p.progress
            if prog is None:
                sums.append(next(whole))
                continue
            if prog.hashed < len(p.view):
                prog.last = self._hasher.submit(prog.hasher.update, p.view[prog.hashed :])
            await asyncio.wrap_future(prog.last)
            sums.append(prog.hasher.intdigest())
        return sums

    def written(self, caller, msg: pb.ShmWritten) -> None:
        """ShmWritten (fast wire, no reply): bytes [0, written) of a pool slot are final; hash the new
        ones now, on the worker. One that does not fit is ignored and the slot is hashed whole at
        ShmPut -- announcing only moves the hashing earlier, it never changes what is stored."""
        pool = self.leases.renew(msg.pool, caller.tenant, "pool") if self.arena is not None else None
        view = pool.spare.get(msg.offset) if pool is not None else None
        prog = pool.progress.get(msg.offset) if view is not None else None
        start = prog.hashed if prog is not None else 0
        if view is None or not start < msg.written <= len(view):
            self.announced["ignored"] += 1
            if pool is not None:
                pool.progress.pop(msg.offset, None)
            return
        if prog is None:
            prog = pool.progress[msg.offset] = _Progress(xxhash.xxh3_64())
        prog.last = self._hasher.submit(prog.hasher.update, view[start : msg.written])
        prog.hashed = msg.written
        self.announced["hashed"] += 1

    @rpc("shm_hits")
    async def ShmHits(self, request: pb.ShmHitsRequest, context) -> pb.ShmHitsResponse:
        """`hits` over gRPC (clients without the fast wire)."""
        self.hits(self._begin(context), request)
        return pb.ShmHitsResponse()

    def hits(self, caller, msg: pb.ShmHitsRequest) -> None:
        """ShmHits (fast wire, no reply): chunks a client read through the catalog, counted as a ShmGet
        counts them -- hits, recency, sliding TTL, usage, bytes and tokens served. One that has left the
        RAM tier since is counted only in `catalog_reads["gone"]`."""
        self._release(caller, msg.release)
        for key in self.data._keys(caller, msg.scope, msg.hashes):
            meta = self.store.served(key)
            if meta is None:
                self.catalog_reads["gone"] += 1
                continue
            self.catalog_reads["counted"] += 1
            self.metrics.bytes_out.inc(meta.raw_bytes)
            self.metrics.tokens_served.inc(meta.tokens)

    @rpc("shm_get")
    async def ShmGet(self, request: pb.ShmGetRequest, context) -> pb.ShmGetResponse:
        caller = self._begin(context)
        self._release(caller, request.release)
        keys = self.data._keys(caller, request.scope, request.hashes)
        chunks: list[pb.ShmChunk] = []
        held: list[np.ndarray] = []
        for i, key in enumerate(keys):
            async with self.store.reading(key) as rec:
                if rec is None:
                    chunks.append(pb.ShmChunk(miss=True, index=i))
                    if request.stop_at_first_miss:
                        break
                    continue
                view = await self._hold(rec)
            h = rec.header
            header = pb.ChunkHeader(hash=key.hash, codec=pb.CODEC_NONE, raw_length=h.raw_length,
                                    payload_length=h.raw_length, checksum=h.checksum, tokens=h.tokens,
                                    dtype=h.dtype, shape=h.shape, index=i)
            if view is None:
                self.fallbacks["get"] += 1
                chunks.append(pb.ShmChunk(header=header, fallback=True, index=i))
                continue
            held.append(view)
            chunks.append(pb.ShmChunk(header=header, offset=self.arena.offset_of(view), index=i))
            self.metrics.bytes_out.inc(h.raw_length)
            self.metrics.tokens_served.inc(h.tokens)
        if not held:
            return pb.ShmGetResponse(lease=0, chunks=chunks, nonce=self.arena.nonce)
        lease = self.leases.open(caller.tenant, "get", held=held)
        return pb.ShmGetResponse(lease=lease.id, chunks=chunks, nonce=self.arena.nonce)

    async def _hold(self, rec: Record) -> np.ndarray | None:
        """The slot holding `rec`'s bytes: its own, or a fresh one it is copied into; None if no room."""
        p = rec.payload
        if self.arena.offset_of(p) is not None:
            return p.obj if type(p) is memoryview else p
        view = self.arena.slot(len(p))
        if view is None:
            return None
        src = np.frombuffer(p, dtype=np.uint8)
        if len(p) > THREAD_BYTES:
            await asyncio.to_thread(np.copyto, view, src)
        else:
            np.copyto(view, src)
        self.copied_in += 1
        return view

    @rpc("shm_put")
    async def ShmPut(self, request: pb.ShmPutRequest, context) -> pb.ShmPutResponse:
        caller = self._begin(context)
        self._release(caller, request.release)
        if max(len(request.chunks), len(request.refill)) > MAX_KEYS:
            raise InvalidArgument(f"more than {MAX_KEYS} chunks or refill slots in one call")
        if len(request.offsets) != len(request.chunks):
            raise InvalidArgument(f"{len(request.offsets)} offsets for {len(request.chunks)} chunks")
        if request.pool:
            pool = self.leases.renew(request.pool, caller.tenant, "pool")
            if pool is None:
                raise FailedPrecondition(
                    f"slot pool {request.pool} is unknown or expired (lease_seconds {self.leases.seconds}); "
                    "nothing was stored: open a new pool (pool 0) and put the chunks again"
                )
        elif request.chunks:
            raise InvalidArgument("chunks name slots of a pool: open one first (pool 0, refill only)")
        else:
            pool = self.leases.open(caller.tenant, "pool")
        resp = pb.ShmPutResponse(pool=pool.id, nonce=self.arena.nonce)
        if request.chunks:
            await self._put_from_pool(caller, pool, request, resp.results)
        self._refill(pool, request.refill, resp.slots)
        return resp

    async def _put_from_pool(self, caller, pool: Lease, request: pb.ShmPutRequest, results) -> None:
        # Every named slot leaves the pool first: whatever fails below, none stays half-used in it.
        views = [pool.spare.pop(off, None) for off in request.offsets]
        progress = [pool.progress.pop(off, None) for off in request.offsets]
        pending: list[_Pending] = []
        try:
            for h, off, view, prog in zip(request.chunks, request.offsets, views, progress, strict=True):
                if view is None:
                    raise InvalidArgument(f"offset {off} is not a spare slot of pool {pool.id} (used already?)")
                if h.codec != pb.CODEC_NONE:
                    raise InvalidArgument("shared-memory puts carry raw bytes: codec must be CODEC_NONE; use Put")
                if len(view) != h.raw_length:
                    raise InvalidArgument(f"the slot at {off} holds {len(view)} bytes, the chunk {h.raw_length}")
                key, layout = self.data.check_header(caller, h)
                pending.append(_Pending(key, layout, h, view, prog))
            views.clear()
            if request.hashed_in_slot and request.daemon_checksums:
                raise InvalidArgument("give hashed_in_slot checksums or set daemon_checksums, not both")
            given = None if request.daemon_checksums else [h.checksum for h in request.chunks]
            await self._commit(pending, given, results, read=not request.hashed_in_slot)
        finally:  # slots not stored go back now, not when a traceback is collected
            views.clear()
            view = None  # noqa: F841 - the loop's last slot, held by this frame
            for p in pending:
                p.view = None

    def _refill(self, pool: Lease, sizes, slots) -> None:
        """Add spare slots of these sizes to the pool, and each (or a fallback) to `slots`, a reply's
        repeated field."""
        held = pool.spare_bytes
        for n in sizes:
            view = None
            if 0 < n <= self.data.limits.max_chunk_bytes and held + n <= self.pool_bytes:
                # Made room for like a reserve's slot: a client asks for spares to put into them next,
                # and a full cache (the normal state) must not cost its puts a second round trip.
                view = self._slot(n)
            if view is None:
                slots.add(fallback=True)
                continue
            off = self.arena.offset_of(view)
            pool.spare[off] = view
            held += len(view)
            slots.add(offset=off, length=len(view))

    @rpc("shm_release")
    async def ShmRelease(self, request: pb.ShmReleaseRequest, context) -> pb.ShmReleaseResponse:
        caller = self._begin(context)
        lease = self.leases.take(request.lease, caller.tenant)
        if lease is not None:
            lease.drop()
        return pb.ShmReleaseResponse(released=lease is not None)


async def _checksums(views: list[np.ndarray]) -> list[int]:
    """The xxh3 of each slot. One of up to THREAD_BYTES is hashed on the loop (a hand-off and a wake-up
    would cost more than they save); a larger one, or several, on worker threads -- xxhash releases
    the GIL, so they run on as many cores as there are, and the loop keeps serving other clients
    meanwhile (a 32 MiB slot is ~3 ms of hashing)."""
    if not views or (len(views) == 1 and len(views[0]) <= THREAD_BYTES):
        return [checksum(v) for v in views]
    return list(await asyncio.gather(*(asyncio.to_thread(checksum, v) for v in views)))


class ShmCollector:
    """kvbucket_shm_* gauges, read at scrape time."""

    def __init__(self, service: ShmService) -> None:
        self.service = service

    def collect(self):
        svc = self.service
        if svc.arena is None:
            return
        s = svc.arena.stats()
        g = GaugeMetricFamily
        yield g("kvbucket_shm_size_bytes", "Usable bytes of the shared-memory arena", value=s.size)
        yield g("kvbucket_shm_used_bytes", "Arena bytes in live slots (entries, reservations, leases)",
                value=s.used_bytes)
        yield g("kvbucket_shm_slots", "Live arena slots", value=s.slots)
        yield g("kvbucket_shm_largest_free_bytes", "Largest free arena extent", value=s.largest_free)
        yield g("kvbucket_shm_leases", "Open shared-memory leases", value=len(svc.leases))
        yield CounterMetricFamily("kvbucket_shm_leases_expired", "Leases dropped on expiry",
                                  value=svc.leases.expired)
        fb = CounterMetricFamily("kvbucket_shm_fallback_chunks", "Chunks sent back to gRPC (no arena room)",
                                 labels=["op"])
        for op, n in svc.fallbacks.items():
            fb.add_metric([op], n)
        yield fb
        ann = CounterMetricFamily("kvbucket_shm_announced_pieces",
                                  "ShmWritten announcements: hashed at once, or ignored (slot hashed at ShmPut)",
                                  labels=["outcome"])
        for outcome, n in svc.announced.items():
            ann.add_metric([outcome], n)
        yield ann
        yield CounterMetricFamily("kvbucket_shm_copied_in", "Entries copied into the arena for a shm Get",
                                  value=svc.copied_in)
        if svc.catalog is not None:
            yield g("kvbucket_shm_catalog_entries", "Entries listed in the catalog (read without a call)",
                    value=len(svc.catalog))
            yield CounterMetricFamily("kvbucket_shm_catalog_unlisted", "Entries left out of the catalog: "
                                      "both their buckets were full (read by ShmGet)", value=svc.catalog.unlisted)
            reads = CounterMetricFamily(
                "kvbucket_shm_catalog_reads", "Chunks clients read through the catalog: counted as hits, gone "
                "from RAM by the time they were told, or refused (a message with a bad scope: counted once)",
                labels=["outcome"])
            for outcome, n in svc.catalog_reads.items():
                reads.add_metric([outcome], n)
            yield reads

    def describe(self):
        return []

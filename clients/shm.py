"""Client side of the same-host data plane: the daemon's arena mapped here, bytes copied in and out.

`Client`/`AsyncClient` attach on first use when the URL is a unix socket or `shm=True` was passed:
ShmAttach names the arena file; it is opened read-write and mapped, and the nonce at offset 8 must
match (proof that this is the daemon's arena, not a file of the same name on another host). When any
of that fails the client uses gRPC streaming for good and logs it once.

Put, one round trip: take spare slots from the client's `SlotPool` -> `ShmPlane.write_hashed` (copy
in with non-temporal stores, hashed in the same pass: `stream_hash`) -> ShmPut with those checksums
(hashed_in_slot), which stores the slots without reading them again and refills the pool. When the
pool has no slots of the sizes needed, one ShmPut stocks it first; when the daemon grants none, the
two-step ShmReserve -> write -> ShmCommit is used, and chunks it marks `fallback` go through Put.
Get, no round trip: the chunks the daemon's catalog (core/catalog.py) lists are copied straight out of
their slots and verified (`ShmPlane.read_listed`), and the daemon is told afterwards (ShmHits, one-way
over the fast wire; without it, a ShmHits call nobody waits for). The rest, one round trip: ShmGet ->
`ShmPlane.read` (copy out and verify: `copy_hash`, in one pass per chunk with the C copy); the
lease is released by the next request (`Attachment.defer_release`), or at close. Both SDK clients are
thin shells over these.

`register_with_cuda(view)` page-locks a mapped region for CUDA (cudaHostRegister) so GPU copies
into it run as DMA; `Client.shm_region()` is the region.
"""

from __future__ import annotations

import collections
import functools
import logging
import mmap
import os
import struct
import threading
import time
import weakref
from concurrent import futures

import numpy as np
import xxhash

from kvbucket.clients import wire
from kvbucket.clients.hashing import PIECE, copy_behind
from kvbucket.clients.wire import as_bytes
from kvbucket.core import catalog, errors
from kvbucket.core.keys import Layout, scope_prefix
from kvbucket.core.record import checksum
from kvbucket.proto import store_pb2 as pb

try:
    from kvbucket.clients._streamcopy import STORES as STREAM_STORES  # "avx2", "sse2" or "memcpy"
    from kvbucket.clients._streamcopy import copy_xxh3, stream_copy
except ImportError:  # not built (no C compiler where kvbucket was installed): copies use numpy
    STREAM_STORES, stream_copy, copy_xxh3 = None, None, None

log = logging.getLogger(__name__)
HITS_PER_MESSAGE = 4096  # hashes per ShmHits (the daemon's per-call limit, MAX_KEYS in server/service.py)
FUSED = 256 << 10  # copy-then-hash step of copy_hash's two passes (64 KiB-512 KiB measured alike)
HEAD_SHARE = 0.4  # of a chunk over PIECE, what copy_hash's caller copies and hashes (the worker copies the rest)
STREAM_HEAD_LARGE = 0.1  # of a chunk over PIECE, what stream_hash's caller copies (it hashes all of it)
HANDOFF_MIN = 512 << 10  # a batch of smaller chunks is all copied on the calling thread (bench_copy.py)
_HEADER = struct.Struct("<8sQ")
_MAGIC = b"KVBSHM01"


class ShmPlane:
    """The daemon's arena, mapped read-write in this process."""

    def __init__(self, attach: pb.ShmAttachResponse) -> None:
        fd = os.open(attach.path, os.O_RDWR)
        try:
            # Populated at attach: a first touch of each 4 KiB page would cost ~4x the copy (measured
            # here: 22-30 ms to write 32 MiB of fresh mapping vs 5 ms populated); once, ~0.2-0.5 s per GiB.
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            self._mm = mmap.mmap(fd, attach.size, flags, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        magic, nonce = _HEADER.unpack_from(self._mm, 0)
        if magic != _MAGIC or nonce != attach.nonce:
            self._mm.close()
            raise OSError(f"{attach.path} is not this daemon's arena (another host, or a stale file)")
        self.path = attach.path
        self.nonce = attach.nonce
        self.lease_seconds = attach.lease_seconds
        self.view = memoryview(self._mm)
        self.namespace = attach.namespace  # the caller's, when a scope names none
        self.any_namespace = attach.any_namespace
        self.catalog: catalog.Reader | None = None
        if attach.catalog_buckets:
            try:
                self.catalog = catalog.Reader(self.view, attach.catalog_offset, attach.catalog_buckets)
            except ValueError as exc:
                log.warning("kvbucket: shared-memory catalog unusable (%s); every get asks the daemon", exc)

    def gone(self) -> bool:
        """Whether the arena file is gone: its daemon exited, or a new one removed it as stale."""
        return not os.path.exists(self.path)

    def catalog_prefix(self, namespace: str, model: str, layout: Layout) -> bytes | None:
        """The key prefix of a scope in the catalog; None when the catalog is not to be used for it
        (none offered, or a namespace the daemon would refuse this caller: ShmGet says so)."""
        if self.catalog is None:
            return None
        ns = namespace or self.namespace
        if ns != self.namespace and not self.any_namespace:
            return None
        return _prefix(ns, model, layout)

    def read_listed(self, prefix: bytes, hashes, out: list | None, results: list) -> int:
        """Copy the leading chunks the catalog lists into `results` (verified; no call to the daemon);
        how many. The first one not listed, expired, changed under the copy or failing its checksum
        ends the run: the caller asks the daemon for the rest (ShmGet), which also tells a corrupt
        chunk (DATA_LOSS) from one evicted meanwhile."""
        cat = self.catalog
        now = cat.now() if cat is not None else None
        if now is None:
            return 0
        found: list[catalog.Found] = []
        for h in hashes:
            f = cat.find(prefix + bytes(h), now)
            if f is None:
                break
            found.append(f)
        if not found:
            return 0
        targets = [wire.target_buffer(out, i, f.length) for i, f in enumerate(found)]  # sizes checked first
        pairs = [(dst, self.view[f.offset : f.offset + f.length]) for f, dst in zip(found, targets)]
        k = 0
        for f, dst, got in zip(found, targets, copy_hash(pairs), strict=True):
            if got != f.checksum or not cat.unchanged(f):
                break
            results[k] = dst
            k += 1
        return k

    def write(self, slots, raws: list[memoryview]) -> None:
        """Copy each raw chunk into its slot (fallback slots are skipped)."""
        for slot, raw in zip(slots, raws, strict=True):
            if not slot.fallback and slot.length != len(raw):
                raise errors.InvalidArgument(f"daemon reserved {slot.length} bytes, chunk is {len(raw)}")
        for slot, raw in zip(slots, raws, strict=True):
            if not slot.fallback:
                self.view[slot.offset : slot.offset + len(raw)] = raw

    def write_hashed(self, offsets: list[int], raws: list[memoryview]) -> list[int]:
        """Copy each raw chunk to its offset (a pool slot of exactly its length); the xxh3 of what was
        copied (`stream_hash`, or `copy_hash` where the C copy is not built)."""
        pairs = [(self.view[off : off + len(raw)], raw) for off, raw in zip(offsets, raws, strict=True)]
        return stream_hash(pairs) if stream_copy is not None else copy_hash(pairs)

    def read(self, resp: pb.ShmGetResponse, out: list | None, results: list) -> list[int]:
        """Copy each held chunk out of the arena into `results` (verified); the indexes to fetch by Get."""
        fallback: list[int] = []
        held = list(_held(resp, fallback))
        targets = [wire.target_buffer(out, c.index, c.header.raw_length) for c in held]  # sizes checked first
        pairs = [(dst, self.view[c.offset : c.offset + c.header.raw_length]) for c, dst in zip(held, targets)]
        for c, dst, got in zip(held, targets, copy_hash(pairs), strict=True):
            if got != c.header.checksum:
                raise errors.DataLoss(f"chunk {c.header.hash.hex()[:16]} failed its checksum in shared memory")
            results[c.index] = dst
        return fallback

    def views(self, resp: pb.ShmGetResponse, verify: bool, results: list) -> list[int]:
        """Read-only views of the held chunks into `results` (verified unless told not to); the indexes
        to fetch by Get. The views are valid while the lease is held."""
        fallback: list[int] = []
        for c in _held(resp, fallback):
            h = c.header
            mv = self.view[c.offset : c.offset + h.raw_length].toreadonly()
            if verify and checksum(mv) != h.checksum:
                raise errors.DataLoss(f"chunk {h.hash.hex()[:16]} failed its checksum in shared memory")
            results[c.index] = mv
        return fallback

    def close(self) -> None:
        try:
            self.view.release()
            self._mm.close()
        except BufferError:  # a caller still holds a view of the region (shm_region); the mapping stays
            pass


@functools.lru_cache(maxsize=64)
def _prefix(namespace: str, model: str, layout: Layout) -> bytes:
    return scope_prefix(namespace, model, layout.fingerprint())


def _held(resp: pb.ShmGetResponse, fallback: list[int]):
    """The chunks of a ShmGet reply held in slots; the indexes the daemon could not place go to `fallback`."""
    for c in resp.chunks:
        if c.fallback:
            fallback.append(c.index)
        elif not c.miss:
            yield c


def copy_hash(pairs: list[tuple[memoryview, memoryview]]) -> list[int]:
    """dst[:] = src for each `(dst, src)`; the xxh3_64 of the bytes now in each dst. A get's copy out of
    the arena (and a put's where clients/_streamcopy.c is not built).

    With the C copy built, each chunk is copied and hashed in one pass (`copy_xxh3`: each stripe
    hashed from the registers it is stored from, so a checksum vouches for what landed), a batch's
    alternate chunks on the worker (`_one_pass`). Measured here against a memcpy into a warm buffer
    (benchmarks/bench_copy.py, two runs): one 2 MiB chunk 0.64-0.65x, sixteen 0.97-1.09x, 32 MiB
    0.86-0.94x, where the two-pass copy below took 0.51x, 0.58-0.61x and 0.73-0.80x.

    Without it: this thread copies FUSED bytes at a time and hashes each piece from L2 right after its
    copy; the worker (clients/hashing.py) copies the rest meanwhile -- the tail past HEAD_SHARE of a
    chunk over PIECE, every other chunk of a batch of smaller ones -- and this thread hashes that from
    memory once it has landed. One chunk up to PIECE is all copied here."""
    _check_sizes(pairs)
    if copy_xxh3 is not None:
        return _one_pass(pairs, nontemporal=False)
    plan = []
    for i, (_, src) in enumerate(pairs):
        n = len(src)
        if len(pairs) == 1 and n <= PIECE:
            plan.append(n)
        elif n > PIECE:
            plan.append(int(n * HEAD_SHARE) // FUSED * FUSED)
        else:
            plan.append(n if i % 2 == 0 else 0)
    behind: list[futures.Future | None] = []
    try:
        for (dst, src), cut in zip(pairs, plan, strict=True):
            behind.append(copy_behind(dst[cut:], src[cut:]) if cut < len(src) else None)
        sums = []
        for (dst, src), cut, tail in zip(pairs, plan, behind, strict=True):
            h = xxhash.xxh3_64()
            for off in range(0, cut, FUSED):
                end = min(off + FUSED, cut)
                dst[off:end] = src[off:end]
                h.update(dst[off:end])
            if tail is not None:
                tail.result()
                h.update(dst[cut:])
            sums.append(h.intdigest())
    finally:  # the worker must be done with every dst before the caller may reuse it, even after an error
        futures.wait([t for t in behind if t is not None])
    return sums


def _check_sizes(pairs: list[tuple[memoryview, memoryview]]) -> None:
    for dst, src in pairs:
        if len(dst) != len(src):
            raise ValueError(f"destination of {len(dst)} bytes for a chunk of {len(src)}")


def _one_pass(pairs: list[tuple[memoryview, memoryview]], *, nontemporal: bool) -> list[int]:
    """`copy_xxh3` of each pair: every other chunk of a batch on the worker (both copies release the
    GIL, so the two run on two cores), unless the chunks are under HANDOFF_MIN (a hand-off costs more
    than it saves)."""
    if len(pairs) == 1 or all(len(src) < HANDOFF_MIN for _, src in pairs):
        return [copy_xxh3(dst, src, nontemporal) for dst, src in pairs]
    behind: list[futures.Future] = []
    try:
        behind = [copy_behind(dst, src, lambda d, s: copy_xxh3(d, s, nontemporal)) for dst, src in pairs[1::2]]
        mine = [copy_xxh3(dst, src, nontemporal) for dst, src in pairs[0::2]]
        theirs = [b.result() for b in behind]
    finally:  # the worker must be done with every dst before the caller may reuse it, even after an error
        futures.wait(behind)
    sums = [0] * len(pairs)
    sums[0::2], sums[1::2] = mine, theirs
    return sums


def put_copy() -> str:
    """How puts copy into the arena in this process (`kvbucket bench` reports it)."""
    if stream_copy is None:
        return "numpy (clients/_streamcopy.c not built)"
    if STREAM_STORES == "memcpy":
        return "memcpy (no non-temporal stores on this CPU)"
    return f"{STREAM_STORES} non-temporal stores"


@functools.cache
def _say_how_copies_run() -> None:
    """Once per process, on the first attach: a missing C copy costs speed, not correctness."""
    if stream_copy is None:
        log.warning("kvbucket: clients/_streamcopy.c is not built (no C compiler where kvbucket was "
                    "installed?); shared-memory puts and gets copy with numpy and checksum in a second "
                    "pass, ~1.6x slower per 2 MiB put, ~1.3x per get")


def stream_hash(pairs: list[tuple[memoryview, memoryview]]) -> list[int]:
    """dst[:] = src for each `(dst, src)` with non-temporal stores (clients/_streamcopy.c); the xxh3_64
    of each source. For a put's slots: the daemon reads them next, not this thread. The stores skip
    reading each destination line in first, the larger part of an ordinary copy into a slot no recent
    put wrote (benchmarks/bench_copy.py). Source bytes changed during the copy leave a slot that fails
    its checksum at every reader, never served (a source must not change during a put).

    Each chunk is copied and hashed in one pass (`copy_xxh3`), a batch's alternate chunks on the
    worker. A chunk over PIECE is split: this thread copies its first STREAM_HEAD_LARGE and hashes all
    of it in one pass, the worker copies the rest meanwhile. Against the warm memcpy (bench_copy.py,
    two runs): one 2 MiB chunk 0.85-0.89x, sixteen 1.37-1.51x, 32 MiB 1.24-1.26x. Hashing each 256 KiB
    piece, then copying it, as before copy_xxh3, took 0.59-0.61x on the calling thread alone (in
    earlier runs against 8548dff: one chunk with the worker copying 70% of it 0.79-0.86x -- with
    copy_xxh3 no faster than alone, 0.67-0.77x --, sixteen 0.74-0.87x, 32 MiB 1.21-1.30x)."""
    _check_sizes(pairs)
    if all(len(src) <= PIECE for _, src in pairs):
        return _one_pass(pairs, nontemporal=True)
    plan = [int(len(src) * STREAM_HEAD_LARGE) // FUSED * FUSED if len(src) > PIECE else len(src) for _, src in pairs]
    behind: list[futures.Future | None] = []
    try:
        for (dst, src), cut in zip(pairs, plan, strict=True):
            behind.append(copy_behind(dst[cut:], src[cut:], stream_copy) if cut < len(src) else None)
        sums = [copy_xxh3(dst, src, True, cut) for (dst, src), cut in zip(pairs, plan, strict=True)]
        for tail in behind:
            if tail is not None:
                tail.result()
    finally:  # the worker must be done with every dst before the caller may reuse it, even after an error
        futures.wait([t for t in behind if t is not None])
    return sums


def reserve_request(scope: pb.Scope, items, **opts) -> tuple[pb.ShmReserveRequest, list[memoryview]]:
    """ShmReserve for `(hash, payload, tokens)` items, and the raw byte views to write."""
    headers, raws = chunk_headers(scope, items, **opts)
    req = pb.ShmReserveRequest()
    headers.add_to(req.chunks)
    return req, raws


class Views:
    """Chunks of a `get_views` call: read-only views of the daemon's arena (no copy), or buffers fetched
    by Get where the arena could not hold them. Valid until `close()` (or the end of the `with`
    block): the daemon keeps their slots from reuse until then -- and drops them after lease_seconds
    regardless, so do not hold views for long."""

    def __init__(self, views: list, on_close=None) -> None:
        self._views = views
        self._on_close = on_close
        self._pid = os.getpid()  # a forked child closing them must not release the parent's lease

    def __getitem__(self, i: int) -> memoryview | None:
        return self._views[i]

    def __len__(self) -> int:
        return len(self._views)

    def __iter__(self):
        return iter(self._views)

    def close(self) -> None:
        views, self._views = self._views, []
        for mv in views:
            if mv is not None:
                try:
                    mv.release()
                except BufferError:  # something made from the view (a tensor) is still alive
                    pass
        if self._on_close is not None and os.getpid() == self._pid:
            self._on_close()
        self._on_close = None

    def __enter__(self) -> Views:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Reservation:
    """Writable buffers for chunks, stored by `commit()`: slots of the daemon's arena when the client is
    attached (write there directly -- a GPU kernel can, after `register_with_cuda(client.shm_region())`),
    else local buffers sent by Put at commit. A slot the daemon had no room for is a local buffer too.

    Write every buffer fully (a GPU writer: synchronize its stream first), then `commit()` once: the
    daemon hashes the slots itself, so no CPU pass over the bytes is made here. `abort()` (or leaving
    a `with` block without a commit) stores nothing. Commit within the daemon's lease_seconds: after
    that the slots may belong to someone else, and commit raises FailedPrecondition."""

    def __init__(self, items: list[tuple[bytes, int, int]], views: list[memoryview], in_arena: list[bool],
                 lease: int, commit, abort) -> None:
        self.items = items  # (hash, nbytes, tokens)
        self.views = views
        self.in_arena = in_arena
        self.lease = lease
        self._commit = commit
        self._abort = abort
        self.done = False
        self._pid = os.getpid()

    def commit(self) -> list[bool]:
        if self.done:
            raise errors.FailedPrecondition("this reservation was already committed or aborted")
        if os.getpid() != self._pid:  # the maker may still be writing its slots: they would be stored half-written
            raise errors.FailedPrecondition(
                f"this reservation was made by process {self._pid}, before a fork; commit it there"
            )
        self.done = True
        return self._commit(self)

    def abort(self) -> None:
        if not self.done:
            self.done = True
            if os.getpid() == self._pid:  # a forked child must not free slots the parent writes into
                self._abort(self)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc) -> None:
        self.abort()


def reservation_headers(scope: pb.Scope, items: list[tuple[bytes, int, int]], **opts) -> list[pb.ChunkHeader]:
    layout = scope.layout
    return [pb.ChunkHeader(scope=scope, hash=h, codec=pb.CODEC_NONE, raw_length=n, payload_length=n, tokens=t,
                           dtype=layout.dtype, shape=layout.shape, **opts) for h, n, t in items]


class Headers:
    """The chunk headers of one put, written straight into a request's repeated field (`add_to`):
    what all share is copied from one cached template, the rest set per chunk. Building messages
    and then passing them to a request would copy each twice more (~15 us a chunk against ~7)."""

    __slots__ = ("template", "chunks")

    def __init__(self, template: pb.ChunkHeader, chunks: list[tuple[bytes, int, int]]) -> None:
        self.template = template  # shared: only ever copied from
        self.chunks = chunks  # (hash, bytes, tokens)

    def add_to(self, repeated, sums: list[int] | None = None) -> None:
        """Append one ChunkHeader per chunk to `repeated`, with checksum `sums[i]` when given."""
        if sums is not None and len(sums) != len(self.chunks):
            raise ValueError(f"{len(sums)} checksums for {len(self.chunks)} chunks")
        for i, (h, n, tokens) in enumerate(self.chunks):
            c = repeated.add()
            c.CopyFrom(self.template)
            c.hash, c.raw_length, c.payload_length, c.tokens = h, n, n, tokens
            if sums is not None:
                c.checksum = sums[i]


@functools.lru_cache(maxsize=64)
def _template(scope: bytes, ttl_seconds: float, ttl_sliding: bool, pin: bool) -> pb.ChunkHeader:
    s = pb.Scope.FromString(scope)
    return pb.ChunkHeader(scope=s, codec=pb.CODEC_NONE, dtype=s.layout.dtype, shape=s.layout.shape,
                          ttl_seconds=ttl_seconds, ttl_sliding=ttl_sliding, pin=pin)


def chunk_headers(scope: pb.Scope, items, *, ttl_seconds: float = 0.0, ttl_sliding: bool = False,
                  pin: bool = False) -> tuple[Headers, list[memoryview]]:
    """The headers of `(hash, payload, tokens)` items (checksum unset), and their raw byte views."""
    raws = [as_bytes(data) for _, data, _ in items]
    chunks = [(h, len(raw), tokens) for (h, _, tokens), raw in zip(items, raws, strict=True)]
    template = _template(scope.SerializeToString(deterministic=True), float(ttl_seconds), bool(ttl_sliding),
                         bool(pin))
    return Headers(template, chunks), raws


def put_request(att: Attachment, headers: Headers, offsets: list[int], raws: list[memoryview],
                sums: list[int]) -> pb.ShmPutRequest:
    """The ShmPut that stores chunks written into these pool slots with `sums`, the checksums this
    client took of what it wrote into the slots (hashed_in_slot: the daemon does not read them),
    and asks for as many slots of the same sizes again."""
    req = pb.ShmPutRequest(pool=att.pool.id, offsets=offsets, refill=[len(r) for r in raws],
                           release=att.releases(), hashed_in_slot=True)
    headers.add_to(req.chunks, sums)
    return req


def commit_results(slots, commit: pb.ShmCommitResponse | None) -> tuple[list[bool | None], list[int]]:
    """Per item: stored or not (None for fallback), and the indexes to send by Put."""
    stored: list[bool | None] = []
    results = iter(commit.results if commit is not None else ())
    fallback = []
    for i, slot in enumerate(slots):
        if slot.fallback:
            stored.append(None)
            fallback.append(i)
        else:
            stored.append(next(results).stored)
    return stored, fallback


class SlotPool:
    """Spare arena slots this client holds for one-round-trip puts (ShmPut). Thread-safe.

    The daemon drops a pool unused for lease_seconds and may then hand its slots to others, so a pool
    idle for half that is forgotten here before any byte is written into it."""

    def __init__(self, lease_seconds: float) -> None:
        self.id = 0
        self._ttl = lease_seconds / 2
        self._deadline = 0.0
        self._free: dict[int, list[int]] = {}  # slot length -> offsets
        self._lock = threading.Lock()

    def take(self, sizes: list[int]) -> list[int] | None:
        """One spare slot per size (removed from the pool), or None (and nothing taken) if any is missing."""
        with self._lock:
            if self.id and time.monotonic() > self._deadline:
                self._forget()
            if len(sizes) == 1:
                free = self._free.get(sizes[0])
                return [free.pop()] if free else None
            want = collections.Counter(sizes)
            if any(len(self._free.get(n, ())) < k for n, k in want.items()):
                return None
            return [self._free[n].pop() for n in sizes]

    def spare(self, n: int) -> int:
        """How many spare slots of n bytes the pool holds."""
        with self._lock:
            return len(self._free.get(n, ()))

    def stock(self, resp: pb.ShmPutResponse, sent_at: float) -> int:
        """Add the slots a ShmPut granted (the pool's lease was renewed when it was sent); how many."""
        with self._lock:
            if resp.pool != self.id:
                self._forget()
                self.id = resp.pool
            self._deadline = sent_at + self._ttl
            granted = [s for s in resp.slots if not s.fallback]
            for s in granted:
                self._free.setdefault(s.length, []).append(s.offset)
            return len(granted)

    def reset(self) -> int:
        """Forget the pool (expired, or the daemon restarted); its id, to release it if still known."""
        with self._lock:
            pool = self.id
            self._forget()
            return pool

    def _forget(self) -> None:
        self.id = 0
        self._free.clear()

    def after_fork(self) -> None:
        """In a forked child: the spare slots are the parent's, which writes into them too. Forgotten
        here (not released: the parent's pool lives on); the child asks for a pool of its own."""
        self._lock = threading.Lock()  # a parent thread may have held it at the fork
        self._forget()


class Attachment:
    """Attach-once state shared by a client and the clients `scoped()` derives from it: the mapped
    arena, the slot pool, and get leases done with but not yet released."""

    def __init__(self, wanted: bool) -> None:
        self.wanted = wanted
        self.plane: ShmPlane | None = None
        self.tried = False
        self.pool = SlotPool(30.0)
        self._done: collections.deque[int] = collections.deque()  # append / popleft are atomic
        _attachments.add(self)

    def after_fork(self) -> None:
        """In a forked child: the slot pool and the get leases waiting to be released are the parent's
        (a lease the parent still reads under is guarded by `Views`, which release only in the process
        that made them). The mapping is shared and stays."""
        self.pool.after_fork()
        self._done = collections.deque()

    def defer_release(self, lease: int) -> None:
        """Release a get lease with the next request instead of a call of its own."""
        if lease:
            self._done.append(lease)

    def releases(self) -> list[int]:
        """The deferred leases, to list in the request being sent (each is handed out once)."""
        out = []
        while self._done:
            try:
                out.append(self._done.popleft())
            except IndexError:  # another thread took the last one
                break
        return out

    def settle(self, attach: pb.ShmAttachResponse | None, why: str = "") -> ShmPlane | None:
        """Open the arena from an ShmAttach reply (None: the daemon refused, `why`); logs a failure once."""
        self.tried = True
        if attach is not None:
            try:
                self.plane = ShmPlane(attach)
                self.pool = SlotPool(attach.lease_seconds)
                _say_how_copies_run()
                return self.plane
            except (OSError, ValueError) as exc:
                why = f"cannot map {attach.path}: {exc}"
        log.warning("kvbucket: shared-memory data plane unavailable (%s); using gRPC streaming", why)
        return None

    def current(self, plane: ShmPlane, nonce: int) -> bool:
        """Whether a reply's arena is the one mapped; if not (the daemon restarted), attach again next time."""
        if nonce == plane.nonce:
            return True
        log.info("kvbucket: the daemon's shared-memory arena changed (restart?); attaching again")
        self.close()
        self.tried = False
        self.pool.reset()
        self.releases()  # leases of the old daemon
        return False

    def leases_to_close(self) -> list[int]:
        """What a closing client releases: deferred get leases and its slot pool."""
        if self.plane is None:
            return []
        return [*self.releases(), *filter(None, [self.pool.reset()])]

    def close(self) -> None:
        if self.plane is not None:
            self.plane.close()
            self.plane = None


_attachments: weakref.WeakSet[Attachment] = weakref.WeakSet()
os.register_at_fork(after_in_child=lambda: [a.after_fork() for a in list(_attachments)])


def register_with_cuda(view) -> bool:
    """Page-lock `view` (e.g. `Client.shm_region()`) with cudaHostRegister, so GPU copies and kernels can
    write into it directly (DMA, no staging buffer). False when torch or CUDA is not available; raises
    RuntimeError when CUDA refuses. Unregister with `unregister_from_cuda(view)` before the mapping goes."""
    ptr, n = _address(view)
    cudart = _cudart()
    if cudart is None:
        return False
    rc = cudart.cudaHostRegister(ptr, n, 0)  # cudaHostRegisterDefault
    if int(rc) != 0:
        raise RuntimeError(f"cudaHostRegister of {n} bytes at {ptr:#x} failed: {rc}")
    return True


def unregister_from_cuda(view) -> bool:
    ptr, _ = _address(view)
    cudart = _cudart()
    return cudart is not None and int(cudart.cudaHostUnregister(ptr)) == 0


def _cudart():
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.cudart() if torch.cuda.is_available() else None


def _address(view) -> tuple[int, int]:
    arr = np.frombuffer(view, dtype=np.uint8)
    return arr.ctypes.data, arr.nbytes

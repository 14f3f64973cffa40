"""The Python SDK: `Client` (blocking) and `AsyncClient` (asyncio), built from a kvbucket URL.

    from kvbucket import Client, Layout, chunk_hashes

    layout = Layout("bfloat16", (32, 2, 256, 8, 128), tokens_per_chunk=256)
    with Client("kvbucket://127.0.0.1:7070", model="meta-llama/Llama-3-8B@main", layout=layout) as kv:
        hashes = chunk_hashes(token_ids, 256)
        cached = kv.lookup(hashes).hits          # leading chunks already stored
        kv.put(hashes[cached], kv_tensor_bytes)  # store the next one
        data = kv.get(hashes[0])                 # bytes back, checksum verified, or None

A client is bound to one scope (namespace, model, layout); `scoped(...)` derives another one that
shares the connection. Errors are the classes of `kvbucket.core.errors`.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import grpc

from kvbucket.clients import fastwire, shm, wire
from kvbucket.clients.admin import AdminMixin
from kvbucket.clients.url import Endpoint, parse_url
from kvbucket.clients.wire import LookupResult
from kvbucket.core import errors
from kvbucket.core.codecs import Codec
from kvbucket.core.keys import Layout
from kvbucket.proto import admin_pb2 as apb
from kvbucket.proto import admin_pb2_grpc, store_pb2_grpc
from kvbucket.proto import store_pb2 as pb

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", (4 << 20) + (64 << 10)),
    ("grpc.max_send_message_length", (4 << 20) + (64 << 10)),
    # A restarted daemon is found again within ~2 s (gRPC's default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

PutItem = tuple[bytes, object] | tuple[bytes, object, int]
# ShmAttach answers that mean "no shared memory here, ever": fall back to gRPC for good.
_NO_SHM = (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.FAILED_PRECONDITION,
           grpc.StatusCode.PERMISSION_DENIED)
_ATTACH_LOCK = threading.Lock()
log = logging.getLogger(__name__)


def _after_fork_in_child() -> None:
    global _ATTACH_LOCK
    _ATTACH_LOCK = threading.Lock()  # a parent thread may have held it at the fork (see "fork" in README)


os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass(frozen=True, slots=True)
class _Scope:
    namespace: str
    model: str
    layout: Layout | None

    def proto(self) -> pb.Scope:
        if self.layout is None:
            raise ValueError("this client has no layout: pass layout=Layout(...) or use scoped(layout=...)")
        return pb.Scope.FromString(_scope_bytes(self))  # a fifth of building it anew: every call has one


@functools.lru_cache(maxsize=256)
def _scope_bytes(scope: _Scope) -> bytes:
    return pb.Scope(namespace=scope.namespace, model=scope.model,
                    layout=wire.layout_proto(scope.layout)).SerializeToString()


def _data_methods(channel):
    """Put and Get with the wire module's frame codecs (same bytes on the wire, fewer copies)."""
    put = channel.stream_unary(wire.PUT_METHOD, request_serializer=wire.encode_put,
                               response_deserializer=pb.PutResponse.FromString)
    get = channel.unary_stream(wire.GET_METHOD, request_serializer=pb.GetRequest.SerializeToString,
                               response_deserializer=wire.decode_get)
    return put, get


def _after_break(unknown: int, latest, rest: Iterator) -> tuple[list[bool], Iterator]:
    """A pipelined put whose connection broke with `unknown` items taken and no outcome, the last of
    them `latest`: the outcomes of those before it -- read and sent, their replies lost, so not stored
    as far as anyone can tell -- and what to send again by gRPC: `latest` (still readable, as the
    next item was not asked for) and the rest."""
    if not unknown:
        return [], rest
    return [False] * (unknown - 1), itertools.chain([latest], rest)


def _credentials(ep: Endpoint):
    ca = open(ep.ca_file, "rb").read() if ep.ca_file else None
    return grpc.ssl_channel_credentials(root_certificates=ca)


class _Base:
    def __init__(self, url: str, *, namespace: str | None, model: str, layout: Layout | None,
                 token: str | None, timeout: float, codec: Codec | str, frame_bytes: int,
                 shm_wanted: bool | None = None) -> None:
        self.url = url
        self.endpoint = parse_url(url)
        # Same-host shared memory (clients/shm.py): by default over a unix socket, or when asked.
        self._shm_state = shm.Attachment(self.endpoint.unix if shm_wanted is None else shm_wanted)
        self.scope = _Scope(namespace if namespace is not None else self.endpoint.namespace, model, layout)
        token = token or self.endpoint.token
        self._token = token
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self.codec = Codec.parse(codec)
        self.frame_bytes = frame_bytes

    def _items(self, items: Iterable[PutItem]) -> Iterator[tuple[bytes, object, int]]:
        """Lazily: a caller may hand a generator that reuses one buffer for every item (LMCache's
        staging slot), so each item is read completely before the next one is asked for."""
        default_tokens = self.scope.layout.tokens_per_chunk if self.scope.layout else 0
        for item in items:
            yield (item[0], item[1], item[2] if len(item) > 2 else default_tokens)

    @staticmethod
    def _shm_batches(items: Iterable[PutItem], normalized: Iterator) -> Iterator[list]:
        """Shared-memory puts reserve a batch before copying: one batch for a list, one item at a
        time for a lazy iterable (see `_items`)."""
        if isinstance(items, (list, tuple)):
            yield list(normalized)
        else:
            for item in normalized:
                yield [item]

    def _read_listed(self, plane: shm.ShmPlane, hashes: Sequence[bytes], out: list | None, results: list) -> int:
        """The leading chunks the daemon's catalog lists, read with no call (clients/shm.py); how many.
        The daemon is then told which (`_tell_hits`), so they count as hits."""
        s = self.scope
        prefix = plane.catalog_prefix(s.namespace, s.model, s.layout) if s.layout is not None else None
        k = plane.read_listed(prefix, hashes, out, results) if prefix is not None else 0
        if k:
            scope, step = s.proto(), shm.HITS_PER_MESSAGE
            msgs = [pb.ShmHitsRequest(scope=scope, hashes=hashes[i : min(i + step, k)]) for i in range(0, k, step)]
            msgs[0].release.extend(self._shm_state.releases())
            self._tell_hits(plane, msgs)
        return k

    def _attach_failed(self, exc: grpc.RpcError) -> shm.ShmPlane | None:
        if exc.code() in _NO_SHM:
            return self._shm_state.settle(None, f"{exc.code().name}: {exc.details()}")
        return None  # transient (daemon restarting): gRPC for this call, attach again on the next

    @staticmethod
    def _merge(results: list, indexes: list[int], values: list) -> list:
        for i, v in zip(indexes, values, strict=True):
            results[i] = v
        return results

    def _reservation_items(self, items) -> list[tuple[bytes, int, int]]:
        default_tokens = self.scope.layout.tokens_per_chunk if self.scope.layout else 0
        return [(it[0], int(it[1]), it[2] if len(it) > 2 else default_tokens) for it in items]

    def _reservation(self, plane, items, resp, commit) -> shm.Reservation:
        """Views into the reserved slots (local buffers for fallbacks, or for all without a reply)."""
        views, in_arena = [], []
        for i, (_, n, _) in enumerate(items):
            slot = resp.slots[i] if resp is not None else None
            if slot is not None and not slot.fallback:
                views.append(plane.view[slot.offset : slot.offset + slot.length])
                in_arena.append(True)
            else:
                views.append(memoryview(bytearray(n)))
                in_arena.append(False)
        st = self._shm_state
        return shm.Reservation(items, views, in_arena, resp.lease if resp is not None else 0, commit,
                               lambda r: st.defer_release(r.lease))

    @staticmethod
    def _reserved_results(r: shm.Reservation, commit) -> tuple[list, list[int]]:
        """Stored flags of the arena slots from ShmCommit, and the indexes to send by Put."""
        stored: list = [None] * len(r.items)
        results = iter(commit.results if commit is not None else ())
        rest = []
        for i, in_arena in enumerate(r.in_arena):
            if in_arena:
                stored[i] = next(results).stored
            else:
                rest.append(i)
        return stored, rest

    def _derive(self, cls, **changes):
        other = cls.__new__(cls)
        other.__dict__.update(self.__dict__)
        s = self.scope
        other.scope = _Scope(
            changes.get("namespace", s.namespace), changes.get("model", s.model), changes.get("layout", s.layout)
        )
        return other


class Client(AdminMixin, _Base):
    """Blocking client; thread-safe (one HTTP/2 channel, many concurrent calls).

    `shm`: move chunk bytes through the daemon's shared-memory arena (same host only; see clients/shm.py).
    None (default): when the URL is a unix socket. Falls back to gRPC streaming when the arena is
    unavailable (logged once).
    `fast`: send the data-plane calls over the daemon's fast wire (clients/fastwire.py) when it offers
    one; default on without TLS. False: gRPC only."""

    def __init__(self, url: str, *, namespace: str | None = None, model: str = "default",
                 layout: Layout | None = None, token: str | None = None, timeout: float = 30.0,
                 codec: Codec | str = Codec.NONE, frame_bytes: int = wire.DEFAULT_FRAME,
                 shm: bool | None = None, fast: bool | None = None) -> None:
        super().__init__(url, namespace=namespace, model=model, layout=layout, token=token, timeout=timeout,
                         codec=codec, frame_bytes=frame_bytes, shm_wanted=shm)
        ep = self.endpoint
        self._dialer = fastwire.Dialer(not ep.tls if fast is None else fast and not ep.tls)
        self._hits_out: set = set()  # ShmHits calls not answered yet (catalog reads without the fast wire)
        self._hits_lock = threading.Lock()
        self._channel = (
            grpc.secure_channel(ep.target, _credentials(ep), CHANNEL_OPTIONS) if ep.tls
            else grpc.insecure_channel(ep.target, CHANNEL_OPTIONS)
        )
        self._stub = store_pb2_grpc.KVBucketStub(self._channel)
        self._shm = store_pb2_grpc.KVBucketShmStub(self._channel)
        self._put, self._get = _data_methods(self._channel)
        self.admin = admin_pb2_grpc.AdminStub(self._channel)
        st, sh, M = self._stub, self._shm, fastwire.Method
        self._fast_routes = {id(m): (code, reply) for m, code, reply in (
            (st.Lookup, M.LOOKUP, pb.LookupResponse), (st.Exists, M.EXISTS, pb.ExistsResponse),
            (st.Delete, M.DELETE, pb.DeleteResponse), (sh.ShmAttach, M.SHM_ATTACH, pb.ShmAttachResponse),
            (sh.ShmReserve, M.SHM_RESERVE, pb.ShmReserveResponse), (sh.ShmCommit, M.SHM_COMMIT, pb.ShmCommitResponse),
            (sh.ShmGet, M.SHM_GET, pb.ShmGetResponse), (sh.ShmRelease, M.SHM_RELEASE, pb.ShmReleaseResponse),
            (sh.ShmPut, M.SHM_PUT, pb.ShmPutResponse),
        )}

    def _fast(self) -> fastwire.Dialer | None:
        """The fast wire, if the daemon offers one and it is reachable (asked with Hello on first use)."""
        d = self._dialer
        if d.due():
            with _ATTACH_LOCK:
                if d.due():
                    try:
                        hello = self._stub.Hello(pb.HelloRequest(), timeout=self.timeout, metadata=self._metadata)
                    except grpc.RpcError:
                        hello = None  # an older daemon, or unreachable now: gRPC, and ask again later
                    d.learn(hello, self.endpoint.host, self.endpoint.unix)
        return d if d.address is not None else None

    def scoped(self, *, namespace: str | None = None, model: str | None = None, layout: Layout | None = None) -> Client:
        changes = {k: v for k, v in dict(namespace=namespace, model=model, layout=layout).items() if v is not None}
        return self._derive(Client, **changes)

    def _call(self, method, request, timeout: float | None = None):
        timeout = timeout or self.timeout
        route = self._fast_routes.get(id(method))
        if route is not None and (d := self._fast()) is not None:
            try:
                with d.conn(self._token, timeout) as c:
                    return c.unary(route[0], request, route[1], timeout)
            except fastwire.Broken:
                pass  # this call goes by gRPC
        try:
            return method(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise wire.translate(exc) from None

    def lookup(self, hashes: Sequence[bytes], timeout: float | None = None) -> LookupResult:
        r = self._call(self._stub.Lookup, pb.LookupRequest(scope=self.scope.proto(), hashes=hashes), timeout)
        return LookupResult(r.hits, [wire.TIER_NAMES[t] for t in r.tiers])

    def exists(self, hashes: Sequence[bytes]) -> list[bool]:
        return list(self._call(self._stub.Exists, pb.ExistsRequest(scope=self.scope.proto(), hashes=hashes)).present)

    def delete(self, hashes: Sequence[bytes]) -> int:
        return self._call(self._stub.Delete, pb.DeleteRequest(scope=self.scope.proto(), hashes=hashes)).deleted

    def put(self, hash: bytes, data, tokens: int | None = None) -> bool:
        item = (hash, data) if tokens is None else (hash, data, tokens)
        return self.put_many([item])[0]

    def put_many(self, items: Iterable[PutItem], *, ttl_seconds: float = 0.0, ttl_sliding: bool = False,
                 pin: bool = False) -> list[bool]:
        """Store chunks in one call; each is atomic on its own. `ttl_seconds` (sliding: refreshed
        on every hit) and `pin` apply to every chunk; without a TTL the namespace default applies.
        `items` may be a generator that reuses one buffer: each item is read before the next is asked
        for. Through shared memory a list goes in one ShmPut and a generator's chunks stream, one
        ShmPut each (`_put_stream`); over the fast wire every chunk is a PUT (`_put_grpc`). Streamed
        or not, each request is sent before the reply to the one before it is read."""
        opts = dict(ttl_seconds=ttl_seconds, ttl_sliding=ttl_sliding, pin=pin)
        plane = self._plane() if self.codec is Codec.NONE else None
        if plane is None:
            return self._put_grpc(self._items(items), **opts)
        if not isinstance(items, (list, tuple)) and (d := self._fast()) is not None:
            return self._put_stream(plane, d, self._items(items), **opts)
        stored: list[bool] = []
        for batch in self._shm_batches(items, self._items(items)):
            stored += self._put_shm(plane, batch, **opts)
        return stored

    def _put_stream(self, plane: shm.ShmPlane, d: fastwire.Dialer, items: Iterator, **opts) -> list[bool]:
        """A lazy iterable's chunks, one ShmPut each, every one sent before the reply to the one before
        it is read: the daemon stores a chunk while this thread copies the next one into its slot. The
        pool is kept two deep for that (a put that leaves no spare asks for two back). An item is read
        once, as it is copied, and stays readable only until the next is asked for: a chunk whose
        reply says its pool expired is reported not stored, and if the connection breaks, the chunk
        before the latest (its reply lost with it) is too, while the latest and the rest go by Put. A
        daemon's error ends the call, with the chunk after the refused one sent and its reply unread
        (that connection is closed, not reused)."""
        st = self._shm_state
        stored: list[bool] = []  # outcomes, in item order
        got = 0  # items taken from `items`
        latest = None  # the last of them
        in_flight: float | None = None  # when the ShmPut whose reply is unread was sent

        def settle(c: fastwire.Conn) -> None:
            nonlocal in_flight
            if in_flight is None:
                return
            try:
                resp = c.finish(pb.ShmPutResponse)
            except errors.FailedPrecondition:  # the pool expired on the daemon: nothing was stored
                st.pool.reset()
                stored.append(False)
            else:
                st.pool.stock(resp, in_flight)
                stored.append(resp.results[0].stored)
            in_flight = None

        try:
            with d.conn(self._token, self.timeout) as c:
                for latest in items:
                    got += 1
                    headers, raws = shm.chunk_headers(self.scope.proto(), [latest], **opts)
                    sizes = [len(raws[0])]
                    if (offsets := st.pool.take(sizes)) is None and in_flight is not None:
                        settle(c)  # its reply refills the pool
                        offsets = st.pool.take(sizes)
                    if offsets is None:
                        plane = self._stock_pool(plane, sizes * 2)
                        if plane is None:  # the arena went away: the rest by Put
                            return stored + self._put_grpc(itertools.chain([latest], items), **opts)
                        offsets = st.pool.take(sizes)
                    if offsets is None:  # no spare slots to be had: as a single put does
                        stored += self._put_shm(plane, [latest], **opts)
                        continue
                    req = shm.put_request(st, headers, offsets, raws, plane.write_hashed(offsets, raws))
                    if not st.pool.spare(sizes[0]):  # keep one spare besides the slot in flight
                        req.refill.append(sizes[0])
                    c.start(fastwire.Method.SHM_PUT, req, self.timeout)
                    sent = time.monotonic()
                    settle(c)
                    in_flight = sent
                settle(c)
        except fastwire.Broken:
            st.pool.reset()
            lost, rest = _after_break(got - len(stored), latest, items)
            return stored + lost + self._put_grpc(rest, **opts)
        return stored

    def _put_shm(self, plane: shm.ShmPlane, items: list, **opts) -> list[bool]:
        """One round trip: write into spare slots of the pool, ShmPut stores them and refills it."""
        st = self._shm_state
        headers, raws = shm.chunk_headers(self.scope.proto(), items, **opts)
        sizes = [len(r) for r in raws]
        offsets = st.pool.take(sizes)
        if offsets is None and (plane := self._stock_pool(plane, sizes)) is not None:
            offsets = st.pool.take(sizes)
        if plane is None:
            return self._put_grpc(items, **opts)
        if offsets is None:
            return self._put_reserved(plane, items, **opts)
        # Hashed as they are copied in (ShmPlane.write_hashed); the daemon stores those checksums
        # without reading the slots (hashed_in_slot).
        req = shm.put_request(st, headers, offsets, raws, plane.write_hashed(offsets, raws))
        sent = time.monotonic()
        try:
            resp = self._call(self._shm.ShmPut, req)
        except errors.FailedPrecondition:  # the pool expired on the daemon: nothing was stored
            st.pool.reset()
            return self._put_grpc(items, **opts)
        st.pool.stock(resp, sent)
        return [r.stored for r in resp.results]

    def _stock_pool(self, plane: shm.ShmPlane, sizes: list[int]) -> shm.ShmPlane | None:
        """Ask for spare slots of these sizes: the plane to write into (attached again if the daemon
        restarted), or None to use gRPC for this call."""
        st = self._shm_state
        req = pb.ShmPutRequest(pool=st.pool.id, refill=sizes, release=st.releases())
        sent = time.monotonic()
        try:
            resp = self._call(self._shm.ShmPut, req)
        except (errors.FailedPrecondition, wire.RemoteError):  # pool expired; a daemon without ShmPut
            st.pool.reset()
            return plane
        if not st.current(plane, resp.nonce):
            plane = self._plane()
            if plane is None or plane.nonce != resp.nonce:
                return None
        st.pool.stock(resp, sent)
        return plane

    def _put_reserved(self, plane: shm.ShmPlane, items: list, **opts) -> list[bool]:
        """Two round trips (ShmReserve, ShmCommit), for chunks the pool cannot take; fallbacks by Put."""
        req, raws = shm.reserve_request(self.scope.proto(), items, **opts)
        req.release.extend(self._shm_state.releases())
        resp = self._call(self._shm.ShmReserve, req)
        if not self._shm_state.current(plane, resp.nonce):
            self._release(resp.lease)
            return self._put_grpc(items, **opts)
        commit = None
        if resp.lease:
            try:
                plane.write(resp.slots, raws)
            except BaseException:
                self._release(resp.lease)
                raise
            try:
                req = pb.ShmCommitRequest(lease=resp.lease, daemon_checksums=True)
                commit = self._call(self._shm.ShmCommit, req)
            except errors.FailedPrecondition:  # the lease expired while we copied: send them by Put
                return self._put_grpc(items, **opts)
        stored, fallback = shm.commit_results(resp.slots, commit)
        if fallback:
            self._merge(stored, fallback, self._put_grpc([items[i] for i in fallback], **opts))
        return stored

    def _put_grpc(self, items: Iterable, **opts) -> list[bool]:
        """Put over the fast wire when there is one, else (or from where it broke) a gRPC Put stream.
        On the fast wire each chunk is sent before the reply to the one before it is read, so the
        daemon receives and stores one while this thread hashes and sends the next. Each item is read
        once; when the connection breaks, outcomes are as `_after_break` gives them."""
        pairs = wire.put_items(self.scope.proto(), items, codec=self.codec, **opts)
        stored: list[bool] = []
        if (d := self._fast()) is not None:
            got, latest = 0, None
            try:
                with d.conn(self._token, self.timeout) as c:
                    for latest in pairs:
                        got += 1
                        c.start_put(*latest, self.timeout)
                        if c.unread > 1:
                            stored.append(c.finish(pb.PutResponse).results[0].stored)
                    while c.unread:
                        stored.append(c.finish(pb.PutResponse).results[0].stored)
                return stored
            except fastwire.Broken:
                lost, pairs = _after_break(got - len(stored), latest, pairs)
                stored += lost
        stream = wire.put_stream(pairs, frame=self.frame_bytes)
        return stored + [r.stored for r in self._call(self._put, stream).results]

    def _plane(self) -> shm.ShmPlane | None:
        st = self._shm_state
        if not st.wanted or st.tried:
            return st.plane
        with _ATTACH_LOCK:
            if st.tried:
                return st.plane
            try:
                attach = self._shm.ShmAttach(pb.ShmAttachRequest(), timeout=self.timeout,
                                             metadata=self._metadata)
            except grpc.RpcError as exc:
                return self._attach_failed(exc)
            return st.settle(attach)

    def _release(self, lease: int) -> None:
        if not lease:
            return
        try:
            self._call(self._shm.ShmRelease, pb.ShmReleaseRequest(lease=lease))
        except errors.KVBucketError:
            pass  # the lease expires on its own

    def get_views(self, hashes: Sequence[bytes], *, verify: bool = True) -> shm.Views:
        """The chunks as read-only views of the daemon's shared-memory arena: no copy (None for a miss).
        Use them inside `with client.get_views(...) as views:`; see `clients.shm.Views`. Over gRPC (or
        for a chunk the arena cannot hold) the views are of buffers fetched by Get."""
        plane = self._plane() if hashes else None
        if plane is None:
            return shm.Views(self._get_grpc(hashes, None, False))
        st = self._shm_state
        req = pb.ShmGetRequest(scope=self.scope.proto(), hashes=hashes, release=st.releases())
        resp = self._call(self._shm.ShmGet, req)
        if not st.current(plane, resp.nonce):
            self._release(resp.lease)
            return shm.Views(self._get_grpc(hashes, None, False))
        results: list[memoryview | None] = [None] * len(hashes)
        try:
            fallback = plane.views(resp, verify, results)
        except BaseException:
            st.defer_release(resp.lease)
            raise
        if fallback:
            self._merge(results, fallback, self._get_grpc([hashes[i] for i in fallback], None, False))
        return shm.Views(results, functools.partial(st.defer_release, resp.lease))

    def reserve(self, items: Sequence[tuple[bytes, int] | tuple[bytes, int, int]], *, ttl_seconds: float = 0.0,
                ttl_sliding: bool = False, pin: bool = False) -> shm.Reservation:
        """Buffers to write `(hash, nbytes[, tokens])` chunks into, in place, then `commit()`: slots of
        the daemon's arena when attached (a GPU kernel can write there directly), else local buffers
        sent by Put. See `clients.shm.Reservation`."""
        norm, opts = self._reservation_items(items), dict(ttl_seconds=ttl_seconds, ttl_sliding=ttl_sliding, pin=pin)
        plane = self._plane() if self.codec is Codec.NONE else None
        resp = None
        if plane is not None:
            st = self._shm_state
            req = pb.ShmReserveRequest(chunks=shm.reservation_headers(self.scope.proto(), norm, **opts),
                                       release=st.releases())
            resp = self._call(self._shm.ShmReserve, req)
            if not st.current(plane, resp.nonce):
                self._release(resp.lease)
                resp = None
        return self._reservation(plane, norm, resp, functools.partial(self._commit_reserved, opts=opts))

    def _commit_reserved(self, r: shm.Reservation, opts: dict) -> list[bool]:
        commit = None
        if r.lease:
            commit = self._call(self._shm.ShmCommit, pb.ShmCommitRequest(lease=r.lease, daemon_checksums=True))
        stored, rest = self._reserved_results(r, commit)
        if rest:
            self._merge(stored, rest, self._put_grpc([(r.items[i][0], r.views[i], r.items[i][2]) for i in rest],
                                                     **opts))
        return stored

    def transport(self) -> str:
        """How raw chunks move between this client and its daemon: "shm" (the shared-memory arena),
        "fast wire" or "grpc" -- asked of the daemon (attaching, if this client may) on first use."""
        if self.codec is Codec.NONE and self._plane() is not None:
            return "shm"
        return "fast wire" if self._fast() is not None else "grpc"

    def shm_region(self) -> memoryview | None:
        """The mapped shared-memory arena (to `clients.shm.register_with_cuda`), or None over gRPC."""
        plane = self._plane()
        return plane.view if plane is not None else None

    def get(self, hash: bytes) -> memoryview | None:
        return self.get_many([hash])[0]

    def get_into(self, hash: bytes, out) -> bool:
        """Write the chunk into `out` (any writable buffer); False on a miss."""
        return self.get_many([hash], out=[out])[0] is not None

    def get_many(self, hashes: Sequence[bytes], *, out: list | None = None,
                 stop_at_first_miss: bool = False) -> list[memoryview | None]:
        plane = self._plane() if hashes else None
        if plane is None:
            return self._get_grpc(hashes, out, stop_at_first_miss)
        results: list[memoryview | None] = [None] * len(hashes)
        k = self._read_listed(plane, hashes, out, results)
        if k < len(hashes):
            rest = self._get_shm(plane, hashes[k:], out[k:] if out is not None else None, stop_at_first_miss)
            results[k:] = rest
        return results

    def _tell_hits(self, plane: shm.ShmPlane, msgs: list[pb.ShmHitsRequest]) -> None:
        """Tell the daemon of catalog reads without waiting: one-way over the fast wire, else ShmHits
        calls whose replies nobody waits for (`close()` waits for those still out)."""
        if (d := self._fast()) is not None:
            try:
                with d.conn(self._token, self.timeout) as c:
                    for msg in msgs:
                        c.notify(fastwire.Method.SHM_HITS, msg)
                return
            except fastwire.Broken:  # the daemon went away: the reads stand (verified), uncounted
                if plane.gone():  # and a new one removed its arena: attach again on the next call
                    self._shm_state.current(plane, 0)
                return
        for msg in msgs:
            fut = self._shm.ShmHits.future(msg, timeout=self.timeout, metadata=self._metadata)
            with self._hits_lock:
                self._hits_out.add(fut)
            fut.add_done_callback(self._hit_told)

    def _hit_told(self, fut) -> None:
        with self._hits_lock:
            self._hits_out.discard(fut)
        try:
            exc = fut.exception()
        except grpc.FutureCancelledError as cancelled:
            exc = cancelled
        if exc is not None:
            log.debug("kvbucket: ShmHits failed (those reads go uncounted): %s", exc)

    def _get_shm(self, plane: shm.ShmPlane, hashes: Sequence[bytes], out: list | None,
                 stop_at_first_miss: bool) -> list[memoryview | None]:
        req = pb.ShmGetRequest(scope=self.scope.proto(), hashes=hashes, stop_at_first_miss=stop_at_first_miss,
                               release=self._shm_state.releases())
        resp = self._call(self._shm.ShmGet, req)
        if not self._shm_state.current(plane, resp.nonce):
            self._release(resp.lease)
            return self._get_grpc(hashes, out, stop_at_first_miss)
        results: list[memoryview | None] = [None] * len(hashes)
        try:
            fallback = plane.read(resp, out, results)
        finally:
            self._shm_state.defer_release(resp.lease)  # sent with the next request
        if fallback:
            outs = [out[i] for i in fallback] if out is not None else None
            self._merge(results, fallback, self._get_grpc([hashes[i] for i in fallback], outs, False))
        return results

    def _get_grpc(self, hashes: Sequence[bytes], out: list | None, stop_at_first_miss: bool) -> list:
        """Get over the fast wire when there is one, else a gRPC Get stream."""
        req = pb.GetRequest(scope=self.scope.proto(), hashes=hashes, frame_bytes=self.frame_bytes,
                            stop_at_first_miss=stop_at_first_miss)
        if (d := self._fast()) is not None:
            try:
                with d.conn(self._token, self.timeout) as c:
                    return c.get(req, out, self.timeout)
            except fastwire.Broken:
                pass
        asm = wire.GetAssembler(len(hashes), out)
        try:
            for msg in self._get(req, timeout=self.timeout, metadata=self._metadata):
                asm.feed(msg)
        except grpc.RpcError as exc:
            raise wire.translate(exc) from None
        return asm.results

    def stats(self) -> apb.StatsResponse:
        return self._call(self.admin.Stats, apb.StatsRequest())

    def list_entries(self, **filters) -> apb.ListEntriesResponse:
        return self._call(self.admin.ListEntries, apb.ListEntriesRequest(**filters))

    def ping(self, timeout: float = 2.0) -> bool:
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
            return True
        except grpc.FutureTimeoutError:
            return False

    def close(self) -> None:
        with self._hits_lock:
            told = list(self._hits_out)
        for fut in told:  # catalog reads still being told: let them be counted
            try:
                fut.result(timeout=self.timeout)
            except Exception:
                pass  # logged by _hit_told
        for lease in self._shm_state.leases_to_close():
            self._release(lease)
        self._shm_state.close()
        self._dialer.close()
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient(_Base):
    """asyncio client with the same methods as `Client`, awaited."""

    def __init__(self, url: str, *, namespace: str | None = None, model: str = "default",
                 layout: Layout | None = None, token: str | None = None, timeout: float = 30.0,
                 codec: Codec | str = Codec.NONE, frame_bytes: int = wire.DEFAULT_FRAME,
                 shm: bool | None = None) -> None:
        super().__init__(url, namespace=namespace, model=model, layout=layout, token=token, timeout=timeout,
                         codec=codec, frame_bytes=frame_bytes, shm_wanted=shm)
        ep = self.endpoint
        self._channel = (
            grpc.aio.secure_channel(ep.target, _credentials(ep), CHANNEL_OPTIONS) if ep.tls
            else grpc.aio.insecure_channel(ep.target, CHANNEL_OPTIONS)
        )
        self._stub = store_pb2_grpc.KVBucketStub(self._channel)
        self._shm = store_pb2_grpc.KVBucketShmStub(self._channel)
        self._put, self._get = _data_methods(self._channel)
        self.admin = admin_pb2_grpc.AdminStub(self._channel)
        self._hits_out: set[asyncio.Task] = set()  # ShmHits calls not answered yet

    def scoped(self, *, namespace: str | None = None, model: str | None = None,
               layout: Layout | None = None) -> AsyncClient:
        changes = {k: v for k, v in dict(namespace=namespace, model=model, layout=layout).items() if v is not None}
        return self._derive(AsyncClient, **changes)

    async def _call(self, method, request, timeout: float | None = None):
        try:
            return await method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise wire.translate(exc) from None

    async def lookup(self, hashes: Sequence[bytes], timeout: float | None = None) -> LookupResult:
        r = await self._call(self._stub.Lookup, pb.LookupRequest(scope=self.scope.proto(), hashes=hashes), timeout)
        return LookupResult(r.hits, [wire.TIER_NAMES[t] for t in r.tiers])

    async def exists(self, hashes: Sequence[bytes]) -> list[bool]:
        r = await self._call(self._stub.Exists, pb.ExistsRequest(scope=self.scope.proto(), hashes=hashes))
        return list(r.present)

    async def delete(self, hashes: Sequence[bytes]) -> int:
        r = await self._call(self._stub.Delete, pb.DeleteRequest(scope=self.scope.proto(), hashes=hashes))
        return r.deleted

    async def put(self, hash: bytes, data, tokens: int | None = None) -> bool:
        item = (hash, data) if tokens is None else (hash, data, tokens)
        return (await self.put_many([item]))[0]

    async def put_many(self, items: Iterable[PutItem], *, ttl_seconds: float = 0.0, ttl_sliding: bool = False,
                       pin: bool = False) -> list[bool]:
        """As Client.put_many, but a generator's chunks go one call after another (no fast wire
        here to pipeline them on)."""
        opts = dict(ttl_seconds=ttl_seconds, ttl_sliding=ttl_sliding, pin=pin)
        plane = await self._plane() if self.codec is Codec.NONE else None
        if plane is None:
            return await self._put_grpc(self._items(items), **opts)
        stored: list[bool] = []
        for batch in self._shm_batches(items, self._items(items)):
            stored += await self._put_shm(plane, batch, **opts)
        return stored

    async def _put_shm(self, plane: shm.ShmPlane, items: list, **opts) -> list[bool]:
        """As Client._put_shm: one round trip through the slot pool."""
        st = self._shm_state
        headers, raws = shm.chunk_headers(self.scope.proto(), items, **opts)
        sizes = [len(r) for r in raws]
        offsets = st.pool.take(sizes)
        if offsets is None and (plane := await self._stock_pool(plane, sizes)) is not None:
            offsets = st.pool.take(sizes)
        if plane is None:
            return await self._put_grpc(items, **opts)
        if offsets is None:
            return await self._put_reserved(plane, items, **opts)
        # Copy and hash on the loop (~6 ms per 32 MiB), as Client._put_shm.
        req = shm.put_request(st, headers, offsets, raws, plane.write_hashed(offsets, raws))
        sent = time.monotonic()
        try:
            resp = await self._call(self._shm.ShmPut, req)
        except errors.FailedPrecondition:
            st.pool.reset()
            return await self._put_grpc(items, **opts)
        st.pool.stock(resp, sent)
        return [r.stored for r in resp.results]

    async def _stock_pool(self, plane: shm.ShmPlane, sizes: list[int]) -> shm.ShmPlane | None:
        """Ask for spare slots of these sizes: the plane to write into (attached again if the daemon
        restarted), or None to use gRPC for this call."""
        st = self._shm_state
        req = pb.ShmPutRequest(pool=st.pool.id, refill=sizes, release=st.releases())
        sent = time.monotonic()
        try:
            resp = await self._call(self._shm.ShmPut, req)
        except (errors.FailedPrecondition, wire.RemoteError):
            st.pool.reset()
            return plane
        if not st.current(plane, resp.nonce):
            plane = self._plane()
            if plane is None or plane.nonce != resp.nonce:
                return None
        st.pool.stock(resp, sent)
        return plane

    async def _put_reserved(self, plane: shm.ShmPlane, items: list, **opts) -> list[bool]:
        req, raws = shm.reserve_request(self.scope.proto(), items, **opts)
        req.release.extend(self._shm_state.releases())
        resp = await self._call(self._shm.ShmReserve, req)
        if not self._shm_state.current(plane, resp.nonce):
            await self._release(resp.lease)
            return await self._put_grpc(items, **opts)
        commit = None
        if resp.lease:
            try:
                plane.write(resp.slots, raws)  # memcpy on the loop: ~3 ms per 32 MiB
            except BaseException:
                await self._release(resp.lease)
                raise
            try:
                req = pb.ShmCommitRequest(lease=resp.lease, daemon_checksums=True)
                commit = await self._call(self._shm.ShmCommit, req)
            except errors.FailedPrecondition:  # the lease expired while we copied: send them by Put
                return await self._put_grpc(items, **opts)
        stored, fallback = shm.commit_results(resp.slots, commit)
        if fallback:
            self._merge(stored, fallback, await self._put_grpc([items[i] for i in fallback], **opts))
        return stored

    async def _put_grpc(self, items: Iterable, **opts) -> list[bool]:
        pairs = wire.put_items(self.scope.proto(), items, codec=self.codec, **opts)
        stream = wire.put_stream(pairs, frame=self.frame_bytes)
        return [r.stored for r in (await self._call(self._put, stream)).results]

    async def _plane(self) -> shm.ShmPlane | None:
        st = self._shm_state
        if not st.wanted or st.tried:
            return st.plane
        try:
            attach = await self._shm.ShmAttach(pb.ShmAttachRequest(), timeout=self.timeout,
                                               metadata=self._metadata)
        except grpc.RpcError as exc:
            return self._attach_failed(exc)
        return st.plane if st.tried else st.settle(attach)  # a concurrent call may have attached first

    async def _release(self, lease: int) -> None:
        if not lease:
            return
        try:
            await self._call(self._shm.ShmRelease, pb.ShmReleaseRequest(lease=lease))
        except errors.KVBucketError:
            pass  # the lease expires on its own

    async def get_views(self, hashes: Sequence[bytes], *, verify: bool = True) -> shm.Views:
        """As Client.get_views."""
        plane = await self._plane() if hashes else None
        if plane is None:
            return shm.Views(await self._get_grpc(hashes, None, False))
        st = self._shm_state
        req = pb.ShmGetRequest(scope=self.scope.proto(), hashes=hashes, release=st.releases())
        resp = await self._call(self._shm.ShmGet, req)
        if not st.current(plane, resp.nonce):
            await self._release(resp.lease)
            return shm.Views(await self._get_grpc(hashes, None, False))
        results: list[memoryview | None] = [None] * len(hashes)
        try:
            fallback = plane.views(resp, verify, results)
        except BaseException:
            st.defer_release(resp.lease)
            raise
        if fallback:
            self._merge(results, fallback, await self._get_grpc([hashes[i] for i in fallback], None, False))
        return shm.Views(results, functools.partial(st.defer_release, resp.lease))

    async def reserve(self, items: Sequence[tuple[bytes, int] | tuple[bytes, int, int]], *, ttl_seconds: float = 0.0,
                      ttl_sliding: bool = False, pin: bool = False) -> shm.Reservation:
        """As Client.reserve; `await reservation.commit()`."""
        norm, opts = self._reservation_items(items), dict(ttl_seconds=ttl_seconds, ttl_sliding=ttl_sliding, pin=pin)
        plane = await self._plane() if self.codec is Codec.NONE else None
        resp = None
        if plane is not None:
            st = self._shm_state
            req = pb.ShmReserveRequest(chunks=shm.reservation_headers(self.scope.proto(), norm, **opts),
                                       release=st.releases())
            resp = await self._call(self._shm.ShmReserve, req)
            if not st.current(plane, resp.nonce):
                await self._release(resp.lease)
                resp = None
        return self._reservation(plane, norm, resp, functools.partial(self._commit_reserved, opts=opts))

    async def _commit_reserved(self, r: shm.Reservation, opts: dict) -> list[bool]:
        commit = None
        if r.lease:
            commit = await self._call(self._shm.ShmCommit,
                                      pb.ShmCommitRequest(lease=r.lease, daemon_checksums=True))
        stored, rest = self._reserved_results(r, commit)
        if rest:
            self._merge(stored, rest, await self._put_grpc([(r.items[i][0], r.views[i], r.items[i][2])
                                                            for i in rest], **opts))
        return stored

    async def shm_region(self) -> memoryview | None:
        plane = await self._plane()
        return plane.view if plane is not None else None

    async def get(self, hash: bytes) -> memoryview | None:
        return (await self.get_many([hash]))[0]

    async def get_into(self, hash: bytes, out) -> bool:
        return (await self.get_many([hash], out=[out]))[0] is not None

    async def get_many(self, hashes: Sequence[bytes], *, out: list | None = None,
                       stop_at_first_miss: bool = False) -> list[memoryview | None]:
        plane = await self._plane() if hashes else None
        if plane is None:
            return await self._get_grpc(hashes, out, stop_at_first_miss)
        results: list[memoryview | None] = [None] * len(hashes)
        k = self._read_listed(plane, hashes, out, results)
        if k < len(hashes):
            rest = await self._get_shm(plane, hashes[k:], out[k:] if out is not None else None, stop_at_first_miss)
            results[k:] = rest
        return results

    def _tell_hits(self, plane: shm.ShmPlane, msgs: list[pb.ShmHitsRequest]) -> None:
        """Tell the daemon of catalog reads by ShmHits calls nobody waits for (`close()` waits for
        those still out)."""
        for msg in msgs:
            task = asyncio.get_running_loop().create_task(self._tell(msg))
            self._hits_out.add(task)
            task.add_done_callback(self._hits_out.discard)

    async def _tell(self, msg: pb.ShmHitsRequest) -> None:
        try:
            await self._shm.ShmHits(msg, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            log.debug("kvbucket: ShmHits failed (those reads go uncounted): %s", exc)

    async def _get_shm(self, plane: shm.ShmPlane, hashes: Sequence[bytes], out: list | None,
                       stop_at_first_miss: bool) -> list[memoryview | None]:
        req = pb.ShmGetRequest(scope=self.scope.proto(), hashes=hashes, stop_at_first_miss=stop_at_first_miss,
                               release=self._shm_state.releases())
        resp = await self._call(self._shm.ShmGet, req)
        if not self._shm_state.current(plane, resp.nonce):
            await self._release(resp.lease)
            return await self._get_grpc(hashes, out, stop_at_first_miss)
        results: list[memoryview | None] = [None] * len(hashes)
        try:
            fallback = plane.read(resp, out, results)
        finally:
            self._shm_state.defer_release(resp.lease)  # sent with the next request
        if fallback:
            outs = [out[i] for i in fallback] if out is not None else None
            self._merge(results, fallback, await self._get_grpc([hashes[i] for i in fallback], outs, False))
        return results

    async def _get_grpc(self, hashes: Sequence[bytes], out: list | None, stop_at_first_miss: bool) -> list:
        asm = wire.GetAssembler(len(hashes), out)
        req = pb.GetRequest(scope=self.scope.proto(), hashes=hashes, frame_bytes=self.frame_bytes,
                            stop_at_first_miss=stop_at_first_miss)
        try:
            async for msg in self._get(req, timeout=self.timeout, metadata=self._metadata):
                asm.feed(msg)
        except grpc.RpcError as exc:
            raise wire.translate(exc) from None
        return asm.results

    async def stats(self) -> apb.StatsResponse:
        return await self._call(self.admin.Stats, apb.StatsRequest())

    async def list_entries(self, **filters) -> apb.ListEntriesResponse:
        return await self._call(self.admin.ListEntries, apb.ListEntriesRequest(**filters))

    async def close(self) -> None:
        if self._hits_out:  # catalog reads still being told: let them be counted
            await asyncio.gather(*self._hits_out, return_exceptions=True)
        for lease in self._shm_state.leases_to_close():
            await self._release(lease)
        self._shm_state.close()
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

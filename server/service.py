"""The data-plane servicer: a thin adapter from the wire (proto/store.proto) to the TieredStore."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import xxhash

from kvbucket.core import buffers, frames
from kvbucket.core.codecs import Codec, decompress
from kvbucket.core.errors import DataLoss, InvalidArgument, ResourceExhausted
from kvbucket.core.keys import EntryKey, Layout, check_hash, keys_in_scope
from kvbucket.core.record import Record, RecordHeader, checksum, validate_against_layout
from kvbucket.proto import store_pb2 as pb
from kvbucket.proto import store_pb2_grpc
from kvbucket.server.auth import Authenticator, Caller
from kvbucket.server.errors import rpc
from kvbucket.server.metrics import Metrics
from kvbucket.server.store import TieredStore
from kvbucket.server.tiers.base import EntryMeta

TIER_ENUM = {"ram": pb.TIER_RAM, "nvme": pb.TIER_NVME, "s3": pb.TIER_S3}
DEFAULT_FRAME = 1 << 20
MAX_KEYS = 4096


@dataclass(frozen=True, slots=True)
class Limits:
    max_frame_bytes: int = 4 << 20
    max_chunk_bytes: int = 256 << 20


def layout_from_proto(msg: pb.Layout) -> Layout:
    return Layout(
        dtype=msg.dtype,
        shape=tuple(msg.shape),
        tokens_per_chunk=msg.tokens_per_chunk,
        tp_rank=msg.tp_rank,
        tp_size=msg.tp_size or 1,
    )


@functools.lru_cache(maxsize=256)
def _layout(serialized: bytes) -> tuple[Layout, str]:
    """A scope's layout and its fingerprint, made once per distinct Layout message: every data-plane
    call names one (and every chunk of a put), and making them costs ~12 us against ~1 us here."""
    layout = layout_from_proto(pb.Layout.FromString(serialized))
    return layout, layout.fingerprint()


class _Incoming:
    """One chunk of a Put stream, assembled into a single buffer as its frames arrive."""

    __slots__ = ("key", "header", "layout", "buf", "filled", "hasher")

    def __init__(self, key: EntryKey, header: pb.ChunkHeader, layout: Layout, buf) -> None:
        self.key = key
        self.header = header
        self.layout = layout
        self.buf = buf  # a memoryview: of heap memory (buffers.empty) or of an arena slot (KVBucketService.allocate)
        self.filled = 0
        # Raw bytes are hashed piece by piece as they land (from cache), not in one pass over the
        # whole chunk at commit; a compressed payload is checked after decompression instead.
        self.hasher = xxhash.xxh3_64() if header.codec == pb.CODEC_NONE else None

    def write(self, data: bytes) -> None:
        end = self.filled + len(data)
        if end > len(self.buf):
            raise InvalidArgument(
                f"chunk {self.key.hash.hex()[:16]}: frames carry more than the declared "
                f"payload_length {len(self.buf)}"
            )
        self.buf[self.filled : end] = data
        if self.hasher is not None:
            self.hasher.update(memoryview(self.buf)[self.filled : end])
        self.filled = end

    @property
    def complete(self) -> bool:
        return self.filled == len(self.buf)

    def truncated(self) -> InvalidArgument:
        return InvalidArgument(
            f"chunk {self.key.hash.hex()[:16]} is truncated: {self.filled} of {len(self.buf)} payload bytes "
            "arrived; nothing was stored for it"
        )


def raw_entry(key: EntryKey, layout: Layout, h: pb.ChunkHeader, raw, csum: int) -> tuple[Record, EntryMeta]:
    """The record (codec NONE, payload `raw` as given) and index meta of a verified chunk from a put."""
    tokens = h.tokens or layout.tokens_per_chunk
    shape = layout.shape  # the header's, as check_header found
    header = RecordHeader(Codec.NONE, layout.dtype, shape, h.raw_length, h.raw_length, csum, tokens)
    now = time.time()
    meta = EntryMeta(
        key=key, tokens=tokens, raw_bytes=h.raw_length, stored_bytes=h.raw_length, codec=Codec.NONE,
        created=now, last_access=now, dtype=layout.dtype, shape=shape,
        ttl_seconds=h.ttl_seconds, sliding=h.ttl_sliding, pinned=h.pin,
    )
    return Record(header, raw), meta


class KVBucketService(store_pb2_grpc.KVBucketServicer):
    def __init__(self, store: TieredStore, auth: Authenticator, metrics: Metrics, limits: Limits) -> None:
        self.store = store
        self.auth = auth
        self.metrics = metrics
        self.limits = limits
        # Where a raw chunk of a Put lands: uninitialized heap memory (filled whole, or dropped), or
        # (server/shm.py sets it when the daemon has an arena) a free slot of the pre-faulted arena --
        # no page faults, and shm readers get it without a copy.
        self.allocate: Callable[[int], memoryview] = buffers.empty
        self.hello = pb.HelloResponse()  # filled in by the daemon once its listeners are up

    # -- helpers ---------------------------------------------------------------------------

    def _caller(self, context) -> Caller:
        return self.auth.authenticate(context.invocation_metadata())

    def _scope(self, caller: Caller, scope: pb.Scope) -> tuple[str, str, Layout, str]:
        """(namespace, model, layout, layout fingerprint) of a call's scope."""
        if not scope.HasField("layout"):
            raise InvalidArgument("scope.layout is required (dtype, shape, tokens_per_chunk)")
        layout, fingerprint = _layout(scope.layout.SerializeToString())
        namespace = self.auth.namespace(caller, scope.namespace)
        return namespace, scope.model, layout, fingerprint

    def _keys(self, caller: Caller, scope: pb.Scope, hashes) -> list[EntryKey]:
        if len(hashes) > MAX_KEYS:
            raise InvalidArgument(f"{len(hashes)} hashes in one call; the limit is {MAX_KEYS}")
        namespace, model, _, fingerprint = self._scope(caller, scope)
        return keys_in_scope(namespace, model, fingerprint, hashes)

    # -- RPCs ------------------------------------------------------------------------------

    @rpc("lookup")
    async def Lookup(self, request: pb.LookupRequest, context) -> pb.LookupResponse:
        keys = self._keys(self._caller(context), request.scope, request.hashes)
        tiers = self.store.lookup(keys)
        return pb.LookupResponse(hits=len(tiers), tiers=[TIER_ENUM[t] for t in tiers])

    @rpc("hello")
    async def Hello(self, request: pb.HelloRequest, context) -> pb.HelloResponse:
        self._caller(context)
        return self.hello

    @rpc("exists")
    async def Exists(self, request: pb.ExistsRequest, context) -> pb.ExistsResponse:
        keys = self._keys(self._caller(context), request.scope, request.hashes)
        return pb.ExistsResponse(present=self.store.exists(keys))

    @rpc("delete")
    async def Delete(self, request: pb.DeleteRequest, context) -> pb.DeleteResponse:
        keys = self._keys(self._caller(context), request.scope, request.hashes)
        deleted = 0
        for k in keys:
            deleted += await self.store.delete(k)
        return pb.DeleteResponse(deleted=deleted)

    @rpc("put")
    async def Put(self, request_iterator, context) -> pb.PutResponse:
        caller = self._caller(context)
        results: list[pb.ChunkResult] = []
        pending: _Incoming | None = None
        try:
            async for msg in request_iterator:  # data frames arrive as memoryviews (frames.decode)
                if type(msg) is memoryview:
                    data = msg
                else:
                    part = msg.WhichOneof("part")
                    if part == "header":
                        if pending is not None:
                            raise pending.truncated()
                        pending = self._begin(caller, msg.header)
                        continue
                    if part != "data":
                        raise InvalidArgument("empty PutRequest: set either header or data")
                    data = msg.data
                if pending is None:
                    raise InvalidArgument(
                        "a data frame arrived with no open chunk: before any chunk header, or after the "
                        "previous chunk's payload_length was complete"
                    )
                pending.write(data)
                if pending.complete:
                    done, pending = pending, None
                    results.append(await self._commit(done))
            if pending is not None:
                raise pending.truncated()
        finally:
            pending = None  # an arena slot goes back now, not when the traceback is collected
        return pb.PutResponse(results=results)

    def _begin(self, caller: Caller, h: pb.ChunkHeader) -> _Incoming:
        key, layout = self.check_header(caller, h)
        n = h.payload_length
        return _Incoming(key, h, layout, self.allocate(n) if h.codec == pb.CODEC_NONE else buffers.empty(n))

    def check_header(self, caller: Caller, h: pb.ChunkHeader) -> tuple[EntryKey, Layout]:
        """The key of a chunk header from a put, after every check a put makes (also used by server/shm.py)."""
        namespace, model, layout, fingerprint = self._scope(caller, h.scope)
        key = EntryKey(namespace, model, fingerprint, check_hash(h.hash))
        Codec.parse(h.codec)
        validate_against_layout(h.dtype, tuple(h.shape), h.raw_length, layout)
        if h.tokens > layout.tokens_per_chunk:
            raise InvalidArgument(
                f"chunk covers {h.tokens} tokens, more than tokens_per_chunk {layout.tokens_per_chunk}"
            )
        if h.raw_length > self.limits.max_chunk_bytes or h.payload_length > self.limits.max_chunk_bytes:
            self.metrics.rejected.labels("chunk_too_large").inc()
            raise ResourceExhausted(
                f"chunk of {h.raw_length} bytes exceeds this daemon's max_chunk_bytes {self.limits.max_chunk_bytes}"
            )
        if h.payload_length == 0:
            raise InvalidArgument("payload_length is 0: a chunk carries at least one byte")
        if h.codec == pb.CODEC_NONE and h.payload_length != h.raw_length:
            raise InvalidArgument(f"codec none: payload_length {h.payload_length} != raw_length {h.raw_length}")
        return key, layout

    async def _commit(self, inc: _Incoming) -> pb.ChunkResult:
        h = inc.header
        codec = Codec(h.codec)
        if codec is Codec.NONE:
            raw = inc.buf
            got = inc.hasher.intdigest()
        else:
            raw = await asyncio.to_thread(decompress, codec, inc.buf, h.raw_length)
            got = checksum(raw)
        if got != h.checksum:
            self.metrics.rejected.labels("checksum").inc()
            raise DataLoss(
                f"chunk {inc.key.hash.hex()[:16]}: bytes do not match the header checksum (corrupted in transit?); "
                "nothing was stored for it"
            )
        await self.store.put(inc.key, *raw_entry(inc.key, inc.layout, h, raw, h.checksum))
        self.metrics.bytes_in.inc(h.payload_length)
        return pb.ChunkResult(hash=h.hash, stored=True)

    @rpc("get")
    async def Get(self, request: pb.GetRequest, context):
        frame = min(max(request.frame_bytes or DEFAULT_FRAME, 64 << 10), self.limits.max_frame_bytes)
        async for msg, payload in self.chunks(self._caller(context), request):
            yield msg
            if payload is not None:
                for off in range(0, len(payload), frame):
                    yield frames.encode(payload[off : off + frame])  # GetResponse{data}, one copy

    async def chunks(self, caller: Caller, request: pb.GetRequest):
        """Per requested hash: (GetResponse{header}, the payload to send) or (GetResponse{miss}, None).
        The entry is held (not evicted, not recycled) until the consumer asks for the next one.
        Shared by Get and the fast wire (server/fastwire.py)."""
        keys = self._keys(caller, request.scope, request.hashes)
        for i, key in enumerate(keys):
            async with self.store.reading(key) as rec:
                if rec is None:
                    yield pb.GetResponse(miss=pb.Miss(hash=key.hash, index=i)), None
                    if request.stop_at_first_miss:
                        return
                    continue
                h = rec.header
                header = pb.ChunkHeader(
                    hash=key.hash, codec=pb.CODEC_NONE, raw_length=h.raw_length, payload_length=h.raw_length,
                    checksum=h.checksum, tokens=h.tokens, dtype=h.dtype, shape=h.shape, index=i,
                )
                mv = memoryview(rec.payload)
                yield pb.GetResponse(header=header), mv
                self.metrics.bytes_out.inc(len(mv))
                self.metrics.tokens_served.inc(h.tokens)


def add_to_server(servicer: KVBucketService, server) -> None:
    """Register the data plane as `store_pb2_grpc.add_KVBucketServicer_to_server` does, but with the
    frame codecs of core/frames.py for Put's requests and Get's responses (the same bytes on the wire)."""
    handlers = {
        "Lookup": grpc.unary_unary_rpc_method_handler(
            servicer.Lookup, pb.LookupRequest.FromString, pb.LookupResponse.SerializeToString),
        "Put": grpc.stream_unary_rpc_method_handler(
            servicer.Put, _decode_put, pb.PutResponse.SerializeToString),
        "Get": grpc.unary_stream_rpc_method_handler(
            servicer.Get, pb.GetRequest.FromString, frames.passthrough),
        "Exists": grpc.unary_unary_rpc_method_handler(
            servicer.Exists, pb.ExistsRequest.FromString, pb.ExistsResponse.SerializeToString),
        "Delete": grpc.unary_unary_rpc_method_handler(
            servicer.Delete, pb.DeleteRequest.FromString, pb.DeleteResponse.SerializeToString),
        "Hello": grpc.unary_unary_rpc_method_handler(
            servicer.Hello, pb.HelloRequest.FromString, pb.HelloResponse.SerializeToString),
    }
    name = pb.DESCRIPTOR.services_by_name["KVBucket"].full_name
    missing = set(pb.DESCRIPTOR.services_by_name["KVBucket"].methods_by_name) - set(handlers)
    assert not missing, f"store.proto has methods not registered here: {missing}"
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


def _decode_put(raw: bytes) -> pb.PutRequest | memoryview:
    data = frames.decode(raw)
    return data if data is not None else pb.PutRequest.FromString(raw)

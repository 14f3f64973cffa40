"""Pure helpers shared by the sync and async SDK clients: building Put streams, assembling Gets.

Both clients are thin shells over these, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import grpc

from kvbucket.core import buffers, errors, frames
from kvbucket.core.codecs import Codec, compress
from kvbucket.core.keys import DTYPE_SIZES, Layout
from kvbucket.core.record import checksum
from kvbucket.proto import store_pb2 as pb

DEFAULT_FRAME = 1 << 20
PUT_METHOD = "/kvbucket.v1.KVBucket/Put"
GET_METHOD = "/kvbucket.v1.KVBucket/Get"
TIER_NAMES = {pb.TIER_RAM: "ram", pb.TIER_NVME: "nvme", pb.TIER_S3: "s3"}

_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.DATA_LOSS: errors.DataLoss,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.Unavailable,
}


class RemoteError(errors.KVBucketError):
    """A status the SDK has no class for; `.code` has it."""


def translate(exc: grpc.RpcError) -> errors.KVBucketError:
    """The core error class for a gRPC status, carrying the daemon's message and the code."""
    return error_for(exc.code(), exc.details())


def error_for(code: grpc.StatusCode, details: str | None) -> errors.KVBucketError:
    err = _ERRORS.get(code, RemoteError)(details or code.name)
    err.code = code
    return err


def target_buffer(out: list | None, index: int, n: int) -> memoryview:
    """Where chunk `index` of a get lands: the caller's buffer (checked for size), or a fresh one."""
    target = out[index] if out is not None else None
    if target is None:
        return buffers.empty(n)  # overwritten whole before it is returned
    mv = as_bytes(target)
    if len(mv) < n:
        raise errors.InvalidArgument(f"output buffer {index} holds {len(mv)} bytes, chunk is {n}")
    return mv[:n]


@dataclass(frozen=True, slots=True)
class LookupResult:
    hits: int  # leading hashes present
    tiers: list[str]  # fastest tier of each of them

    def tokens(self, tokens_per_chunk: int) -> int:
        return self.hits * tokens_per_chunk


def layout_proto(layout: Layout) -> pb.Layout:
    return pb.Layout(
        dtype=layout.dtype, shape=layout.shape, tokens_per_chunk=layout.tokens_per_chunk,
        tp_rank=layout.tp_rank, tp_size=layout.tp_size,
    )


def as_bytes(data) -> memoryview:
    """A flat byte view of bytes, bytearray, memoryview, numpy arrays or (CPU) torch tensors."""
    if hasattr(data, "untyped_storage"):  # torch.Tensor, without importing torch
        import torch

        data = data.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
    mv = memoryview(data)
    return mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B")


def put_items(
    scope: pb.Scope, items: Iterable[tuple[bytes, object, int]], *, codec: Codec,
    ttl_seconds: float = 0.0, ttl_sliding: bool = False, pin: bool = False,
) -> Iterator[tuple[pb.PutRequest, memoryview]]:
    """(PutRequest{header}, payload) for `(hash, payload, tokens)` items, each read when asked for."""
    layout = scope.layout
    typesize = DTYPE_SIZES.get(layout.dtype, 1)
    for h, data, tokens in items:
        raw = as_bytes(data)
        payload = memoryview(compress(codec, raw, typesize)) if codec is not Codec.NONE else raw
        yield pb.PutRequest(header=pb.ChunkHeader(
            scope=scope, hash=h, codec=int(codec), raw_length=len(raw), payload_length=len(payload),
            checksum=checksum(raw), tokens=tokens, dtype=layout.dtype, shape=layout.shape,
            ttl_seconds=ttl_seconds, ttl_sliding=ttl_sliding, pin=pin,
        )), payload


def put_stream(pairs: Iterable[tuple[pb.PutRequest, memoryview]], *, frame: int) -> Iterator[pb.PutRequest]:
    """header, data*, header, data*, ... for the (header, payload) pairs of `put_items`."""
    for header, payload in pairs:
        yield header
        for off in range(0, len(payload), frame):
            yield data_frame(payload[off : off + frame])


def data_frame(view: memoryview) -> bytes:
    """`PutRequest(data=view).SerializeToString()`, with one copy (core/frames.py)."""
    return frames.encode(view)


encode_put = frames.passthrough  # request serializer for Put: pre-encoded data frames pass through


def decode_get(raw: bytes) -> pb.GetResponse | memoryview:
    """Response deserializer for Get: a data-only frame becomes a view of its payload (no copy)."""
    data = frames.decode(raw)
    return data if data is not None else pb.GetResponse.FromString(raw)


class GetAssembler:
    """Turns a Get response stream into one buffer (or None) per requested hash, verified."""

    def __init__(self, n: int, out: list | None = None) -> None:
        self.results: list[memoryview | None] = [None] * n
        self._out = out  # optional caller buffers, one per hash
        self._buf: memoryview | None = None
        self._header: pb.ChunkHeader | None = None
        self._filled = 0

    def feed(self, msg: pb.GetResponse | memoryview) -> None:
        if type(msg) is memoryview:  # a data frame, from decode_get
            self._data(msg)
            return
        part = msg.WhichOneof("part")
        if part == "header":
            h = msg.header
            self._header = h
            self._buf = target_buffer(self._out, h.index, h.raw_length)
            self._filled = 0
        elif part == "data":
            self._data(msg.data)
        # a miss leaves None in place

    def _data(self, data) -> None:
        n = len(data)
        self._buf[self._filled : self._filled + n] = data
        self._filled += n
        if self._filled == len(self._buf):
            self._finish()

    def _finish(self) -> None:
        h = self._header
        if checksum(self._buf) != h.checksum:
            raise errors.DataLoss(f"chunk {h.hash.hex()[:16]} failed its checksum after transfer")
        self.results[h.index] = self._buf
        self._header = self._buf = None

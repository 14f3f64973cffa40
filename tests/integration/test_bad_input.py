"""Every kind of bad input gets a precise status, stores nothing, and the daemon keeps serving."""

from __future__ import annotations

import grpc
import pytest

from kvbucket import Client, Layout
from kvbucket.clients import wire
from kvbucket.core.record import checksum
from kvbucket.proto import store_pb2 as pb
from kvbucket.proto import store_pb2_grpc

from daemon import start_daemon

LAYOUT = Layout("bfloat16", (2, 2, 64, 2, 32), tokens_per_chunk=64)
DATA = bytes(range(256)) * (LAYOUT.chunk_bytes // 256)
BIG_SHAPE = (8, 2, 256, 8, 128)  # 8 MiB in bfloat16
BIG = bytes(8 << 20)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """One daemon for this module: every case must leave it serving for the next."""
    d = start_daemon(tmp_path_factory.mktemp("bad-input"))
    yield d
    d.stop()


@pytest.fixture
def stub(daemon):
    channel = grpc.insecure_channel(daemon.url.removeprefix("kvbucket://"), wire_options())
    yield store_pb2_grpc.KVBucketStub(channel)
    channel.close()


def wire_options():
    return [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


def scope(**layout_changes) -> pb.Scope:
    lp = wire.layout_proto(LAYOUT)
    for k, v in layout_changes.items():
        if k == "shape":
            del lp.shape[:]
            lp.shape.extend(v)
        else:
            setattr(lp, k, v)
    return pb.Scope(model="m", layout=lp)


def header(h: bytes = b"key", data: bytes = DATA, **changes) -> pb.PutRequest:
    fields = dict(
        scope=scope(),
        hash=h,
        codec=pb.CODEC_NONE,
        raw_length=len(data),
        payload_length=len(data),
        checksum=checksum(data),
        tokens=64,
        dtype=LAYOUT.dtype,
        shape=LAYOUT.shape,
    )
    fields.update(changes)
    return pb.PutRequest(header=pb.ChunkHeader(**fields))


def frames(data: bytes = DATA, size: int = 1 << 20):
    return [pb.PutRequest(data=data[i : i + size]) for i in range(0, len(data), size)]


def put_status(stub, messages) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        stub.Put(iter(messages), timeout=10)
    return info.value.code(), info.value.details()


def assert_nothing_stored_and_still_serving(daemon, h: bytes = b"key") -> None:
    with Client(daemon.url, model="m", layout=LAYOUT) as c:
        assert c.get(h) is None
        assert c.put(b"after", DATA) and bytes(c.get(b"after")) == DATA
        c.delete([b"after", b"good", b"complete"])


CASES = {
    "hash too long": ([header(h=b"x" * 65), *frames()], grpc.StatusCode.INVALID_ARGUMENT, "1-64 bytes"),
    "empty hash": ([header(h=b""), *frames()], grpc.StatusCode.INVALID_ARGUMENT, "1-64 bytes"),
    "dtype mismatch": ([header(dtype="float16"), *frames()], grpc.StatusCode.INVALID_ARGUMENT, "dtype"),
    "shape mismatch": ([header(shape=(2, 2, 64, 2, 16)), *frames()], grpc.StatusCode.INVALID_ARGUMENT, "shape"),
    "length mismatch": ([header(data=DATA[:-2]), *frames(DATA[:-2])], grpc.StatusCode.INVALID_ARGUMENT, "bytes"),
    "unknown codec": ([header(codec=9), *frames()], grpc.StatusCode.INVALID_ARGUMENT, "codec"),
    "checksum mismatch": ([header(checksum=12345), *frames()], grpc.StatusCode.DATA_LOSS, "checksum"),
    # Raw bytes are hashed frame by frame as they arrive: a change in any frame still fails the check.
    "byte changed in the last frame": ([header(), *frames(DATA[:-1] + bytes([DATA[-1] ^ 1]), 4096)],
                                       grpc.StatusCode.DATA_LOSS, "checksum"),
    "truncated stream": ([header(), pb.PutRequest(data=DATA[:1000])], grpc.StatusCode.INVALID_ARGUMENT, "truncated"),
    "header before chunk ends": (
        [header(), pb.PutRequest(data=DATA[:1000]), header(h=b"other"), *frames()],
        grpc.StatusCode.INVALID_ARGUMENT,
        "truncated",
    ),
    "data before header": ([*frames(), header()], grpc.StatusCode.INVALID_ARGUMENT, "before any chunk header"),
    "too many bytes": (
        [header(), pb.PutRequest(data=DATA + b"x")],
        grpc.StatusCode.INVALID_ARGUMENT,
        "more than the declared",
    ),
    # the complete chunk before the stray frame is committed (each chunk is atomic on its own)
    "frame after a complete chunk": (
        [header(h=b"complete"), *frames(), pb.PutRequest(data=b"x")],
        grpc.StatusCode.INVALID_ARGUMENT,
        "no open chunk",
    ),
    "bad namespace": (
        [header(scope=pb.Scope(namespace="no spaces", model="m", layout=wire.layout_proto(LAYOUT))), *frames()],
        grpc.StatusCode.INVALID_ARGUMENT,
        "namespace",
    ),
    "bad model": (
        [header(scope=pb.Scope(model="", layout=wire.layout_proto(LAYOUT))), *frames()],
        grpc.StatusCode.INVALID_ARGUMENT,
        "model",
    ),
    "unknown dtype": ([header(scope=scope(dtype="complex64")), *frames()], grpc.StatusCode.INVALID_ARGUMENT, "dtype"),
    "oversized frame": (
        [header(data=BIG, scope=scope(shape=BIG_SHAPE), shape=BIG_SHAPE), pb.PutRequest(data=BIG[: 5 << 20])],
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "message larger than max",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_put(daemon, stub, case):
    messages, code, fragment = CASES[case]
    got_code, details = put_status(stub, messages)
    assert got_code == code, details
    assert fragment.lower() in details.lower()
    assert_nothing_stored_and_still_serving(daemon)


def test_a_bad_chunk_in_a_batch_keeps_the_good_ones_before_it(daemon, stub):
    code, _ = put_status(stub, [header(h=b"good"), *frames(), header(h=b"bad", checksum=1), *frames()])
    assert code == grpc.StatusCode.DATA_LOSS
    with Client(daemon.url, model="m", layout=LAYOUT) as c:
        assert c.exists([b"good", b"bad"]) == [True, False]


def test_chunk_over_the_daemon_limit_is_resource_exhausted(tmp_path):
    d = start_daemon(tmp_path, env={"KVBUCKET_MAX_CHUNK_BYTES": "16384"})
    try:
        with Client(d.url, model="m", layout=LAYOUT) as c:
            with pytest.raises(Exception) as info:
                c.put(b"k", DATA)
            assert type(info.value).__name__ == "ResourceExhausted"
            assert "max_chunk_bytes" in str(info.value)
    finally:
        d.stop()


def test_bad_lookup_and_get_requests(stub):
    for call, request in (
        (stub.Lookup, pb.LookupRequest(scope=scope(), hashes=[b"x" * 80])),
        (stub.Lookup, pb.LookupRequest(scope=pb.Scope(model="m"), hashes=[b"x"])),
        (stub.Exists, pb.ExistsRequest(scope=scope(tokens_per_chunk=0), hashes=[b"x"])),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Get(pb.GetRequest(scope=scope(), hashes=[b""]), timeout=5))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

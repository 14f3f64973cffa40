"""The fast wire (core/fastwire.py) against real daemons: the SDK over it, and raw sockets speaking it."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from admin_helpers import cli

from kvbucket import Client, Layout
from kvbucket.clients import fastwire
from kvbucket.core import errors
from kvbucket.core.fastwire import HEAD, Method, frame
from kvbucket.core.record import checksum
from kvbucket.proto import store_pb2 as pb

from daemon import start_daemon

LAYOUT = Layout("bfloat16", (2, 2, 256, 8, 128), tokens_per_chunk=256)  # 2 MiB chunks
CHUNK = LAYOUT.chunk_bytes
SCOPE = pb.Scope(model="m", layout=pb.Layout(dtype=LAYOUT.dtype, shape=LAYOUT.shape,
                                             tokens_per_chunk=LAYOUT.tokens_per_chunk))


def chunk(i: int) -> bytes:
    return np.random.default_rng(i).integers(0, 256, CHUNK, dtype=np.uint8).tobytes()


def requests(d, op: str) -> float:
    text = urllib.request.urlopen(d.metrics_url).read().decode()
    prefix = f'kvbucket_server_requests_total{{op="{op}",status="OK"}} '
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


class Raw:
    """A plain socket speaking the fast wire."""

    def __init__(self, port: int, token: str = "") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.send(Method.HELLO, token.encode())

    def send(self, method: int, body: bytes = b"", payload: bytes = b"") -> None:
        self.sock.sendall(frame(method, body) + payload)

    def read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            part = self.sock.recv(n - len(buf))
            if not part:
                raise ConnectionError("closed")
            buf += part
        return bytes(buf)

    def reply(self) -> tuple[int, bytes]:
        n, status = HEAD.unpack(self.read(HEAD.size))
        return status, self.read(n)

    def put(self, h: bytes, data: bytes, **header) -> tuple[int, bytes]:
        fields = dict(scope=SCOPE, hash=h, raw_length=len(data), payload_length=len(data), checksum=checksum(data),
                      dtype=LAYOUT.dtype, shape=LAYOUT.shape)
        fields.update(header)
        self.send(Method.PUT, pb.PutRequest(header=pb.ChunkHeader(**fields)).SerializeToString(), data)
        return self.reply()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def daemon(tmp_path):
    d = start_daemon(tmp_path)
    yield d
    d.stop()


def test_sdk_round_trips_over_the_fast_wire(daemon):
    data = [chunk(i) for i in range(3)]
    with Client(daemon.url, model="m", layout=LAYOUT) as c:
        assert c.put_many([(b"f%d" % i, d) for i, d in enumerate(data)]) == [True] * 3
        assert c._fast() is not None and c._fast().address == ("127.0.0.1", daemon.info["fast_port"])
        assert c.transport() == "fast wire"
        got = c.get_many([b"f0", b"missing", b"f2"])
        assert bytes(got[0]) == data[0] and got[1] is None and bytes(got[2]) == data[2]
        out = bytearray(CHUNK)
        assert c.get_into(b"f1", out) and out == data[1]
        assert c.lookup([b"f0", b"f1", b"nope"]).hits == 2
        assert c.exists([b"f2", b"nope"]) == [True, False]
        assert c.delete([b"f2"]) == 1 and c.get(b"f2") is None
        with pytest.raises(errors.InvalidArgument, match="output buffer"):
            c.get_into(b"f0", bytearray(10))
        assert bytes(c.get(b"f0")) == data[0]  # a fresh connection after the one dropped above
    # Counted like their gRPC twins; Hello is the only other call.
    assert requests(daemon, "put") == 3 and requests(daemon, "hello") == 1
    with Client(daemon.url, model="m", layout=LAYOUT, fast=False) as c:
        assert c.transport() == "grpc"
    assert "unexpected error" not in daemon.log()


def test_bad_input_is_refused_and_the_connection_stays_in_step(daemon):
    raw = Raw(daemon.info["fast_port"])
    try:
        assert raw.reply() == (0, b"")  # HELLO accepted
        status, msg = raw.put(b"short", chunk(1)[:1000])  # the wrong size for the layout: refused, bytes skipped
        assert status == 3 and b"chunk is 1000 bytes" in msg  # INVALID_ARGUMENT
        status, msg = raw.put(b"corrupt", chunk(2), checksum=12345)
        assert status == 15 and b"checksum" in msg  # DATA_LOSS
        for at in (0, CHUNK // 2 + 7, CHUNK - 1):  # hashed as received, piece by piece: each piece counts
            flipped = bytearray(chunk(4))
            flipped[at] ^= 0x20
            status, msg = raw.put(b"flipped", bytes(flipped), checksum=checksum(chunk(4)))
            assert status == 15 and b"checksum" in msg, at
        status, body = raw.put(b"good", chunk(3))
        assert status == 0 and pb.PutResponse.FromString(body).results[0].stored
        raw.send(Method.GET, pb.GetRequest(scope=SCOPE, hashes=[b"corrupt", b"flipped", b"good"]).SerializeToString())
        for _ in range(2):  # nothing of the refused chunks was stored
            assert pb.GetResponse.FromString(raw.reply()[1]).HasField("miss")
        header = pb.GetResponse.FromString(raw.reply()[1]).header
        assert raw.read(header.payload_length) == chunk(3)
        assert raw.reply() == (0, b"")  # end of the stream
        raw.send(Method.LOOKUP, b"\xff\xff")
        assert raw.reply() == (3, b"malformed request message")
        raw.send(99)
        assert raw.reply()[0] == 12  # UNIMPLEMENTED, and the connection is closed
        with pytest.raises(ConnectionError):
            raw.reply()
    finally:
        raw.close()


def test_a_put_cut_off_midway_stores_nothing(daemon):
    raw = Raw(daemon.info["fast_port"])
    raw.reply()
    data = chunk(4)
    header = pb.PutRequest(header=pb.ChunkHeader(scope=SCOPE, hash=b"cut", raw_length=CHUNK, payload_length=CHUNK,
                                                 checksum=checksum(data), dtype=LAYOUT.dtype, shape=LAYOUT.shape))
    raw.send(Method.PUT, header.SerializeToString(), data[: CHUNK // 2])
    raw.close()
    with Client(daemon.url, model="m", layout=LAYOUT) as c:
        assert c.exists([b"cut"]) == [False]
        assert c.put(b"after", data) and bytes(c.get(b"after")) == data


def test_first_request_must_be_hello(daemon):
    sock = socket.create_connection(("127.0.0.1", daemon.info["fast_port"]), timeout=10)
    try:
        sock.sendall(frame(Method.LOOKUP, pb.LookupRequest(scope=SCOPE, hashes=[b"x"]).SerializeToString()))
        n, status = HEAD.unpack(sock.recv(HEAD.size))
        assert status == 9  # FAILED_PRECONDITION
    finally:
        sock.close()


TOKENS = """
[[tokens]]
token = "token-a"
tenant = "team-a"
"""


def test_hello_authenticates_and_scopes_like_grpc(tmp_path):
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS)
    d = start_daemon(tmp_path, "--tokens-file", str(tokens))
    try:
        raw = Raw(d.info["fast_port"], token="wrong")
        assert raw.reply() == (16, b"unknown token")  # UNAUTHENTICATED
        raw.close()
        with Client(d.url, model="m", layout=LAYOUT, token="token-a") as c:
            assert c.put(b"t", chunk(5)) and bytes(c.get(b"t")) == chunk(5)
            assert c._fast() is not None
            with pytest.raises(errors.PermissionDenied):
                c.scoped(namespace="someone-else").get(b"t")
    finally:
        d.stop()


def test_without_the_fast_wire_the_sdk_uses_grpc(tmp_path):
    d = start_daemon(tmp_path, env={"KVBUCKET_FAST__ENABLED": "false"})
    try:
        assert d.info["fast_port"] is None
        with Client(d.url, model="m", layout=LAYOUT) as c:
            assert c.put(b"g", chunk(6)) and bytes(c.get(b"g")) == chunk(6)
            assert c._fast() is None
    finally:
        d.stop()


def test_a_daemon_restart_falls_back_to_grpc_for_the_call(tmp_path):
    sock = tmp_path / "kv.sock"
    d = start_daemon(tmp_path / "d1", "--unix-socket", str(sock))
    try:
        with Client(d.info["unix_url"], model="m", layout=LAYOUT, shm=False) as c:
            assert c.put(b"a", chunk(7)) and c._fast() is not None
            d.stop()
            d = start_daemon(tmp_path / "d2", "--unix-socket", str(sock))
            assert c.ping(timeout=10)
            assert c.put(b"b", chunk(8))  # the pooled connection is dead: this one goes by gRPC
            assert bytes(c.get(b"b")) == chunk(8)
        assert requests(d, "put") == 1
    finally:
        d.stop()


def test_an_unreachable_fast_wire_costs_nothing_but_a_fallback(tmp_path):
    sock = tmp_path / "kv.sock"
    d = start_daemon(tmp_path, "--unix-socket", str(sock))
    try:
        Path(f"{sock}.fast").unlink()  # offered by Hello, but not reachable from here
        with Client(d.info["unix_url"], model="m", layout=LAYOUT, shm=False, timeout=30) as c:
            assert c.put(b"u", chunk(9)) and bytes(c.get(b"u")) == chunk(9)
            assert c._fast() is None  # and not asked again for a while
        assert requests(d, "put") == 1 and requests(d, "get") == 1  # both by gRPC
    finally:
        d.stop()


def test_a_chunk_larger_than_the_socket_buffers_moves_whole_both_ways(daemon):
    """32 MiB: more than a socket takes in one send (buffers of a few MiB), so the daemon's reply
    continues through the event loop after a partial send, and its receive is hashed in many pieces."""
    big = Layout("bfloat16", (32, 2, 256, 8, 128), tokens_per_chunk=256)
    data = np.random.default_rng(3).integers(0, 256, big.chunk_bytes, dtype=np.uint8)
    with Client(daemon.url, model="m", layout=big) as c:
        assert c._fast() is not None
        assert c.put(b"big", data)
        assert bytes(c.get(b"big")) == data.tobytes()
        out = bytearray(big.chunk_bytes)
        assert c.get_into(b"big", out) and out == data.tobytes()
        assert c._fast() is not None  # no connection broke (that would have sent the call by gRPC)
    assert requests(daemon, "put") == 1 and requests(daemon, "get") == 2


def test_puts_of_many_chunks_are_pipelined_and_each_item_read_once(daemon, monkeypatch):
    """Chunk k+1 is sent before chunk k's reply is read; the generator refills one buffer per item."""
    events = []
    start, finish = fastwire.Conn.start_put, fastwire.Conn.finish
    monkeypatch.setattr(fastwire.Conn, "start_put", lambda self, *a: (events.append("send"), start(self, *a))[1])
    monkeypatch.setattr(fastwire.Conn, "finish", lambda self, *a: (events.append("reply"), finish(self, *a))[1])
    buf = bytearray(CHUNK)

    def items(n):
        for i in range(n):
            events.append(f"item {i}")
            buf[:] = chunk(600 + i)
            yield b"t%d" % i, buf

    with Client(daemon.url, model="m", layout=LAYOUT) as c:
        assert c.put_many(items(4)) == [True] * 4
        assert events == ["item 0", "send", "item 1", "send", "reply", "item 2", "send", "reply",
                          "item 3", "send", "reply", "reply"]
        assert [bytes(x) for x in c.get_many([b"t%d" % i for i in range(4)])] == [chunk(600 + i) for i in range(4)]
        events.clear()
        assert c.put(b"one", chunk(7)) and events == ["send", "reply"]
    assert requests(daemon, "put") == 5


def test_a_refused_chunk_ends_pipelined_puts_and_its_connection_answers_nothing_else(daemon):
    """The chunk after the refused one was sent and its reply not read: that connection must not serve
    the next call (it would read that reply as its own)."""
    assert cli(daemon, "quota", "default", str(3 * CHUNK))
    with Client(daemon.url, model="m", layout=LAYOUT) as c:
        with pytest.raises(errors.ResourceExhausted, match="quota"):
            c.put_many((b"g%d" % i, chunk(i)) for i in range(5))
        for _ in range(3):
            assert c.exists([b"g0", b"g1", b"g2", b"nope"]) == [True, True, True, False]
            assert c.lookup([b"g0", b"g1", b"g2"]).hits == 3


def test_pipelined_puts_go_on_by_grpc_when_the_daemon_restarts_midway(tmp_path):
    sock = tmp_path / "kv.sock"
    d = start_daemon(tmp_path / "d", "--unix-socket", str(sock))
    c = Client(d.info["unix_url"], model="m", layout=LAYOUT, shm=False)

    def items():
        nonlocal d
        for i in range(5):
            if i == 3:  # chunk 2's reply is unread: lost with the daemon
                d.stop()
                d = start_daemon(tmp_path / "d", "--unix-socket", str(sock))
                assert c.ping(timeout=10)
            yield b"w%d" % i, chunk(700 + i)

    try:
        assert c.transport() == "fast wire"
        assert c.put_many(items()) == [True, True, False, True, True]
        assert [bytes(x) for x in c.get_many([b"w3", b"w4"])] == [chunk(703), chunk(704)]
        assert requests(d, "put") == 1  # one gRPC Put stream of the last two
    finally:
        c.close()
        d.stop()


def test_a_pipelining_connection_does_not_hold_the_daemon_from_another(daemon):
    # Requests waiting in a socket are read without the event loop running anything else: the
    # daemon lets other connections in every few requests, so one client's backlog is not everyone's.
    port = daemon.info["fast_port"]
    busy, other = Raw(port), Raw(port)
    try:
        assert busy.reply() == (0, b"") and other.reply() == (0, b"")
        n = 20_000
        one = frame(Method.EXISTS, pb.ExistsRequest(scope=SCOPE, hashes=[b"x" * 16]).SerializeToString())
        blast = threading.Thread(target=busy.sock.sendall, args=(one * n,))
        blast.start()
        time.sleep(0.05)  # the backlog is being served
        other.send(Method.EXISTS, pb.ExistsRequest(scope=SCOPE, hashes=[b"y" * 16]).SerializeToString())
        assert other.reply()[0] == 0
        busy.sock.setblocking(False)
        answered = 0
        with contextlib.suppress(BlockingIOError):
            while chunk := busy.sock.recv(1 << 20):
                answered += len(chunk)
        busy.sock.setblocking(True)
        per_reply = len(frame(0, pb.ExistsResponse(present=[False]).SerializeToString()))
        busy.read(n * per_reply - answered)  # the rest, so the blast can finish
        blast.join()
        assert answered < n * per_reply // 2  # the other one was answered long before the backlog drained
    finally:
        busy.close()
        other.close()

"""The SDK's end of the fast wire (core/fastwire.py): blocking connections, pooled per daemon.

`Client` learns the daemon's fast-wire address from the Hello RPC on first use and then sends its
data-plane calls (lookup, exists, delete, put, get and the shared-memory control calls) there. A
connection that breaks (daemon restarted, port closed) is dropped and that call goes by gRPC; the
address is asked for again after `REDIAL_SECONDS`. Errors the daemon answers are raised as the same
`KVBucketError` classes as over gRPC -- they are not retried on the other wire.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from contextlib import contextmanager

import grpc
import xxhash

from kvbucket.clients import wire
from kvbucket.core import errors
from kvbucket.core.fastwire import HASHED_RECV, HEAD, Method, frame, tune_socket
from kvbucket.proto import store_pb2 as pb

log = logging.getLogger(__name__)

REDIAL_SECONDS = 5.0  # after a connection broke (the daemon restarted, say)
UNREACHABLE_SECONDS = 60.0  # after a connect failed (the port is not published where the client is)
CONNECT_SECONDS = 1.0  # a filtered port must not cost a whole call timeout
_CODES = {c.value[0]: c for c in grpc.StatusCode}


class Broken(Exception):
    """The connection failed (not an answer from the daemon): use gRPC for this call."""


class Unreachable(Broken):
    """The fast wire's port cannot be reached from here (not published, firewalled)."""


class Conn:
    """One connection; not thread-safe (the pool hands it to one caller at a time)."""

    def __init__(self, address: str | tuple[str, int], token: str | None, timeout: float) -> None:
        try:
            if isinstance(address, str):
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(min(timeout, CONNECT_SECONDS))
                self.sock.connect(address)
            else:
                self.sock = socket.create_connection(address, timeout=min(timeout, CONNECT_SECONDS))
            tune_socket(self.sock)
        except OSError as exc:
            raise Unreachable(f"cannot connect to {address}: {exc}") from None
        self.sock.settimeout(timeout)
        self._head = bytearray(HEAD.size)
        self.unread = 0  # calls `start`ed whose replies `finish` has not read yet
        self._send(frame(Method.HELLO, (token or "").encode()))
        self._reply()

    # -- framing ----------------------------------------------------------------------------

    def _send(self, data) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise Broken(str(exc)) from None

    def _fill(self, buf: memoryview, hasher=None) -> None:
        """Receive exactly len(buf) bytes; `hasher` (xxh3) is fed each piece as it lands, while the
        daemon sends the next. A hashed receive takes at most HASHED_RECV bytes at a time, so the hash
        reads them from L1/L2 right after the kernel wrote them there."""
        got = 0
        most = HASHED_RECV if hasher is not None else len(buf)
        try:
            while got < len(buf):
                n = self.sock.recv_into(buf[got:], min(most, len(buf) - got))
                if n == 0:
                    raise Broken("the daemon closed the connection")
                if hasher is not None:
                    hasher.update(buf[got : got + n])
                got += n
        except OSError as exc:
            raise Broken(str(exc)) from None

    def _fill_hash(self, buf: memoryview) -> int:
        h = xxhash.xxh3_64()
        self._fill(buf, h)
        return h.intdigest()

    def _reply(self) -> bytes:
        """The body of the next OK reply; a daemon's error is raised as its KVBucketError."""
        self._fill(memoryview(self._head))
        n, status = HEAD.unpack(self._head)
        body = bytearray(n)
        self._fill(memoryview(body))
        if status:
            code = _CODES.get(status, grpc.StatusCode.UNKNOWN)
            raise wire.error_for(code, body.decode(errors="replace"))
        return bytes(body)

    # -- calls ------------------------------------------------------------------------------

    def unary(self, method: Method, request, reply_type, timeout: float):
        self.sock.settimeout(timeout)
        self._send(frame(method, request.SerializeToString()))
        return reply_type.FromString(self._reply())

    def start(self, method: Method, request, timeout: float) -> None:
        """Send a call without waiting for its reply; `finish` reads the replies in the order sent (the
        daemon answers a connection's calls one after another)."""
        self.sock.settimeout(timeout)
        self._send(frame(method, request.SerializeToString()))
        self.unread += 1

    def finish(self, reply_type):
        """The reply to the oldest call `start`ed and not finished; a daemon's error is raised."""
        try:
            body = self._reply()
        except Broken:
            raise  # lost with the connection: still unread
        except BaseException:
            self.unread -= 1  # an error reply, read whole
            raise
        self.unread -= 1
        return reply_type.FromString(body)

    def notify(self, method: Method, message) -> None:
        """A one-way message (SHM_WRITTEN): sent, never answered."""
        self._send(frame(method, message.SerializeToString()))

    def start_put(self, header: pb.PutRequest, payload: memoryview, timeout: float) -> None:
        """Send a PUT, header and payload, without waiting for its reply (`finish(pb.PutResponse)`)."""
        self.sock.settimeout(timeout)
        self._send(frame(Method.PUT, header.SerializeToString()))
        self._send(payload)
        self.unread += 1

    def get(self, request: pb.GetRequest, out: list | None, timeout: float) -> list[memoryview | None]:
        self.sock.settimeout(timeout)
        self._send(frame(Method.GET, request.SerializeToString()))
        results: list[memoryview | None] = [None] * len(request.hashes)
        while body := self._reply():
            msg = pb.GetResponse.FromString(body)
            if not msg.HasField("header"):
                continue  # a miss leaves None in place
            h = msg.header
            buf = wire.target_buffer(out, h.index, h.raw_length)  # raises before any byte is read: the
            if self._fill_hash(buf) != h.checksum:  # connection is then dropped (bytes left unread)
                self._drain_stream()
                raise errors.DataLoss(f"chunk {h.hash.hex()[:16]} failed its checksum after transfer")
            results[h.index] = buf
        return results

    def _drain_stream(self) -> None:
        while body := self._reply():
            msg = pb.GetResponse.FromString(body)
            if msg.HasField("header"):
                self._fill(memoryview(bytearray(msg.header.payload_length)))

    def close(self) -> None:
        self.sock.close()


class Dialer:
    """The daemon's fast-wire address and a pool of idle connections to it; shared by a client and the
    clients `scoped()` derives from it. Thread-safe."""

    def __init__(self, wanted: bool) -> None:
        self.wanted = wanted
        self.address: str | tuple[str, int] | None = None
        self._next_ask = 0.0  # monotonic time after which Hello may be asked (again)
        self._idle: list[Conn] = []
        self._lock = threading.Lock()
        _dialers.add(self)

    def due(self) -> bool:
        """Whether to ask the daemon (Hello) for its address now."""
        if not self.wanted or self.address is not None:
            return False
        return time.monotonic() >= self._next_ask

    def learn(self, hello: pb.HelloResponse | None, host: str, unix: bool) -> None:
        self._next_ask = time.monotonic() + REDIAL_SECONDS
        if hello is None:
            return
        if unix and hello.fast_unix:
            self.address = hello.fast_unix
        elif hello.fast_port and not unix:
            self.address = (host, hello.fast_port)

    @contextmanager
    def conn(self, token: str | None, timeout: float):
        with self._lock:
            c = self._idle.pop() if self._idle else None
        if c is None:
            try:
                c = Conn(self.address, token, timeout)
            except Unreachable:
                self._forget(UNREACHABLE_SECONDS)
                raise
            except Broken:
                self._forget()
                raise
        try:
            yield c
        except Broken:
            c.close()
            self._forget()
            raise
        except errors.InvalidArgument:  # e.g. an output buffer too small, mid-stream: not reusable
            c.close()
            raise
        except BaseException:
            self._give_back(c)
            raise
        else:
            self._give_back(c)

    def _give_back(self, c: Conn) -> None:
        if c.unread:  # replies still on their way would answer the next caller's calls
            c.close()
            return
        with self._lock:
            self._idle.append(c)

    def _forget(self, wait: float = REDIAL_SECONDS) -> None:
        """The daemon is not where we thought (restart, port gone): ask again in `wait` s, gRPC meanwhile."""
        with self._lock:
            idle, self._idle = self._idle, []
            if self.address is not None:
                log.info("kvbucket: fast wire to %s unavailable; using gRPC, asking again in %.0f s",
                         self.address, wait)
            self.address = None
            self._next_ask = time.monotonic() + wait
        for c in idle:
            c.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    def after_fork(self) -> None:
        """In a forked child: the idle connections are the parent's too -- a call sent on one here
        would interleave with the parent's, each reading the other's replies. This process's copies
        of their descriptors are closed (the parent's sockets stay open), and it dials its own."""
        self._lock = threading.Lock()  # a parent thread may have held it at the fork
        idle, self._idle = self._idle, []
        for c in idle:
            c.close()


_dialers: weakref.WeakSet[Dialer] = weakref.WeakSet()
os.register_at_fork(after_in_child=lambda: [d.after_fork() for d in list(_dialers)])

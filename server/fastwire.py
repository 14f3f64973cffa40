"""The daemon's end of the fast wire (core/fastwire.py): one coroutine per connection, on the event loop.

Every call goes to the same servicer code as its gRPC twin -- `KVBucketService` / `ShmService`
methods for the unary calls (through `_Context`, which carries the HELLO token and turns an abort
into an error reply), `KVBucketService._begin/_commit` for PUT, `KVBucketService.chunks` for GET --
so auth, scopes, validation, metrics and status codes cannot differ between the two wires. Bulk
bytes move with `sock_recv_into` straight into the slot or buffer the chunk is stored in, and with
`sock_sendall` straight from the stored payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError

from kvbucket.core import errors
from kvbucket.core.fastwire import HASHED_RECV, HEAD, MAX_MESSAGE, Method, frame, tune_socket
from kvbucket.proto import store_pb2 as pb
from kvbucket.server.errors import _Call, status_of
from kvbucket.server.service import KVBucketService
from kvbucket.server.shm import ShmService

log = logging.getLogger(__name__)

DRAIN = 1 << 20
YIELD_EVERY = 16  # requests one connection serves before letting the event loop run others


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _Context:
    """What the servicer methods use of a gRPC context: the caller's metadata, and abort."""

    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def invocation_metadata(self):
        return self._metadata

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Abort(code, details)


class _Closed(Exception):
    """The peer went away (or broke the framing): drop the connection."""


class _Conn:
    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.loop, self.sock = loop, sock
        self._head = bytearray(HEAD.size)

    async def fill(self, buf, hasher=None) -> None:
        """Receive exactly len(buf) bytes. `hasher` (xxh3) is fed each piece as it lands: at most
        HASHED_RECV bytes at a time, so it reads them from L1/L2 right after the kernel wrote them."""
        view = memoryview(buf).cast("B")
        most = HASHED_RECV if hasher is not None else len(view)
        got = 0
        while got < len(view):
            n = await self.loop.sock_recv_into(self.sock, view[got : got + most])
            if n == 0:
                raise _Closed()
            if hasher is not None:
                hasher.update(view[got : got + n])
            got += n

    async def head(self) -> tuple[int, int] | None:
        n = await self.loop.sock_recv_into(self.sock, self._head)
        if n == 0:
            return None
        if n < HEAD.size:
            await self.fill(memoryview(self._head)[n:])
        return HEAD.unpack(self._head)

    async def body(self, n: int) -> bytes:
        if n > MAX_MESSAGE:
            raise _Closed()
        buf = bytearray(n)
        await self.fill(buf)
        return bytes(buf)

    async def drain(self, n: int) -> None:
        scratch = bytearray(min(n, DRAIN))
        while n > 0:
            part = memoryview(scratch)[: min(n, len(scratch))]
            await self.fill(part)
            n -= len(part)

    async def send(self, data) -> None:
        """Send all of `data`: at once when the socket takes it (a reply mostly does), else through the
        loop (which also skips what was sent)."""
        view = data if type(data) is bytes else memoryview(data).cast("B")  # lengths in bytes
        try:
            n = self.sock.send(view)
        except (BlockingIOError, InterruptedError):
            n = 0
        if n < len(view):
            await self.loop.sock_sendall(self.sock, memoryview(view)[n:])

    async def error(self, code: grpc.StatusCode, details: str) -> None:
        await self.send(frame(code.value[0], details.encode()))


class FastWireServer:
    def __init__(self, data: KVBucketService, shm: ShmService) -> None:
        self.data = data
        self.shm = shm
        self.metrics = data.metrics
        self.unary = {
            Method.LOOKUP: (data.Lookup, pb.LookupRequest),
            Method.EXISTS: (data.Exists, pb.ExistsRequest),
            Method.DELETE: (data.Delete, pb.DeleteRequest),
            Method.SHM_ATTACH: (shm.ShmAttach, pb.ShmAttachRequest),
            Method.SHM_RESERVE: (shm.ShmReserve, pb.ShmReserveRequest),
            Method.SHM_COMMIT: (shm.ShmCommit, pb.ShmCommitRequest),
            Method.SHM_GET: (shm.ShmGet, pb.ShmGetRequest),
            Method.SHM_RELEASE: (shm.ShmRelease, pb.ShmReleaseRequest),
            Method.SHM_PUT: (shm.ShmPut, pb.ShmPutRequest),
        }
        self._listeners: list[socket.socket] = []
        self._tasks: set[asyncio.Task] = set()
        self.port = 0
        self.unix_path: Path | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def listen_tcp(self, host: str, port: int) -> int:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self.port = sock.getsockname()[1]
        self._listen(sock)
        return self.port

    def listen_unix(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        path.chmod(0o600)
        self.unix_path = path
        self._listen(sock)

    def _listen(self, sock: socket.socket) -> None:
        sock.listen(128)
        sock.setblocking(False)
        self._listeners.append(sock)
        self._spawn(self._accept(sock))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for sock in self._listeners:
            sock.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self.unix_path is not None:
            self.unix_path.unlink(missing_ok=True)

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(listener)
            sock.setblocking(False)
            tune_socket(sock)
            self._spawn(self._serve(_Conn(loop, sock)))

    # -- one connection --------------------------------------------------------------------

    async def _serve(self, conn: _Conn) -> None:
        try:
            ctx = await self._hello(conn)
            served = 0
            while ctx is not None:
                head = await conn.head()
                if head is None:
                    return
                n, method = head
                body = await conn.body(n)
                await self._dispatch(conn, ctx, method, body)
                served += 1
                if served % YIELD_EVERY == 0:
                    # A receive that finds its bytes waiting returns without suspending: a client
                    # pipelining requests would otherwise hold the loop from every other one.
                    await asyncio.sleep(0)
        except (_Closed, ConnectionError, OSError):
            pass
        except Exception:  # a bug: say so, and drop the connection (the client retries the call by gRPC)
            log.exception("fast wire: connection dropped after an unexpected error")
        finally:
            conn.sock.close()

    async def _hello(self, conn: _Conn) -> _Context | None:
        head = await conn.head()
        if head is None:
            return None
        n, method = head
        body = await conn.body(n)
        if method != Method.HELLO:
            await conn.error(grpc.StatusCode.FAILED_PRECONDITION, "the first request on a connection is HELLO")
            return None
        ctx = _Context(body.decode(errors="replace"))
        try:
            self.data.auth.authenticate(ctx.invocation_metadata())
        except errors.KVBucketError as exc:
            await conn.error(status_of(exc), str(exc))
            return None
        await conn.send(frame(0))
        return ctx

    async def _dispatch(self, conn: _Conn, ctx: _Context, method: int, body: bytes) -> None:
        if method in self.unary:
            fn, request_type = self.unary[method]
            try:
                reply = await fn(request_type.FromString(body), ctx)
            except _Abort as a:
                await conn.error(a.code, a.details)
                return
            except DecodeError:
                await conn.error(grpc.StatusCode.INVALID_ARGUMENT, "malformed request message")
                return
            except Exception:
                log.exception("fast wire: %s failed", Method(method).name)
                await conn.error(grpc.StatusCode.INTERNAL, "internal error (see the daemon's log)")
                return
            await conn.send(frame(0, reply.SerializeToString()))
        elif method == Method.SHM_WRITTEN:  # one-way: a bad one is ignored (counted), never answered
            try:
                self.shm.written(self.data._caller(ctx), pb.ShmWritten.FromString(body))
            except (DecodeError, errors.KVBucketError):
                self.shm.announced["ignored"] += 1
        elif method == Method.SHM_HITS:  # one-way, as SHM_WRITTEN
            try:
                self.shm.hits(self.data._caller(ctx), pb.ShmHitsRequest.FromString(body))
            except (DecodeError, errors.KVBucketError):
                self.shm.catalog_reads["refused"] += 1
        elif method == Method.PUT:
            await self._put(conn, ctx, body)
        elif method == Method.GET:
            await self._get(conn, ctx, body)
        else:
            await conn.error(grpc.StatusCode.UNIMPLEMENTED, f"unknown fast-wire method {method}")
            raise _Closed()  # a PUT of a newer client would be followed by bytes we cannot frame

    async def _put(self, conn: _Conn, ctx: _Context, body: bytes) -> None:
        try:
            h = pb.PutRequest.FromString(body).header
        except DecodeError:
            await conn.error(grpc.StatusCode.INVALID_ARGUMENT, "malformed PUT header")
            raise _Closed() from None  # the payload length is unknown: the stream cannot be resynchronized
        call = _Call(self.metrics, "put")
        received = False
        try:
            inc = self.data._begin(self.data._caller(ctx), h)
            await conn.fill(inc.buf, inc.hasher)
            received = True
            inc.filled = len(inc.buf)
            result = await self.data._commit(inc)
        except errors.KVBucketError as exc:
            call.refuse(exc)
            if not received:  # keep the stream in step: skip the payload the client sent anyway
                if h.payload_length > self.data.limits.max_chunk_bytes:
                    await conn.error(call.code, str(exc))
                    raise _Closed() from None
                await conn.drain(h.payload_length)
            await conn.error(call.code, str(exc))
            return
        except BaseException:
            call.failed()
            raise
        finally:
            inc = None  # noqa: F841 - an arena slot goes back now, not when a traceback is collected
            call.done()
        await conn.send(frame(0, pb.PutResponse(results=[result]).SerializeToString()))

    async def _get(self, conn: _Conn, ctx: _Context, body: bytes) -> None:
        call = _Call(self.metrics, "get")
        try:
            request = pb.GetRequest.FromString(body)
            async for msg, payload in self.data.chunks(self.data._caller(ctx), request):
                await conn.send(frame(0, msg.SerializeToString()))
                if payload is not None:
                    await conn.send(payload)
        except DecodeError:
            call.code = grpc.StatusCode.INVALID_ARGUMENT
            await conn.error(call.code, "malformed GET request")
            return
        except errors.KVBucketError as exc:
            await conn.error(call.refuse(exc), str(exc))
            return
        except BaseException:
            call.failed()
            raise
        finally:
            call.done()
        await conn.send(frame(0))

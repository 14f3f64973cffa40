"""The fast wire: kvbucket's own framing on a plain socket, next to gRPC, for the hot data-plane calls.

Python gRPC costs ~1 CPU-second per GB on each end and ~0.7 ms per call here (FACTS.md); a socket
moves bytes at several GB/s and answers in tens of microseconds. The daemon (server/fastwire.py)
listens on a TCP port (announced by the Hello RPC) and, with a unix socket, on `<socket>.fast`;
the SDK (clients/fastwire.py) uses it when it can reach it and gRPC otherwise. Same messages as
proto/store.proto, same servicer code behind them (auth, scopes, checks, metrics, statuses).

Frames, all integers little-endian:

    request   u32 n | u8 method | n bytes: the request message (protobuf)    [+ raw chunk bytes: PUT]
    reply     u32 n | u8 status | n bytes: the reply message, or the error text (status != 0)

`status` is a gRPC status code number (0 OK). The first request on a connection is HELLO (body: the
bearer token, UTF-8, maybe empty); a refused HELLO closes the connection. Then:

    unary     one request, one reply (LOOKUP, EXISTS, DELETE and the KVBucketShm calls)
    one-way   SHM_WRITTEN (body ShmWritten), SHM_HITS (body ShmHitsRequest): no reply, whatever becomes of it
    PUT       body PutRequest{header}; then exactly header.payload_length raw bytes; reply PutResponse
    GET       body GetRequest; replies: per hash a GetResponse{header} followed by header.payload_length
              raw bytes, or a GetResponse{miss}; then an empty OK reply ends the stream. An error reply
              ends it too.

Plaintext: the daemon does not offer it when TLS is configured.
"""

from __future__ import annotations

import enum
import socket
import struct

HEAD = struct.Struct("<IB")
MAX_MESSAGE = 64 << 20  # a control message larger than this is refused (bulk bytes are not messages)
# Both ends hash raw chunk bytes as they arrive, at most this much per receive, so the hash reads them
# from L1/L2 right after the kernel wrote them. Measured here (client GET into a warm buffer): 32 MiB
# p50 ~10 ms receiving whatever is there vs ~8 ms in 128 KiB pieces (64 KiB: no better, 512 KiB and
# more: no gain); 2 MiB 0.74 vs 0.60 ms.
HASHED_RECV = 128 << 10


class Method(enum.IntEnum):
    HELLO = 1
    LOOKUP = 2
    EXISTS = 3
    DELETE = 4
    PUT = 5
    GET = 6
    SHM_ATTACH = 10
    SHM_RESERVE = 11
    SHM_COMMIT = 12
    SHM_GET = 13
    SHM_RELEASE = 14
    SHM_PUT = 15
    SHM_WRITTEN = 16  # one-way
    SHM_HITS = 17  # one-way


def frame(code: int, body: bytes = b"") -> bytes:
    return HEAD.pack(len(body), code) + body


def tune_socket(sock: socket.socket, buffer_bytes: int = 4 << 20) -> None:
    """Both ends: no Nagle delay on TCP, and socket buffers of a few MiB, so a multi-MiB chunk moves in
    fewer wake-ups (the kernel caps the size at net.core.[rw]mem_max)."""
    if sock.family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, buffer_bytes)
        except OSError:
            pass

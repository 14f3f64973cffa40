"""Data frames of Put and Get, encoded and decoded without protobuf message objects.

`PutRequest` and `GetResponse` (proto/store.proto) both carry chunk bytes in field 2, `data`. A
message holding only that field is `0x12, varint(len), bytes`. Building `PutRequest(data=bytes(view))`
and serializing it copies every byte three times, and parsing one copies it again; the helpers here
produce and read the same bytes on the wire with one copy (encode) or none (decode). Headers, misses
and replies stay protobuf messages. Both the SDK (clients/wire.py) and the daemon (server/service.py)
use them, so the two ends cannot disagree.
"""

from __future__ import annotations

DATA_TAG = b"\x12"  # field 2, wire type 2 (length-delimited)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode(view) -> bytes:
    """The serialized message `{data: view}`, with one copy of the bytes."""
    return b"".join((DATA_TAG, _varint(len(view)), view))


def decode(raw: bytes) -> memoryview | None:
    """The payload of a data-only message as a view of `raw` (no copy); None for any other message."""
    if raw[:1] != DATA_TAG:
        return None
    n = shift = 0
    pos = 1
    while pos < len(raw) and shift < 64:
        b = raw[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return memoryview(raw)[pos:] if pos + n == len(raw) else None
    return None


def passthrough(msg) -> bytes:
    """A serializer for streams that mix pre-encoded frames (bytes) with protobuf messages."""
    return msg if type(msg) is bytes else msg.SerializeToString()

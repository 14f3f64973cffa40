"""The self-describing chunk record, as stored on disk and in object storage.

    offset size  field
    0      4     magic b"KVBK"
    4      1     format version (1)
    5      1     codec (core.codecs.Codec)
    6      1     len(dtype)
    7      1     ndim
    8      8     raw length (decoded bytes)
    16     8     payload length (stored bytes)
    24     8     xxh3_64 of the raw bytes
    32     4     tokens covered by the chunk
    36     ..    dtype (ascii), then ndim x u64 shape
    ..     4     xxh3_64 of every header byte above, low 32 bits
    ..     ..    payload

Any daemon can read what another wrote; a flipped bit in the header or payload is DataLoss,
detected before a tensor reaches a model.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import xxhash

from kvbucket.core.codecs import Codec, compress, decompress
from kvbucket.core.errors import DataLoss, InvalidArgument
from kvbucket.core.keys import DTYPE_SIZES

MAGIC = b"KVBK"
VERSION = 1
_FIXED = struct.Struct("<4sBBBBQQQI")
_CHECK = struct.Struct("<I")

checksum = xxhash.xxh3_64_intdigest


@dataclass(frozen=True, slots=True)
class RecordHeader:
    codec: Codec
    dtype: str
    shape: tuple[int, ...]
    raw_length: int
    payload_length: int
    checksum: int
    tokens: int

    def encode(self) -> bytes:
        dtype = self.dtype.encode()
        head = _FIXED.pack(
            MAGIC, VERSION, int(self.codec), len(dtype), len(self.shape),
            self.raw_length, self.payload_length, self.checksum, self.tokens,
        ) + dtype + struct.pack(f"<{len(self.shape)}Q", *self.shape)
        return head + _CHECK.pack(checksum(head) & 0xFFFFFFFF)


@dataclass(frozen=True, slots=True)
class Record:
    """A header and its payload (encoded with header.codec)."""

    header: RecordHeader
    payload: bytes | bytearray | memoryview

    @property
    def stored_length(self) -> int:
        return self.header.payload_length

    def raw(self, out: bytearray | None = None) -> memoryview:
        """The decoded bytes, checksum verified; DataLoss if they do not match."""
        h = self.header
        data = memoryview(decompress(h.codec, self.payload, h.raw_length, out))
        if checksum(data) != h.checksum:
            raise DataLoss("chunk bytes do not match their checksum")
        return data

    def encode(self) -> list[bytes | bytearray | memoryview]:
        """Header and payload as separate buffers (no copy of the payload)."""
        return [self.header.encode(), self.payload]

    def to_bytes(self) -> bytes:
        return b"".join(self.encode())


def make_record(
    raw: bytes | bytearray | memoryview, dtype: str, shape: tuple[int, ...], tokens: int, codec: Codec = Codec.NONE
) -> Record:
    """Build a record from raw bytes, compressing with `codec`."""
    raw = memoryview(raw).cast("B")
    payload = compress(codec, raw, DTYPE_SIZES.get(dtype, 1))
    header = RecordHeader(codec, dtype, tuple(shape), len(raw), len(payload), checksum(raw), tokens)
    return Record(header, payload)


def recode(record: Record, codec: Codec) -> Record:
    """The same chunk under another codec (verifies the checksum on the way)."""
    if record.header.codec == codec:
        return record
    h = record.header
    return make_record(record.raw(), h.dtype, h.shape, h.tokens, codec)


def decode_header(buf: bytes | memoryview) -> tuple[RecordHeader, int]:
    """Parse the header at the start of `buf`; returns it and the payload offset."""
    mv = memoryview(buf)
    if len(mv) < _FIXED.size + _CHECK.size:
        raise DataLoss(f"record is {len(mv)} bytes, shorter than a header")
    magic, version, codec, dlen, ndim, raw_len, pay_len, csum, tokens = _FIXED.unpack_from(mv)
    if magic != MAGIC:
        raise DataLoss("not a kvbucket record (bad magic)")
    if version != VERSION:
        raise DataLoss(f"record format version {version} is not supported (this build reads {VERSION})")
    end = _FIXED.size + dlen + 8 * ndim
    if len(mv) < end + _CHECK.size:
        raise DataLoss("record header is truncated")
    (want,) = _CHECK.unpack_from(mv, end)
    if checksum(mv[:end]) & 0xFFFFFFFF != want:
        raise DataLoss("record header does not match its checksum")
    try:
        codec_ = Codec(codec)
    except ValueError:
        raise DataLoss(f"record names unknown codec {codec}") from None
    dtype = bytes(mv[_FIXED.size : _FIXED.size + dlen]).decode("ascii")
    shape = struct.unpack_from(f"<{ndim}Q", mv, _FIXED.size + dlen)
    return RecordHeader(codec_, dtype, tuple(shape), raw_len, pay_len, csum, tokens), end + _CHECK.size


def decode_record(buf: bytes | memoryview) -> Record:
    """Parse a whole record; the payload is a view into `buf`. Checksum is verified by `raw()`."""
    header, offset = decode_header(buf)
    payload = memoryview(buf)[offset:]
    if len(payload) != header.payload_length:
        raise DataLoss(f"record payload is {len(payload)} bytes, header says {header.payload_length}")
    return Record(header, payload)


def validate_against_layout(dtype: str, shape: tuple[int, ...], raw_length: int, layout) -> None:
    """A chunk must have exactly the layout's dtype and shape (tokens may be fewer: last chunk)."""
    if dtype != layout.dtype:
        raise InvalidArgument(f"chunk dtype {dtype!r} does not match the layout dtype {layout.dtype!r}")
    if tuple(shape) != tuple(layout.shape):
        raise InvalidArgument(f"chunk shape {tuple(shape)} does not match the layout shape {tuple(layout.shape)}")
    if raw_length != layout.chunk_bytes:
        raise InvalidArgument(
            f"chunk is {raw_length} bytes; dtype {dtype} x shape {tuple(shape)} is {layout.chunk_bytes} bytes"
        )

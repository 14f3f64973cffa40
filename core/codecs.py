"""Payload codecs: none, shuffle+LZ4 (hot) and shuffle+zstd (cold), via blosc2.

Plain LZ4 compresses bf16 KV at 1.00x (FACTS.md): the exponent byte needs a shuffle first, which
blosc2 does in the same pass. The codec id is recorded in every record, so readers never guess.
"""

from __future__ import annotations

import enum

from kvbucket.core.errors import DataLoss, InvalidArgument


class Codec(enum.IntEnum):
    """Values match the `Codec` enum in proto/store.proto."""

    NONE = 0
    LZ4 = 1  # blosc2 bit-shuffle + LZ4: ~1.26x on bf16 KV, ~1.1 GB/s per core
    ZSTD = 2  # blosc2 byte-shuffle + zstd level 1: ~1.45x on bf16 KV, ~0.4 GB/s per core

    @classmethod
    def parse(cls, value: int | str) -> Codec:
        try:
            return cls[value.upper()] if isinstance(value, str) else cls(value)
        except (KeyError, ValueError):
            names = ", ".join(c.name.lower() for c in cls)
            raise InvalidArgument(f"unknown codec {value!r}; known: {names}") from None


def compress(codec: Codec, raw: bytes | memoryview, typesize: int) -> bytes | memoryview:
    """Encode `raw`; `typesize` is the element size the shuffle groups bytes by."""
    if codec is Codec.NONE:
        return raw
    import blosc2

    if codec is Codec.LZ4:
        return blosc2.compress2(
            raw, typesize=typesize, clevel=1, filter=blosc2.Filter.BITSHUFFLE, codec=blosc2.Codec.LZ4
        )
    return blosc2.compress2(
        raw, typesize=typesize, clevel=1, filter=blosc2.Filter.SHUFFLE, codec=blosc2.Codec.ZSTD
    )


def decompress(codec: Codec, payload: bytes | memoryview, raw_length: int, out: bytearray | None = None):
    """Decode `payload` into `out` (or a new buffer); a payload that does not decode is DataLoss."""
    if codec is Codec.NONE:
        if len(payload) != raw_length:
            raise DataLoss(f"payload is {len(payload)} bytes, record says {raw_length}")
        return payload
    if raw_length == 0:
        return memoryview(b"")
    import blosc2

    dst = out if out is not None else bytearray(raw_length)
    try:
        n = blosc2.decompress2(payload, dst=dst)
    except Exception as exc:  # blosc2 raises plain RuntimeError/ValueError on corrupt frames
        raise DataLoss(f"{codec.name.lower()} payload does not decode: {exc}") from None
    if n is not None and n != raw_length and not isinstance(n, (bytes, bytearray)):
        raise DataLoss(f"decoded {n} bytes, record says {raw_length}")
    return memoryview(dst)[:raw_length]

"""The catalog's writer: the daemon lists the RAM tier's arena-held entries in the table clients read
(format, protocol and reader: core/catalog.py). `MemoryTier.listener` calls it synchronously on the
event loop -- the one writer -- whenever an entry is stored, dropped or given a new expiry.
"""

from __future__ import annotations

from collections.abc import Callable

from kvbucket.core.catalog import BODY, BUCKET_BYTES, CLOSED, ENTRY, HEADER, OPEN, SEQ, buckets_of, tag_of
from kvbucket.core.codecs import Codec
from kvbucket.core.record import Record
from kvbucket.server.tiers.base import EntryMeta


class Catalog:
    """Mirrors the RAM tier's arena-held entries into the table at the start of `buf`."""

    def __init__(self, buf: memoryview, buckets: int, offset_of: Callable[[object], int | None]) -> None:
        if buckets & (buckets - 1):
            raise ValueError(f"catalog buckets must be a power of two, got {buckets}")
        self.view = buf
        self.buckets = buckets
        self._offset_of = offset_of
        self._where: dict[bytes, int] = {}  # key bytes -> byte position of its entry
        self.unlisted = 0  # entries left out: both their buckets were full
        HEADER.pack_into(self.view, 0, OPEN, 0.0)

    def __len__(self) -> int:
        return len(self._where)

    # -- what the RAM tier tells it --------------------------------------------------------

    def stored(self, kb: bytes, record: Record, meta: EntryMeta) -> None:
        """An entry was stored (or replaced) under `kb`: list it when its payload is an arena slot."""
        h = record.header
        off = self._offset_of(record.payload) if h.codec is Codec.NONE else None
        if off is None or h.payload_length != h.raw_length:
            self.dropped(kb)
            return
        lo, hi = tag_of(kb)
        pos = self._where.get(kb)
        if pos is None:
            pos = self._free_way(lo, hi)
            if pos is None:
                self.unlisted += 1
                return
            self._where[kb] = pos
        self._write(pos, lo, hi, off, h.raw_length, h.checksum ^ lo, meta.expires_at or 0.0, h.tokens)

    def changed(self, kb: bytes, meta: EntryMeta) -> None:
        """An entry's expiry moved (a sliding TTL's hit, an admin's TTL)."""
        pos = self._where.get(kb)
        if pos is not None:
            _, lo, hi, off, n, check, _, tokens = ENTRY.unpack_from(self.view, pos)
            self._write(pos, lo, hi, off, n, check, meta.expires_at or 0.0, tokens)

    def dropped(self, kb: bytes) -> None:
        """An entry left the RAM tier: unlist it before anything can free its slot."""
        pos = self._where.pop(kb, None)
        if pos is not None:
            self._write(pos, 0, 0, 0, 0, 0, 0.0, 0)

    def clock_moved(self, offset: float) -> None:
        """The daemon's clock now runs `offset` seconds ahead of the wall clock (tests: `server/clock.py`)."""
        HEADER.pack_into(self.view, 0, OPEN, offset)

    def close(self) -> None:
        """Readers stop using the table (the daemon is going away)."""
        HEADER.pack_into(self.view, 0, CLOSED, 0.0)

    # -- the table -------------------------------------------------------------------------

    def _free_way(self, lo: int, hi: int) -> int | None:
        for base in buckets_of(lo, hi, self.buckets - 1):
            for pos in range(base, base + BUCKET_BYTES, ENTRY.size):
                if not ENTRY.unpack_from(self.view, pos)[1]:
                    return pos
        return None

    def _write(self, pos: int, *body) -> None:
        """Seqlock write: odd seq, the fields, then the next even seq."""
        seq = SEQ.unpack_from(self.view, pos)[0]
        SEQ.pack_into(self.view, pos, seq + 1)
        BODY.pack_into(self.view, pos + SEQ.size, *body)
        SEQ.pack_into(self.view, pos, seq + 2)

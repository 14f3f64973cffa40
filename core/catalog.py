"""The catalog: a table in the shared-memory arena listing the entries held in arena slots, so a
same-host client gets a chunk with no call to the daemon.

A ShmGet is a round trip (~0.35 ms here, most of it the daemon's Python) on top of a 2 MiB copy of
~0.25 ms. With the catalog the client finds the entry's slot in the table itself, copies the bytes
out and verifies them, and tells the daemon afterwards with a one-way ShmHits (fast wire) so hits,
recency, sliding TTLs and usage count as for any get (server/shm.py `ShmService.hits`).

Layout, at `Arena.catalog_offset`: a 64-byte header (`state` u64: 1 while the daemon runs, 0 once it
closed; `clock_offset` f64: the daemon's clock minus the wall clock, 0 but in tests that move the
daemon's clock), then `buckets` (a power of two) buckets of WAYS entries of 64 bytes:

    seq u64 | tag_lo u64 | tag_hi u64 | offset u64 | length u64 | check u64 | expires f64 | tokens u64

tag: xxh3_128 of the entry's key (`EntryKey.to_bytes`), with tag_lo | 1 so that 0 means empty. An
entry lives in one of two buckets, tag_hi mod buckets or else (tag_lo >> 1) mod buckets (two choices
keep buckets from overflowing at loads where one would). check: the chunk's xxh3_64 XOR tag_lo, so a
torn read pairing one key's tag with another's checksum cannot verify. expires: unix time by the
daemon's clock, 0 for never.

One writer (the daemon's event loop) and many readers, as a seqlock: seq is odd while an entry
changes and each change adds 2. A reader (`Reader`) finds the tag with an even seq, copies the
slot's bytes and hashes the copy, and serves it only when seq is still the same and the hash
matches; otherwise it asks the daemon (ShmGet), which serves the chunk or says it is gone or
corrupt. The daemon unlists an entry before its slot can go back to the allocator (the record the
RAM tier drops is the slot's last reference), so an unchanged seq after the copy means the slot was
not reused during it; the hash covers a process that scribbled on the slot. Both sides use plain
loads and stores (`struct`): on x86 the seqlock holds exactly; where loads may be reordered (ARM), a
reader may see an entry half-changed, and then the checksum bound to the tag fails and the get goes
to the daemon -- wrong bytes are not served either way.

This module is the format and the reader; server/catalog.py is the writer. Two full buckets leave
an entry unlisted: readers get it by ShmGet. Trust is the arena's (server/arena.py): whoever
can map the file reads every slot and this table; auth scopes the calls, not the memory.
"""

from __future__ import annotations

import struct
import time
from typing import NamedTuple

import xxhash

HEADER = struct.Struct("<Qd")  # state, clock_offset; the rest of the 64-byte header is reserved
HEADER_BYTES = 64
ENTRY = struct.Struct("<QQQQQQdQ")
BODY = struct.Struct("<QQQQQdQ")  # an entry after its seq
SEQ = struct.Struct("<Q")
WAYS = 8
BUCKET_BYTES = WAYS * ENTRY.size
OPEN, CLOSED = 1, 0
SLOT_BYTES = 64 << 10  # the table has two ways per this much arena (16 MiB of table per 8 GiB of arena)


def buckets_for(arena_bytes: int) -> int:
    """Buckets for an arena of this size: a power of two, at least 16. An arena full of 64 KiB slots
    fills half the ways; with 2 MiB chunks a bucket is all but never full."""
    want = max(16, 2 * arena_bytes // SLOT_BYTES // WAYS)
    return 1 << (want - 1).bit_length()


def table_bytes(buckets: int) -> int:
    return HEADER_BYTES + buckets * BUCKET_BYTES


def tag_of(key_bytes: bytes) -> tuple[int, int]:
    """(tag_lo, tag_hi) of a key (`EntryKey.to_bytes()`): never (0, x), which marks an empty way."""
    t = xxhash.xxh3_128_intdigest(key_bytes)
    return (t & 0xFFFF_FFFF_FFFF_FFFF) | 1, t >> 64


def buckets_of(lo: int, hi: int, mask: int) -> tuple[int, int]:
    """Byte positions (from the table's start) of the two buckets an entry of this tag may live in."""
    return HEADER_BYTES + (hi & mask) * BUCKET_BYTES, HEADER_BYTES + ((lo >> 1) & mask) * BUCKET_BYTES


class Found(NamedTuple):
    pos: int  # of the entry, in the mapping
    seq: int
    offset: int  # of the slot, in the mapping
    length: int
    checksum: int  # xxh3_64 the slot's bytes must have


class Reader:
    """The catalog as a same-host client sees it, in its mapping of the arena."""

    def __init__(self, view: memoryview, offset: int, buckets: int) -> None:
        if buckets <= 0 or buckets & (buckets - 1) or offset + table_bytes(buckets) > len(view):
            raise ValueError(f"no catalog of {buckets} buckets fits at {offset} in a {len(view)}-byte arena")
        self.view = view
        self.offset = offset
        self.mask = buckets - 1

    def now(self) -> float | None:
        """The daemon's time (what expiries compare with); None once it closed: nothing listed is
        current any more."""
        state, clock_offset = HEADER.unpack_from(self.view, self.offset)
        return time.time() + clock_offset if state == OPEN else None

    def find(self, key_bytes: bytes, now: float) -> Found | None:
        """The listed entry of this key, unexpired at `now` (the daemon's time), with a stable seq; or None."""
        lo, hi = tag_of(key_bytes)
        for bucket in buckets_of(lo, hi, self.mask):
            base = self.offset + bucket
            for pos in range(base, base + BUCKET_BYTES, ENTRY.size):
                seq, tlo, thi, off, n, check, expires, _ = ENTRY.unpack_from(self.view, pos)
                if tlo == lo and thi == hi:
                    if seq & 1 or (expires and expires <= now):
                        return None
                    return Found(pos, seq, off, n, check ^ lo)
        return None

    def unchanged(self, found: Found) -> bool:
        """Whether the entry is still the one found (then its slot was not reused meanwhile)."""
        return SEQ.unpack_from(self.view, found.pos)[0] == found.seq

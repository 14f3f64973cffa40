"""The shared-memory arena: one file in /dev/shm, mapped by the daemon and by same-host clients.

    0       8   magic b"KVBSHM01"
    8       8   nonce (u64 little-endian): a client checks it to know it mapped the daemon's arena
    4096    ..  the catalog (format: core/catalog.py), a whole number of pages; none when `catalog` is off
    ..      ..  slots, each a whole number of pages

`Extents` is the allocator: best fit over free extents kept by size, coalescing on free.
`Arena.slot(n)` hands out a slot as a numpy view of the mapping; the slot returns to the allocator
when the last reference to that view (or to any memoryview made from it) goes away -- a RAM-tier
record, a read lease, a write-behind copy in flight. So a slot cannot be reused while anything in
the daemon still refers to it, whatever path it took out of the index (delete, overwrite, eviction).

Trust: every process that can open the file reads and writes every slot, across namespaces. The file
is created with mode 0600 (the daemon's user); auth scopes the RPCs, not the memory.
"""

from __future__ import annotations

import bisect
import collections
import mmap
import os
import secrets
import struct
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kvbucket.core import catalog as catalog_mod
from kvbucket.server.catalog import Catalog

PAGE = mmap.PAGESIZE
HEADER = struct.Struct("<8sQ")
MAGIC = b"KVBSHM01"


def round_up(n: int, to: int = PAGE) -> int:
    return (n + to - 1) // to * to


class Extents:
    """Best-fit allocator over [start, end) with coalescing of adjacent free extents. Thread-safe.

    Free extents are kept twice: by offset (`_starts`, to merge a freed extent with its neighbours)
    and by (length, offset) (`_by_size`, to find the smallest that fits, lowest offset first, by
    bisection). First fit scanned the extents in address order: with chunks of several sizes the
    free list fragments, and allocating took 52-65 us at the median, ~350 us at p99, over ~2,400
    extents (benchmarks/bench_arena.py: mixed 4 KiB-32 MiB churn); here 2.2 us and 6 us, a bisection
    and a few list edits, and best fit leaves ~1,000 extents.

    Invariants: free extents are disjoint, non-adjacent (merged) and the same in both lists; every
    allocated extent is freed at most once (a double free raises). `release` only queues: it runs from
    slot finalizers, which the cyclic GC may fire anywhere -- even inside `alloc` holding the lock.
    """

    def __init__(self, start: int, end: int, align: int = PAGE) -> None:
        self.align = align
        self.size = end - start
        self._starts: list[int] = [start] if end > start else []
        self._len: dict[int, int] = {start: end - start} if end > start else {}
        self._by_size: list[tuple[int, int]] = [(end - start, start)] if end > start else []
        self._used: dict[int, int] = {}
        self._free_total = self.size
        self._lock = threading.Lock()
        self._released: collections.deque[int] = collections.deque()  # append/popleft are atomic

    def release(self, start: int) -> None:
        """Free `start` at the next allocator call (safe from any thread, finalizer or GC pass)."""
        self._released.append(start)

    def _drain(self) -> None:
        while self._released:
            self._free(self._released.popleft())

    def alloc(self, n: int) -> int | None:
        """Offset of a free extent of at least n bytes (rounded up to `align`), or None."""
        n = round_up(max(n, 1), self.align)
        with self._lock:
            self._drain()
            j = bisect.bisect_left(self._by_size, (n, -1))
            if j == len(self._by_size):
                return None
            have, start = self._by_size.pop(j)
            i = bisect.bisect_left(self._starts, start)
            del self._len[start]
            if have == n:
                del self._starts[i]
            else:
                self._starts[i] = start + n  # the rest stays where it was in address order
                self._len[start + n] = have - n
                bisect.insort(self._by_size, (have - n, start + n))
            self._used[start] = n
            self._free_total -= n
            return start

    def free(self, start: int) -> None:
        with self._lock:
            self._drain()
            self._free(start)

    def _unsize(self, start: int) -> None:
        """Drop the free extent at `start` from `_by_size` (it is about to grow or go)."""
        del self._by_size[bisect.bisect_left(self._by_size, (self._len[start], start))]

    def _free(self, start: int) -> None:
        n = self._used.pop(start)  # KeyError: not allocated (double free)
        self._free_total += n
        i = bisect.bisect_left(self._starts, start)
        if i < len(self._starts) and self._starts[i] == start + n:  # merge with the next extent
            self._unsize(start + n)
            n += self._len.pop(self._starts.pop(i))
        if i > 0 and (prev := self._starts[i - 1]) + self._len[prev] == start:  # and the previous
            self._unsize(prev)
            self._len[prev] += n
            bisect.insort(self._by_size, (self._len[prev], prev))
        else:
            self._starts.insert(i, start)
            self._len[start] = n
            bisect.insort(self._by_size, (n, start))

    @property
    def free_bytes(self) -> int:
        """Bytes in free extents (a running count: cheap enough for every put)."""
        with self._lock:
            self._drain()
            return self._free_total

    @property
    def used_bytes(self) -> int:
        """What `free_bytes` is not (every byte is in a free extent or an allocated one): O(1), not a
        sum over the slots (a metrics scrape reads it; a large arena of small chunks has millions)."""
        with self._lock:
            self._drain()
            return self.size - self._free_total

    @property
    def slots(self) -> int:
        with self._lock:
            self._drain()
            return len(self._used)

    @property
    def largest_free(self) -> int:
        with self._lock:
            self._drain()
            return self._by_size[-1][0] if self._by_size else 0


@dataclass(frozen=True, slots=True)
class ArenaStats:
    size: int
    used_bytes: int
    slots: int
    largest_free: int


def remove_stale(directory: Path = Path("/dev/shm")) -> list[Path]:
    """Unlink arenas left by daemons that died without `close()` (kill -9): their pid is gone."""
    removed = []
    for path in directory.glob("kvbucket-*-*"):
        try:
            pid = int(path.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid() or _alive(pid):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class Arena:
    """A /dev/shm file of `size` bytes (plus a header page), mapped shared; `close()` unlinks it."""

    def __init__(self, size: int, directory: Path = Path("/dev/shm"), reserve: bool = True,
                 catalog: bool = True) -> None:
        remove_stale(directory)
        self.nonce = secrets.randbits(63) or 1
        self.path = directory / f"kvbucket-{os.getpid()}-{self.nonce:016x}"
        self.catalog_offset = PAGE
        self.catalog_buckets = catalog_mod.buckets_for(size) if catalog else 0
        slots_at = PAGE + (round_up(catalog_mod.table_bytes(self.catalog_buckets)) if catalog else 0)
        total = slots_at + round_up(size)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if reserve:  # take the pages now: a full /dev/shm later must not SIGBUS a writer
                os.posix_fallocate(fd, 0, total)
            else:
                os.ftruncate(fd, total)
            populate = getattr(mmap, "MAP_POPULATE", 0) if reserve else 0  # no page faults on the data path
            self._mm = mmap.mmap(fd, total, mmap.MAP_SHARED | populate, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)
        HEADER.pack_into(self._mm, 0, MAGIC, self.nonce)
        self.size = total
        self.extents = Extents(slots_at, total)
        # id() of each live slot view -> its offset. A view's finalizer runs as it is freed, before
        # its id can name another object, and drops it here.
        self._slots: dict[int, int] = {}

    def slot(self, n: int) -> np.ndarray | None:
        """A writable view of n bytes of the arena, freed when its last reference goes; None if full."""
        off = self.extents.alloc(n)
        if off is None:
            return None
        view = np.frombuffer(self._mm, dtype=np.uint8, count=n, offset=off)
        self._slots[id(view)] = off
        weakref.finalize(view, self._freed, id(view), off)
        return view

    def _freed(self, view_id: int, off: int) -> None:  # any thread, finalizer or GC pass
        self._slots.pop(view_id, None)
        self.extents.release(off)

    def offset_of(self, payload) -> int | None:
        """Where `payload` (a slot or a memoryview of one) starts in the arena; None if it is not a slot."""
        arr = payload.obj if type(payload) is memoryview else payload
        off = self._slots.get(id(arr))
        if off is not None and type(payload) is memoryview and payload.nbytes != arr.nbytes:
            return None  # a part of a slot: not a slot of its own
        return off

    def catalog(self) -> Catalog | None:
        """The catalog's daemon side over its region of the mapping (None when off)."""
        if not self.catalog_buckets:
            return None
        n = catalog_mod.table_bytes(self.catalog_buckets)
        region = memoryview(self._mm)[self.catalog_offset : self.catalog_offset + n]
        return Catalog(region, self.catalog_buckets, self.offset_of)

    def stats(self) -> ArenaStats:
        e = self.extents
        return ArenaStats(e.size, e.used_bytes, e.slots, e.largest_free)

    def close(self) -> None:
        """Unlink the file; the mapping goes when the last slot view does (clients keep theirs)."""
        self.path.unlink(missing_ok=True)

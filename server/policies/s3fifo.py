"""S3-FIFO (Yang et al., SOSP 2023): three FIFO queues, scan-resistant, no reordering on a hit.

- small: new entries land here; it is meant to hold ~10% of the bytes held (of the capacity, when full);
- main: entries read at least once while in small, and entries re-admitted from ghost;
- ghost: keys (no data) recently evicted from small, bounded to main's share of the capacity.

Each held entry carries a 2-bit read counter (0..3), bumped by `touch`. To make room: while small
holds >= its share, take its oldest entry: read since admission -> move to main (counter reset),
else evict it and remember its key in ghost. Otherwise take main's oldest: read -> reinsert at
main's head with counter - 1, else evict. So one-hit wonders leave through small quickly, and an
entry that comes back soon after eviction skips small. Protected entries are stepped over (moved to
the head of their queue). Each step either evicts, promotes or spends a counter bit, so `victims`
is O(1) amortized per entry plus the protected entries it steps over.
"""

from __future__ import annotations

from collections import OrderedDict

from kvbucket.server.policies.base import EvictionPolicy, Protected

SMALL_RATIO = 0.1
MAX_FREQ = 3


class S3FIFOPolicy(EvictionPolicy):
    name = "s3fifo"

    def __init__(self, capacity_bytes: int, small_ratio: float = SMALL_RATIO) -> None:
        super().__init__(capacity_bytes)
        self.small_ratio = small_ratio
        self._small: OrderedDict[bytes, int] = OrderedDict()  # key -> size, oldest first
        self._main: OrderedDict[bytes, int] = OrderedDict()
        self._ghost: OrderedDict[bytes, int] = OrderedDict()
        self._freq: dict[bytes, int] = {}  # held keys only
        self._small_bytes = 0
        self._main_bytes = 0
        self._ghost_bytes = 0

    @property
    def _small_target(self) -> float:
        # share of what is held (== capacity when full), so an underfull or resized tier keeps the shape
        return min(self.bytes, self.capacity_bytes) * self.small_ratio

    def insert(self, key: bytes, size: int) -> None:
        if key in self._freq:
            queue = self._small if key in self._small else self._main
            delta = size - queue[key]
            queue[key] = size
            if queue is self._small:
                self._small_bytes += delta
            else:
                self._main_bytes += delta
            self.bytes += delta
            self.touch(key)
            return
        ghost_size = self._ghost.pop(key, None)
        if ghost_size is not None:  # evicted from small not long ago: it earned main
            self._ghost_bytes -= ghost_size
            self._main[key] = size
            self._main_bytes += size
        else:
            self._small[key] = size
            self._small_bytes += size
        self._freq[key] = 0
        self.bytes += size

    def touch(self, key: bytes) -> None:
        freq = self._freq.get(key)
        if freq is not None and freq < MAX_FREQ:
            self._freq[key] = freq + 1

    def remove(self, key: bytes) -> None:
        if self._freq.pop(key, None) is None:
            return
        if key in self._small:
            size = self._small.pop(key)
            self._small_bytes -= size
        else:
            size = self._main.pop(key)
            self._main_bytes -= size
        self.bytes -= size

    def victims(self, nbytes: int, protected: Protected) -> list[bytes] | None:
        journal: list[tuple] = []  # how to undo each step, should the room not be found
        chosen: list[tuple[bytes, int, bool]] = []  # key, size, evicted from small
        freed = small_skips = main_skips = 0
        while freed < nbytes:
            small_ok = small_skips < len(self._small)  # not yet seen every entry protected
            main_ok = main_skips < len(self._main)
            if not small_ok and not main_ok:
                self._undo(journal)
                return None
            if small_ok and (self._small_bytes >= self._small_target or not main_ok):
                key, size = self._small.popitem(last=False)
                if protected(key):
                    self._small[key] = size
                    journal.append(("rotate", self._small, key))
                    small_skips += 1
                    continue
                small_skips = 0
                self._small_bytes -= size
                if self._freq[key] > 0:
                    journal.append(("promote", key, size, self._freq[key]))
                    self._main[key] = size
                    self._main_bytes += size
                    self._freq[key] = 0
                    main_skips = 0
                else:
                    journal.append(("evict", self._small, key, size))
                    chosen.append((key, size, True))
                    freed += size
            else:
                key, size = self._main.popitem(last=False)
                if protected(key):
                    self._main[key] = size
                    journal.append(("rotate", self._main, key))
                    main_skips += 1
                    continue
                main_skips = 0
                if self._freq[key] > 0:
                    self._main[key] = size
                    self._freq[key] -= 1
                    journal.append(("spend", key))
                else:
                    self._main_bytes -= size
                    journal.append(("evict", self._main, key, size))
                    chosen.append((key, size, False))
                    freed += size
        for key, size, from_small in chosen:
            del self._freq[key]
            self.bytes -= size
            if from_small:
                self._remember(key, size)
        return [key for key, _, _ in chosen]

    def _undo(self, journal: list[tuple]) -> None:
        for step in reversed(journal):
            op = step[0]
            if op == "rotate":
                _, queue, key = step
                queue.move_to_end(key, last=False)
            elif op == "spend":
                self._main.move_to_end(step[1], last=False)
                self._freq[step[1]] += 1
            elif op == "promote":
                _, key, size, freq = step
                del self._main[key]
                self._main_bytes -= size
                self._push_oldest(self._small, key, size)
                self._small_bytes += size
                self._freq[key] = freq
            else:  # evict
                _, queue, key, size = step
                self._push_oldest(queue, key, size)
                if queue is self._small:
                    self._small_bytes += size
                else:
                    self._main_bytes += size

    @staticmethod
    def _push_oldest(queue: OrderedDict[bytes, int], key: bytes, size: int) -> None:
        queue[key] = size
        queue.move_to_end(key, last=False)

    def _remember(self, key: bytes, size: int) -> None:
        self._ghost[key] = size
        self._ghost_bytes += size
        limit = self.capacity_bytes * (1 - self.small_ratio)  # as many bytes as main may hold
        while self._ghost_bytes > limit and self._ghost:
            _, old = self._ghost.popitem(last=False)
            self._ghost_bytes -= old

    def where(self, key: bytes) -> str | None:
        """"small", "main", "ghost" or None: which queue holds `key` (for tests and debugging)."""
        for name, queue in (("small", self._small), ("main", self._main), ("ghost", self._ghost)):
            if key in queue:
                return name
        return None

    def frequency(self, key: bytes) -> int | None:
        return self._freq.get(key)

    def order(self) -> list[bytes]:
        return [*self._small, *self._main]

    def ghost_keys(self) -> list[bytes]:
        return list(self._ghost)

    def __len__(self) -> int:
        return len(self._freq)

    def __contains__(self, key: object) -> bool:
        return key in self._freq

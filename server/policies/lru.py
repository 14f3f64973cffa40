"""Least recently used: evict the entry read or written longest ago."""

from __future__ import annotations

from collections import OrderedDict

from kvbucket.server.policies.base import EvictionPolicy, Protected


class LRUPolicy(EvictionPolicy):
    name = "lru"

    def __init__(self, capacity_bytes: int) -> None:
        super().__init__(capacity_bytes)
        self._sizes: OrderedDict[bytes, int] = OrderedDict()  # least recent first

    def insert(self, key: bytes, size: int) -> None:
        self.bytes += size - self._sizes.get(key, 0)
        self._sizes[key] = size
        self._sizes.move_to_end(key)

    def touch(self, key: bytes) -> None:
        if key in self._sizes:
            self._sizes.move_to_end(key)

    def remove(self, key: bytes) -> None:
        size = self._sizes.pop(key, None)
        if size is not None:
            self.bytes -= size

    def victims(self, nbytes: int, protected: Protected) -> list[bytes] | None:
        chosen: list[bytes] = []
        freed = 0
        for key, size in self._sizes.items():  # collect first: nothing changes unless it suffices
            if freed >= nbytes:
                break
            if not protected(key):
                chosen.append(key)
                freed += size
        if freed < nbytes:
            return None
        for key in chosen:
            self.bytes -= self._sizes.pop(key)
        return chosen

    def order(self) -> list[bytes]:
        return list(self._sizes)

    def __len__(self) -> int:
        return len(self._sizes)

    def __contains__(self, key: object) -> bool:
        return key in self._sizes

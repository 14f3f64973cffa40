"""The eviction policy interface: which entries a bounded tier lets go, and in what order.

A policy holds metadata only (keys and their sizes in bytes), never payloads, and never calls back
into the tier. The tier tells it what happened (`insert`, `touch`, `remove`) and asks it for room
(`victims`). Keys are `EntryKey.to_bytes()`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import ClassVar

Protected = Callable[[bytes], bool]


class EvictionPolicy(abc.ABC):
    """Invariants every policy keeps (tests/server/test_policies.py checks them):

    - each key is held at most once; `len(policy)` counts keys, `policy.bytes` sums their sizes;
    - `insert` of a key already held updates its size and counts as an access;
    - `touch` and `remove` of a key not held are no-ops;
    - `victims(n, protected)` is all-or-nothing: it either returns keys, none of them protected, whose
      sizes sum to >= n and which the policy no longer holds, or returns None and changes nothing
      (same keys, same order, same counters). `victims(0, ...)` is `[]`;
    - every operation is O(1) amortized, except that `victims` also steps over protected keys.
    """

    name: ClassVar[str]

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes <= 0:
            raise ValueError(f"capacity_bytes must be positive, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self.bytes = 0

    @abc.abstractmethod
    def insert(self, key: bytes, size: int) -> None:
        """A new entry of `size` bytes (or a new size for a held key)."""

    @abc.abstractmethod
    def touch(self, key: bytes) -> None:
        """The entry was read."""

    @abc.abstractmethod
    def remove(self, key: bytes) -> None:
        """The entry left the tier for another reason (delete, overwrite failure, expiry)."""

    @abc.abstractmethod
    def victims(self, nbytes: int, protected: Protected) -> list[bytes] | None:
        """Keys to evict, in eviction order, freeing >= `nbytes`; or None, changing nothing."""

    @abc.abstractmethod
    def order(self) -> list[bytes]:
        """Held keys, roughly in the order they would be evicted (for tests and debugging; O(n))."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __contains__(self, key: object) -> bool: ...

    def resize(self, capacity_bytes: int) -> None:
        """A new capacity; the tier evicts down to it through `victims`."""
        if capacity_bytes <= 0:
            raise ValueError(f"capacity_bytes must be positive, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes

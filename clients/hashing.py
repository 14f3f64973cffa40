"""Checksums computed behind the caller: while it copies the next piece of a chunk, one worker thread
hashes the piece before (numpy's copy and xxhash both release the GIL, so the two run on two cores).
Used by shared-memory gets (clients/shm.py `copy_hash`): they verify what landed at about the cost of
the copy alone. Not by fast-wire gets: there the daemon, sending, already keeps the other core busy,
and hashing each received piece inline, from cache, measured faster (32 MiB, p50: 13.3–14.4 ms
inline, 14.3–15.4 ms on the worker)."""

from __future__ import annotations

from concurrent import futures

import xxhash

# Hand the worker at least this much at a time: a hand-off costs ~30 us.
PIECE = 4 << 20
_worker = futures.ThreadPoolExecutor(1, thread_name_prefix="kvbucket-xxh3")


class TrailingHash:
    """xxh3_64 of the pieces given to `update`, in order, hashed on the worker. The pieces must stay
    unchanged until `wait()` (or `intdigest()`) returns -- call it even after an error, before the
    buffer is reused."""

    def __init__(self) -> None:
        self._h = xxhash.xxh3_64()
        self._pending: list[futures.Future] = []

    def update(self, piece) -> None:
        self._pending.append(_worker.submit(self._h.update, piece))  # one worker: pieces in order

    def wait(self) -> None:
        futures.wait(self._pending)

    def intdigest(self) -> int:
        self.wait()
        for f in self._pending:
            f.result()
        return self._h.intdigest()

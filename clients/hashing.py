"""A worker thread that copies behind the caller: shared-memory gets and puts (clients/shm.py `copy_hash`,
`stream_hash`) hand it part of what they copy out of or into the arena -- alternate chunks of a batch,
the tail of a chunk over PIECE -- while they copy and hash the rest (numpy's copy, the C copies of
clients/_streamcopy.c and xxhash all release the GIL, so the two run on two cores).
Not used by fast-wire gets: there the daemon, sending, already keeps the other core busy, and hashing
each received piece inline, from cache, measured faster (32 MiB, p50: 13.3–14.4 ms inline, 14.3–15.4
ms on a worker)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent import futures

import numpy as np

# Below this a chunk alone is copied and hashed by the caller: a hand-off costs ~30 us, and a 2 MiB
# chunk split with the worker measured no faster (0.29-0.31 ms either way).
PIECE = 4 << 20
_worker: futures.ThreadPoolExecutor | None = None
_lock = threading.Lock()


def _np_copy(dst: memoryview, src: memoryview) -> None:
    np.copyto(np.frombuffer(dst, dtype=np.uint8), np.frombuffer(src, dtype=np.uint8))


def copy_behind(dst: memoryview, src: memoryview, copy: Callable[[memoryview, memoryview], None] = _np_copy,
                ) -> futures.Future:
    """copy(dst, src) -- by default numpy's dst[:] = src -- on the worker (copies run in the order given)."""
    global _worker
    if _worker is None:
        with _lock:
            if _worker is None:
                _worker = futures.ThreadPoolExecutor(1, thread_name_prefix="kvbucket-copy")
    return _worker.submit(copy, dst, src)


def _after_fork_in_child() -> None:
    # A forked process (vLLM forks its workers) inherits the executor but not its thread: work handed
    # to it would never run. The child starts its own on first use.
    global _worker, _lock
    _worker, _lock = None, threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)

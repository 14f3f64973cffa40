"""A circuit breaker for cache calls made on an inference path: a cache fault is a miss, never an error.

After a failure, calls are skipped for `backoff` seconds (a hung daemon costs one deadline per
window, not one per request), then tried again; warnings are rate-limited per operation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter


class Breaker:
    def __init__(self, logger: logging.Logger, backoff: float = 1.0, warn_every: float = 30.0) -> None:
        self.backoff = backoff
        self.warn_every = warn_every
        self.failures: Counter[str] = Counter()
        self._log = logger
        self._open_until = 0.0
        self._last_warning: dict[str, float] = {}
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """False while the breaker is open: skip the call and treat it as a miss."""
        return time.monotonic() >= self._open_until

    def success(self) -> None:
        self._open_until = 0.0

    def failure(self, op: str, exc: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            self.failures[op] += 1
            self._open_until = now + self.backoff
            if now - self._last_warning.get(op, -1e9) >= self.warn_every:
                self._last_warning[op] = now
                self._log.warning("kvbucket %s failed (%s: %s); serving without the cache, retrying in %.1fs "
                                  "(%d failures so far)", op, type(exc).__name__, exc, self.backoff,
                                  self.failures[op])

from __future__ import annotations

import threading

import pytest

from kvbucket.core.buffers import BufferPool, MallocTuning, empty, memory_room, tune_malloc


def test_reuses_a_released_buffer_of_the_same_size():
    pool = BufferPool(1 << 20)
    buf = pool.acquire(4096)
    assert len(buf) == 4096 and type(buf) is bytearray
    assert pool.release(buf) is True
    assert pool.stats().pooled_bytes == 4096
    again = pool.acquire(4096)
    assert again is buf
    stats = pool.stats()
    assert (stats.hits, stats.misses, stats.pooled_bytes, stats.pooled_buffers) == (1, 1, 0, 0)


def test_sizes_are_matched_exactly():
    pool = BufferPool(1 << 20)
    small = pool.acquire(1000)
    pool.release(small)
    other = pool.acquire(1001)
    assert other is not small and len(other) == 1001
    assert pool.stats().misses == 2
    assert pool.acquire(1000) is small


def test_pooled_bytes_stay_bounded_dropping_least_recently_released_sizes():
    pool = BufferPool(10_000)
    a, b, c = pool.acquire(4000), pool.acquire(4000), pool.acquire(3000)
    assert pool.release(a) and pool.release(b)
    assert pool.stats().pooled_bytes == 8000
    assert pool.release(c)  # drops one 4000-byte buffer (the oldest size class) to fit
    stats = pool.stats()
    assert stats.pooled_bytes == 7000 and stats.pooled_buffers == 2
    assert stats.pooled_bytes <= pool.max_bytes
    assert pool.acquire(3000) is c


def test_buffers_larger_than_the_pool_or_empty_are_not_kept():
    pool = BufferPool(1000)
    assert pool.release(bytearray(1001)) is False
    assert pool.release(bytearray()) is False
    assert pool.release(b"x" * 10) is False  # not a bytearray: cannot be reused
    assert pool.stats().pooled_bytes == 0


def test_acquire_zero_and_negative():
    pool = BufferPool(1000)
    assert pool.acquire(0) == bytearray()
    with pytest.raises(ValueError):
        pool.acquire(-1)
    with pytest.raises(ValueError):
        BufferPool(-1)


def test_clear_drops_everything():
    pool = BufferPool(1 << 20)
    pool.release(bytearray(100))
    pool.clear()
    assert pool.stats().pooled_bytes == 0
    assert pool.acquire(100) is not None and pool.stats().hits == 0


def test_thread_safe_accounting():
    pool = BufferPool(64 * 1024)
    sizes = [1024, 2048, 4096]
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(2000):
                n = sizes[(seed + i) % len(sizes)]
                buf = pool.acquire(n)
                assert len(buf) == n
                pool.release(buf)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stats = pool.stats()
    assert stats.hits + stats.misses == 4 * 2000
    assert 0 < stats.pooled_bytes <= pool.max_bytes
    # what is pooled matches the per-size lists exactly
    assert stats.pooled_bytes == sum(n * len(bufs) for n, bufs in pool._free.items())


def test_tune_malloc_reports_what_it_set():
    result = tune_malloc()
    if result is None:
        pytest.skip("not glibc")
    assert isinstance(result, MallocTuning)
    assert result.mmap_threshold in (1 << 30, 32 << 20)
    assert result.trim_threshold > 0
    buf = bytearray(32 << 20)  # still works after the setting
    buf[-1] = 1
    assert buf[-1] == 1


@pytest.mark.parametrize("n", [0, 1, 4095, 32 << 20])
def test_empty_is_a_writable_byte_buffer_of_exactly_n_bytes(n):
    buf = empty(n)
    assert (buf.nbytes, buf.format, buf.ndim, buf.readonly) == (n, "B", 1, False)
    buf[:] = b"\x07" * n  # every byte is the caller's to write
    assert bytes(buf[-1:]) == (b"\x07" if n else b"")


def test_memory_room_is_at_most_what_the_machine_has_available():
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) << 10 for line in f if line.startswith("MemAvailable:"))
    assert 0 < memory_room() <= available + (256 << 20)  # other processes move it meanwhile

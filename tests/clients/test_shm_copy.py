"""clients/shm.copy_hash: the copy into (and out of) the arena, and the checksum of what landed."""

from __future__ import annotations

import mmap
import os
import signal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvbucket.clients.shm import FUSED, PIECE, copy_hash
from kvbucket.core.record import checksum

EDGES = [0, 1, FUSED - 1, FUSED, FUSED + 1, (2 << 20) + 3, PIECE - 1, PIECE, PIECE + 1, 3 * PIECE + 5]


def _pairs(sizes: list[int], seed: int):
    rng = np.random.default_rng(seed)
    region = mmap.mmap(-1, max(1, sum(sizes)))  # like the arena: one shared mapping, slots side by side
    pairs, off = [], 0
    for n in sizes:
        src = rng.integers(0, 256, size=n, dtype=np.uint8)
        pairs.append((memoryview(region)[off : off + n], memoryview(src)))
        off += n
    return pairs


@pytest.mark.parametrize("n", EDGES)
def test_one_chunk_lands_whole_and_its_checksum_is_the_bytes(n):
    [(dst, src)] = pairs = _pairs([n], n)
    assert copy_hash(pairs) == [checksum(src)]
    assert dst == src


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(EDGES) | st.integers(0, 3 * PIECE), min_size=1, max_size=5), st.integers(0, 9))
def test_many_chunks_each_checksum_belongs_to_its_own_bytes(sizes, seed):
    pairs = _pairs(sizes, seed)
    sums = copy_hash(pairs)
    assert sums == [checksum(src) for _, src in pairs]
    assert all(dst == src for dst, src in pairs)


def test_a_destination_of_the_wrong_size_raises_and_the_next_call_is_whole():
    big = np.ones(2 * PIECE + 7, dtype=np.uint8)
    with pytest.raises(ValueError):
        copy_hash([(memoryview(bytearray(PIECE + 1)), memoryview(big[: PIECE + 1])),
                   (memoryview(bytearray(PIECE)), memoryview(big))])
    pairs = _pairs([2 * PIECE + 7], 1)
    assert copy_hash(pairs) == [checksum(pairs[0][1])]


@pytest.mark.parametrize("sizes", [[FUSED, FUSED], [3 * PIECE]])
def test_a_destination_that_cannot_be_written_raises_and_the_next_call_is_whole(sizes):
    # The worker copies every other chunk of a batch (here the second) and the tail of a chunk over
    # PIECE: a read-only destination fails there too, and the error reaches the caller, not a checksum.
    pairs = _pairs(sizes, 3)
    dst, src = pairs[-1]
    with pytest.raises((TypeError, ValueError), match="read-only"):
        copy_hash([*pairs[:-1], (memoryview(bytes(len(dst))), src)])
    assert copy_hash(pairs) == [checksum(s) for _, s in pairs]


def test_a_forked_child_copies_with_its_own_worker():
    # vLLM forks its worker processes: one that inherited a started worker must not wait on it forever.
    copy_hash(_pairs([FUSED, FUSED], 4))  # this process's worker is running now
    pid = os.fork()
    if pid == 0:
        signal.alarm(10)  # a hang ends the child by SIGALRM instead
        pairs = _pairs([FUSED, FUSED, 2 * PIECE + 1], 5)
        os._exit(0 if copy_hash(pairs) == [checksum(s) for _, s in pairs] else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child ended with status {status:#x}"

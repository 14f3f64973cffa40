"""clients/shm.copy_hash and stream_hash: the copy into (and out of) the arena and its checksum, and
the C copies under stream_hash (clients/_streamcopy.c): non-temporal, and copy-and-xxh3 in one pass."""

from __future__ import annotations

import mmap
import os
import shutil
import signal
import sysconfig

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvbucket.clients import shm
from kvbucket.clients.shm import FUSED, HANDOFF_MIN, PIECE, copy_hash, stream_hash
from kvbucket.core.record import checksum

EDGES = [0, 1, FUSED - 1, FUSED, FUSED + 1, HANDOFF_MIN - 1, HANDOFF_MIN, (2 << 20) + 3, PIECE - 1, PIECE, PIECE + 1,
         3 * PIECE + 5]
needs_c = pytest.mark.skipif(shm.stream_copy is None, reason="clients/_streamcopy.c is not built (no C compiler)")


def two_pass_copy_hash(pairs):
    """copy_hash as it runs where clients/_streamcopy.c is not built."""
    saved, shm.copy_xxh3 = shm.copy_xxh3, None
    try:
        return copy_hash(pairs)
    finally:
        shm.copy_xxh3 = saved


# The copies into and out of the arena: copy_hash (gets; puts where the C copy is not built), with
# and without its one-pass C copy, and stream_hash (puts).
COPIES = [
    copy_hash,
    pytest.param(two_pass_copy_hash, id="copy_hash-two-pass"),
    pytest.param(stream_hash, marks=needs_c, id="stream_hash"),
]


def test_the_non_temporal_copy_is_built_wherever_a_c_compiler_is():
    # It is optional at install; this keeps CI from passing on the numpy fallback alone.
    if shutil.which(sysconfig.get_config_var("CC").split()[0]) is None:
        pytest.skip("no C compiler here: puts copy with numpy")
    assert shm.stream_copy is not None


def _pairs(sizes: list[int], seed: int):
    rng = np.random.default_rng(seed)
    region = mmap.mmap(-1, max(1, sum(sizes)))  # like the arena: one shared mapping, slots side by side
    pairs, off = [], 0
    for n in sizes:
        src = rng.integers(0, 256, size=n, dtype=np.uint8)
        pairs.append((memoryview(region)[off : off + n], memoryview(src)))
        off += n
    return pairs


@pytest.mark.parametrize("copy", COPIES)
@pytest.mark.parametrize("n", EDGES)
def test_one_chunk_lands_whole_and_its_checksum_is_the_bytes(copy, n):
    [(dst, src)] = pairs = _pairs([n], n)
    assert copy(pairs) == [checksum(src)]
    assert dst == src


@pytest.mark.parametrize("copy", COPIES)
@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(EDGES) | st.integers(0, 3 * PIECE), min_size=1, max_size=9), st.integers(0, 9))
def test_many_chunks_each_checksum_belongs_to_its_own_bytes(copy, sizes, seed):
    pairs = _pairs(sizes, seed)
    sums = copy(pairs)
    assert sums == [checksum(src) for _, src in pairs]
    assert all(dst == src for dst, src in pairs)


@pytest.mark.parametrize("copy", COPIES)
def test_a_destination_of_the_wrong_size_raises_and_the_next_call_is_whole(copy):
    big = np.ones(2 * PIECE + 7, dtype=np.uint8)
    with pytest.raises(ValueError):
        copy([(memoryview(bytearray(PIECE + 1)), memoryview(big[: PIECE + 1])),
              (memoryview(bytearray(PIECE)), memoryview(big))])
    pairs = _pairs([2 * PIECE + 7], 1)
    assert copy(pairs) == [checksum(pairs[0][1])]


@pytest.mark.parametrize("copy", COPIES)
@pytest.mark.parametrize("sizes", [[HANDOFF_MIN, HANDOFF_MIN], [3 * PIECE]])
def test_a_destination_that_cannot_be_written_raises_and_the_next_call_is_whole(copy, sizes):
    # The worker copies chunks of a batch other than the first and the tail of a chunk over PIECE: a
    # read-only destination fails there too, and the error reaches the caller, not a checksum.
    pairs = _pairs(sizes, 3)
    dst, src = pairs[-1]
    with pytest.raises((TypeError, ValueError), match="read-only|read-write"):
        copy([*pairs[:-1], (memoryview(bytes(len(dst))), src)])
    assert copy(pairs) == [checksum(s) for _, s in pairs]


def _portable():
    from kvbucket.clients._streamcopy import _copy_xxh3_portable  # built with the extension only
    return _copy_xxh3_portable


def _copy_xxh3_nt(dst, src):
    return shm.copy_xxh3(dst, src, True)


# The C copies: the non-temporal copy, and copy-and-xxh3 with either store.
C_COPIES = [pytest.param(lambda d, s: shm.stream_copy(d, s), id="stream_copy"),
            pytest.param(lambda d, s: shm.copy_xxh3(d, s), id="copy_xxh3"),
            pytest.param(_copy_xxh3_nt, id="copy_xxh3-nontemporal")]


@needs_c
@pytest.mark.parametrize("copy", C_COPIES)
@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 63, 64, 127, 128, 129, 255, 4096 + 77])
@pytest.mark.parametrize("dst_at, src_at", [(0, 0), (1, 0), (0, 5), (17, 3), (31, 31)])
def test_c_copies_copy_every_byte_at_any_alignment_and_nothing_around(copy, n, dst_at, src_at):
    # Non-temporal stores need a 32-byte aligned destination: the head up to it and the tail under a
    # block go by memcpy (stream_copy), or the whole copy takes ordinary stores (copy_xxh3), whatever
    # the offsets and length; copy_xxh3's checksum is the bytes' all the same.
    rng = np.random.default_rng(n)
    src = rng.integers(0, 256, size=n + src_at, dtype=np.uint8)
    region = np.full(n + dst_at + 64, 0xAB, dtype=np.uint8)
    got = copy(memoryview(region)[dst_at : dst_at + n], memoryview(src)[src_at:])
    assert bytes(region[dst_at : dst_at + n]) == bytes(src[src_at:])
    assert (region[:dst_at] == 0xAB).all() and (region[dst_at + n :] == 0xAB).all()
    assert got is None or got == checksum(src[src_at:])


@needs_c
@pytest.mark.parametrize("copy", C_COPIES)
def test_c_copies_refuse_what_they_cannot_copy(copy):
    with pytest.raises(ValueError, match="destination of 3 bytes for a source of 4"):
        copy(bytearray(3), b"abcd")
    with pytest.raises(TypeError, match="read-write"):
        copy(b"abcd", b"abcd")
    with pytest.raises(TypeError):
        copy(np.zeros((4, 4), dtype=np.uint8)[:, :2], bytes(8))  # not contiguous


# Every length class of XXH3-64 (empty, 1-3, 4-8, 9-16, 17-128, 129-240, then blocks of 1024 bytes
# with a last block of 1-1024 and a last stripe that overlaps it), and the sizes puts copy.
XXH3_LENGTHS = [*range(0, 260), 1023, 1024, 1025, 1087, 1088, 1089, 2047, 2048, 2049, 4096 + 77, FUSED + 1,
                (2 << 20) + 3]


@needs_c
@pytest.mark.parametrize("walk", ["copy_xxh3", "copy_xxh3-nontemporal", "portable"])
def test_copy_xxh3_is_the_xxh3_of_the_bytes_it_copies_at_every_length(walk):
    # Written from the XXH3 specification: it must agree with the xxhash package (the checksum every
    # tier and reader compares) at every length, whichever walk the CPU takes.
    rng = np.random.default_rng(7)
    for n in XXH3_LENGTHS:
        src = rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
        region = mmap.mmap(-1, n + 64)  # page aligned, so the non-temporal stores are taken
        region[:] = b"\xab" * (n + 64)
        dst = memoryview(region)[32 : 32 + n]
        if walk == "portable":
            got = _portable()(dst, src)
        else:
            got = shm.copy_xxh3(dst, src, walk.endswith("nontemporal"))
        assert got == checksum(src), f"{walk}: {n} bytes"
        assert dst == src and region[:32] == region[32 + n :] == b"\xab" * 32, f"{walk}: {n} bytes"
        del dst
        region.close()


@needs_c
@pytest.mark.parametrize("walk", ["copy_xxh3", "portable"])
@pytest.mark.parametrize("n", [100, 240, 241, 1024, 1025, 5000, FUSED + 7])
def test_copy_xxh3_copies_only_up_to_copy_len_and_hashes_all_of_the_source(walk, n):
    # A put splits a chunk with the worker: this thread copies the head and hashes the whole source;
    # the worker copies the rest. Every cut, including inside a stripe, the last stripe and a block.
    fn = shm.copy_xxh3 if walk == "copy_xxh3" else _portable()
    src = np.random.default_rng(n).integers(0, 256, size=n, dtype=np.uint8).tobytes()
    for cut in sorted({0, 1, 63, 64, 65, 1000, 1024, n // 2, n - 65, n - 64, n - 1, n} & set(range(n + 1))):
        dst = bytearray(b"\xab" * n)
        assert fn(dst, src, True, cut) == checksum(src), f"copy_len {cut}"
        assert dst[:cut] == src[:cut] and dst[cut:] == b"\xab" * (n - cut), f"copy_len {cut}"


@needs_c
def test_copy_xxh3_refuses_a_copy_len_past_the_source():
    with pytest.raises(ValueError, match="copy_len 5 for a source of 4 bytes"):
        shm.copy_xxh3(bytearray(4), b"abcd", False, 5)


@pytest.mark.parametrize("copy", COPIES)
def test_a_forked_child_copies_with_its_own_worker(copy):
    # vLLM forks its worker processes: one that inherited a started worker must not wait on it forever.
    copy(_pairs([HANDOFF_MIN, HANDOFF_MIN], 4))  # this process's worker is running now
    pid = os.fork()
    if pid == 0:
        signal.alarm(10)  # a hang ends the child by SIGALRM instead
        pairs = _pairs([HANDOFF_MIN, HANDOFF_MIN, 2 * PIECE + 1], 5)
        os._exit(0 if copy(pairs) == [checksum(s) for _, s in pairs] else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child ended with status {status:#x}"

"""server/arena.py: the first-fit allocator, and slots that return when their last reference goes."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvbucket.core import catalog
from kvbucket.core.codecs import Codec
from kvbucket.core.record import Record, RecordHeader
from kvbucket.server.arena import PAGE, Arena, Extents, round_up


def _check(e: Extents) -> None:
    """Both views of the free extents agree; none overlap or touch (they would have merged)."""
    assert e._by_size == sorted((e._len[s], s) for s in e._starts)
    assert sorted(e._len) == e._starts
    assert all(a + e._len[a] < b for a, b in zip(e._starts, e._starts[1:]))


def test_splits_and_coalesces_both_sides():
    e = Extents(0, 10 * PAGE)
    a, b, c, d = e.alloc(PAGE), e.alloc(2 * PAGE), e.alloc(PAGE), e.alloc(PAGE)
    assert (a, b, c, d) == (0, PAGE, 3 * PAGE, 4 * PAGE)
    e.free(a)
    e.free(c)
    assert e.alloc(3 * PAGE) == 5 * PAGE  # neither one-page hole fits
    e.free(b)  # merges with a and c: one hole of 4 pages at 0
    assert e.largest_free == 4 * PAGE
    assert e.alloc(4 * PAGE) == 0
    _check(e)


def test_the_smallest_hole_that_fits_is_taken_lowest_first():
    e = Extents(0, 12 * PAGE)
    offs = [e.alloc(PAGE) for _ in range(12)]
    for i in (1, 2, 3, 5, 6, 8, 9, 11):  # holes: 3 pages at 1, 2 at 5, 2 at 8, 1 at 11
        e.free(offs[i])
    _check(e)
    assert e.alloc(2 * PAGE) == 5 * PAGE  # first fit would split the 3-page hole at 1
    assert e.alloc(2 * PAGE) == 8 * PAGE
    assert e.alloc(PAGE) == 11 * PAGE
    assert e.alloc(PAGE) == PAGE  # only the 3-page hole is left: split from its start
    assert e.largest_free == 2 * PAGE
    _check(e)


def test_sizes_round_up_to_pages_and_full_is_none():
    e = Extents(0, 2 * PAGE)
    assert e.alloc(1) == 0 and e.alloc(PAGE + 1) is None and e.alloc(PAGE) == PAGE
    assert e.alloc(1) is None
    with pytest.raises(KeyError):
        e.free(123)  # never allocated


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 5)), max_size=60))
def test_random_alloc_free_never_overlaps_and_frees_everything(ops):
    e = Extents(0, 32 * PAGE)
    live: dict[int, int] = {}
    for do_alloc, pages in ops:
        if do_alloc or not live:
            off = e.alloc(pages * PAGE)
            if off is not None:
                assert all(off + pages * PAGE <= o or o + n <= off for o, n in live.items())
                live[off] = pages * PAGE
        else:
            e.free(live.popitem()[0])
        assert e.free_bytes == 32 * PAGE - sum(live.values())  # the running count matches
        assert e.used_bytes == sum(live.values()) and e.slots == len(live)
        _check(e)
    for off in list(live):
        e.free(off)
    assert e.used_bytes == 0 and e.largest_free == 32 * PAGE


@pytest.fixture
def arena(tmp_path):
    a = Arena(8 * PAGE, tmp_path)
    yield a
    a.close()


def test_a_slot_returns_when_its_last_view_goes(arena):
    view = arena.slot(3 * PAGE)
    off = arena.offset_of(view)
    assert off == PAGE + round_up(catalog.table_bytes(arena.catalog_buckets))  # the header page, the catalog
    rec = Record(RecordHeader(Codec.NONE, "uint8", (3 * PAGE,), 3 * PAGE, 3 * PAGE, 0, 1), memoryview(view))
    del view
    assert arena.stats().slots == 1  # the record's memoryview still holds it
    assert arena.offset_of(rec.payload) == off
    del rec
    assert arena.stats().slots == 0 and arena.stats().used_bytes == 0


def test_full_arena_gives_none_and_foreign_buffers_are_not_slots(arena):
    views = [arena.slot(2 * PAGE) for _ in range(4)]
    assert arena.slot(1) is None
    assert arena.offset_of(memoryview(bytearray(10))) is None
    assert arena.offset_of(np.zeros(4, np.uint8)) is None
    del views
    gc.collect()
    assert arena.slot(8 * PAGE) is not None


def test_only_a_live_slot_view_or_a_whole_memoryview_of_one_has_an_offset(arena):
    view = arena.slot(2 * PAGE)
    off = arena.offset_of(view)
    assert arena.offset_of(memoryview(view)) == off
    assert arena.offset_of(memoryview(view)[:PAGE]) is None  # part of a slot
    assert arena.offset_of(view[:PAGE]) is None and arena.offset_of(view.view(np.int8)) is None
    # offsets are found by the view's id(): a view freed and an array made in its place (CPython
    # hands out the same address, so the same id, at once) must not pass for the freed slot
    reused = 0
    for _ in range(50):
        dead = id(view)
        del view
        other = np.frombuffer(bytearray(2 * PAGE), dtype=np.uint8)
        reused += id(other) == dead
        assert arena.offset_of(other) is None and arena.offset_of(memoryview(other)) is None
        del other
        view = arena.slot(2 * PAGE)
        assert arena.offset_of(view) == off  # the freed extent, first fit
    assert reused  # the case above happened (else this test shows nothing)
    del view
    assert arena.stats().slots == 0


def test_the_file_carries_magic_and_nonce(arena):
    head = arena.path.read_bytes()[:16]
    assert head[:8] == b"KVBSHM01" and int.from_bytes(head[8:], "little") == arena.nonce


def test_arenas_of_dead_daemons_are_removed_at_start(tmp_path):
    import subprocess
    import sys

    from kvbucket.server.arena import Arena

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"kvbucket-{int(dead.stdout)}-00000000000000aa"
    stale.write_bytes(b"left by kill -9")
    live = tmp_path / f"kvbucket-{os.getppid()}-00000000000000bb"  # a running process's arena stays
    live.write_bytes(b"in use")
    arena = Arena(1 << 20, directory=tmp_path, reserve=False)
    try:
        assert not stale.exists() and live.exists()
    finally:
        arena.close()

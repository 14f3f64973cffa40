"""server/gcfreeze.py: full collections timed, their survivors frozen, and everything handed back."""

from __future__ import annotations

import gc

import pytest
from prometheus_client import CollectorRegistry

from kvbucket.server.gcfreeze import FullCollections


@pytest.fixture
def registry():
    gc.collect()  # start from an empty permanent generation, whatever ran before
    yield CollectorRegistry()
    gc.unfreeze()


def _held(n: int) -> list:
    return [[i] for i in range(n)]  # lists: tracked by the collector, as index entries are


def test_a_full_collection_freezes_what_survived_it(registry):
    fc = FullCollections(registry)
    fc.install()
    try:
        kept = _held(50_000)
        gc.collect()
        assert gc.get_freeze_count() >= len(kept)
        assert registry.get_sample_value("kvbucket_gc_freezes_total") >= 1
        assert registry.get_sample_value("kvbucket_gc_full_collection_seconds_count") >= 1
        young = gc.get_count()[0]
        gc.collect()  # walks only what came after the freeze
        assert gc.get_freeze_count() >= len(kept) and young < len(kept)
    finally:
        fc.uninstall()
    assert gc.get_freeze_count() == 0  # handed back to the collector
    assert fc._callback not in gc.callbacks


def test_frozen_objects_dropped_without_a_cycle_are_still_freed(registry):
    import weakref

    class Entry:
        pass

    fc = FullCollections(registry)
    fc.install()
    try:
        e = Entry()
        ref = weakref.ref(e)
        gc.collect()
        assert gc.get_freeze_count() > 0
        del e  # reference counting frees it: no collection needed
        assert ref() is None
    finally:
        fc.uninstall()


def test_without_freeze_pauses_are_still_timed(registry):
    fc = FullCollections(registry, freeze=False)
    fc.install()
    try:
        gc.collect()
        gc.collect()
        assert gc.get_freeze_count() == 0
        assert registry.get_sample_value("kvbucket_gc_full_collection_seconds_count") >= 2
        assert registry.get_sample_value("kvbucket_gc_freezes_total") == 0
    finally:
        fc.uninstall()


def test_young_collections_are_not_counted(registry):
    fc = FullCollections(registry)
    fc.install()
    try:
        gc.collect(0)
        gc.collect(1)
        assert registry.get_sample_value("kvbucket_gc_full_collection_seconds_count") == 0
        assert gc.get_freeze_count() == 0
    finally:
        fc.uninstall()

"""flashsale.heap: the collector set for a server process still collects reference cycles."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from flashsale.heap import OLDER_COLLECTION_RATIO, YOUNG_COLLECTION_OBJECTS, settle_heap


@pytest.fixture
def settled() -> Iterator[None]:
    threshold = gc.get_threshold()
    settle_heap()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_what_exists_at_start_is_frozen_and_young_collections_are_rarer(settled: None):
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (YOUNG_COLLECTION_OBJECTS, OLDER_COLLECTION_RATIO, OLDER_COLLECTION_RATIO)


def test_a_cycle_made_after_start_is_collected_within_the_young_bound(settled: None):
    gone = _cycle()
    keep = [[] for _ in range(YOUNG_COLLECTION_OBJECTS + 1)]  # net new containers: one collection
    assert gone() is None
    assert len(keep) == YOUNG_COLLECTION_OBJECTS + 1


def test_an_object_frozen_at_start_is_still_freed_by_reference_counting():
    threshold = gc.get_threshold()
    node = _Node()
    gone = weakref.ref(node)
    settle_heap()
    try:
        del node
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)

"""freeze_startup_heap: start-up objects leave the cyclic collector's passes, start-up garbage does not stay."""

from __future__ import annotations

import gc
import weakref

from conveyor.consumer.worker import freeze_startup_heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


def test_objects_alive_at_the_call_are_frozen_and_garbage_is_collected_first() -> None:
    kept = _Node()
    dropped = _Node()
    gone = weakref.ref(dropped)
    del dropped
    try:
        freeze_startup_heap()
        assert gone() is None  # collected before freezing, not kept for good
        assert gc.get_freeze_count() > 0
        assert not any(obj is kept for obj in gc.get_objects())  # out of the collector's passes
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual
    assert any(obj is kept for obj in gc.get_objects())

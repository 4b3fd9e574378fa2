"""Which outcome an exception means: remembered per exception type, never different from the table."""

from __future__ import annotations

import itertools

import pytest

from conveyor.common.clock import SystemClock
from conveyor.common.errors import (
    CircuitOpen,
    JobCancelled,
    JobTimeout,
    MalformedMessage,
    PermanentError,
    RejectedMessage,
    RetryableError,
)
from conveyor.common.jobs.outcome import OutcomeKind
from conveyor.common.jobs.registry import JobRegistry
from conveyor.consumer import processor as processor_module
from conveyor.consumer.payloads import PayloadResolver
from conveyor.consumer.processor import _CLASSIFICATION, Processor
from conveyor.schemas.registry import SchemaTooNew


def _processor() -> Processor:
    return Processor(registry=JobRegistry(), middlewares=[], payloads=PayloadResolver.for_store(None),
                     clock=SystemClock(), worker_id="w", max_message_bytes=1 << 20)


def _by_table(error: type[BaseException]) -> tuple[OutcomeKind, str | None]:
    return next((kind, reason) for base, kind, reason in _CLASSIFICATION if isinstance(error("x"), base))


class _SubPermanent(PermanentError):
    pass


class _SubRetryable(RetryableError):
    pass


class _SubTimeout(JobTimeout, ValueError):
    pass


KINDS: list[type[Exception]] = [
    Exception, ValueError, KeyError, ConnectionError, RetryableError, _SubRetryable, PermanentError, _SubPermanent,
    JobTimeout, _SubTimeout, RejectedMessage, MalformedMessage, SchemaTooNew, JobCancelled, CircuitOpen,
]


@pytest.mark.parametrize("order", [KINDS, KINDS[::-1], KINDS[1::2] + KINDS[::2]])
def test_each_exception_type_gets_the_tables_first_match_whatever_came_before(order: list[type[Exception]]) -> None:
    """A subclass asked after its base (and the other way round) must not inherit a remembered answer."""
    processor = _processor()
    for error in order * 2:  # the second time from memory
        assert processor._classification(error) == _by_table(error), error


def test_exception_classes_made_on_the_fly_do_not_grow_the_memory_without_bound() -> None:
    processor = _processor()
    made = [type(f"Made{i}", (PermanentError if i % 2 else ValueError,), {}) for i in range(1000)]
    for error in itertools.chain(made, made):
        assert processor._classification(error) == _by_table(error)
    assert len(processor._classes) == processor_module._REMEMBERED_CLASSES

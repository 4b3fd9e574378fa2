"""``due_timestamp``: the due time a message carries, read for every job's start-delay metric.

A forged or broken header must never fail the job nor skew the metric: anything that is not a
time a datetime can hold reads as absent (the worker then measures from ``created_at``)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from conveyor.common.headers import DUE_AT, due_timestamp, format_due_at


def test_what_the_producer_writes_reads_back_to_the_millisecond() -> None:
    moment = datetime(2026, 12, 4, 22, 30, 1, 234_567, tzinfo=UTC)
    assert due_timestamp({DUE_AT: format_due_at(moment)}) == pytest.approx(moment.timestamp(), abs=0.001)


def test_no_header_is_none() -> None:
    assert due_timestamp({}) is None


@pytest.mark.parametrize("raw", ["", "soon", "nan", "NaN", "inf", "-inf", "1e400", "1" * 400, "1e12", "-1e12", "0x10"])
def test_a_header_that_is_not_a_time_reads_as_absent(raw: str) -> None:
    assert due_timestamp({DUE_AT: raw}) is None


@pytest.mark.parametrize("raw", ["0", "-86400.5", " 1796423391.652 ", "253402300799"])
def test_any_time_a_datetime_holds_is_read(raw: str) -> None:
    assert due_timestamp({DUE_AT: raw}) == float(raw)

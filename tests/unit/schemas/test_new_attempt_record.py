"""``new_attempt_record`` (settlement's way to record a finished attempt on every retry copy) and
``Envelope.next_attempt``/``with_history`` (the copy itself) agree with ``AttemptRecord(...)`` and
``model_copy`` for every input, and refuse what they refuse."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from conveyor.common.codec import decode_envelope, encode_model
from conveyor.schemas.envelope import MAX_HISTORY, AttemptRecord, new_attempt_record, new_envelope

NOW = datetime(2026, 12, 5, 1, 2, 3, 456789, tzinfo=UTC)
BASE: dict[str, Any] = dict(attempt=1, worker_id="host-1:42", started_at=NOW, finished_at=NOW + timedelta(seconds=1),
                            outcome="retried", error_type="RetryableError", error_message="fails once")

ACCEPTED: list[dict[str, Any]] = [
    {},
    {"error_type": None, "error_message": None},
    {"outcome": "timeout"}, {"outcome": "deferred"}, {"outcome": "failed"}, {"outcome": "rejected"},
    {"attempt": 10_000, "worker_id": "w" * 128, "error_type": "E" * 200, "error_message": "m" * 1000},
    {"worker_id": "", "error_type": "", "error_message": "é\u2028\n\"\\<>"},
    {"started_at": datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=5, minutes=30)))},
    {"attempt": 2.0},  # JSON's 2.0: the schema takes it as 2, so the fast path steps aside
    {"outcome": type("Str", (str,), {})("retried")},  # a str subclass: validated, comes out a str
]

REFUSED: list[dict[str, Any]] = [
    {"attempt": 0}, {"attempt": 10_001}, {"attempt": True}, {"attempt": "1"},
    {"worker_id": "w" * 129}, {"worker_id": None},
    {"started_at": datetime(2026, 1, 1)}, {"finished_at": "2026-01-01T00:00:00"},
    {"outcome": "succeeded"}, {"outcome": None},
    {"error_type": "E" * 201}, {"error_message": "m" * 1001}, {"error_message": 5},
]


@pytest.mark.parametrize("changes", ACCEPTED)
def test_the_same_record_as_validating_every_field(changes: dict[str, Any]) -> None:
    fields = {**BASE, **changes}
    built, validated = new_attempt_record(**fields), AttemptRecord(**fields)
    assert built == validated
    assert built.model_fields_set == validated.model_fields_set
    assert encode_model(built) == encode_model(validated)
    assert type(built.outcome) is str and type(built.attempt) is int


@pytest.mark.parametrize("changes", REFUSED)
def test_refuses_what_the_record_refuses(changes: dict[str, Any]) -> None:
    fields = {**BASE, **changes}
    with pytest.raises(ValidationError):
        AttemptRecord(**fields)
    with pytest.raises(ValidationError):
        new_attempt_record(**fields)


def test_a_retry_copy_is_the_model_copy_it_replaces_up_to_a_full_history() -> None:
    envelope = new_envelope(job_id="j-1", job_type="email.send", schema_version=1, created_at=NOW,
                            data={"to": "a"}, headers={"h": "v"})
    for n in range(1, MAX_HISTORY + 5):
        record = new_attempt_record(**{**BASE, "attempt": n})
        history = (*envelope.history, record)[-MAX_HISTORY:]
        expected = envelope.model_copy(update={"attempt": envelope.attempt + 1, "history": history})
        copy = envelope.next_attempt(record)
        assert copy == expected and copy.model_fields_set == expected.model_fields_set
        assert encode_model(copy) == encode_model(expected)
        assert decode_envelope(encode_model(copy)) == copy  # what the next worker reads, strictly
        assert envelope.attempt == n and len(envelope.history) == min(n - 1, MAX_HISTORY)  # the original unchanged
        envelope = copy
    assert len(envelope.history) == MAX_HISTORY and envelope.history[-1].attempt == MAX_HISTORY + 4
    deferred = envelope.with_history(new_attempt_record(**{**BASE, "outcome": "deferred"}))
    assert deferred == envelope.model_copy(update={"history": (*envelope.history, deferred.history[-1])[-MAX_HISTORY:]})
    assert deferred.attempt == envelope.attempt and deferred.history[-1].outcome == "deferred"

"""``new_envelope`` (the producer's way to build a new job's envelope) and ``encode_envelope``
(its JSON) agree with ``Envelope(...)`` and ``encode_model`` for every input, and refuse what
they refuse."""

from __future__ import annotations

import decimal
import uuid
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import pytest
from pydantic import ValidationError

from conveyor.common.codec import decode_envelope, encode_envelope, encode_model
from conveyor.schemas.envelope import AttemptRecord, Envelope, InlinePayload, PayloadReference, new_envelope


class _Str(str):
    pass


class _NoOffset(tzinfo):
    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None


NOW = datetime(2026, 12, 5, 1, 2, 3, 456789, tzinfo=UTC)
BASE: dict[str, Any] = dict(job_id="0b6f7f3c-0f43-4c11-9f38-2a3f3c0e1d2e", job_type="email.send", schema_version=1,
                            created_at=NOW, data={"to": "a@example.com"}, headers={})

ACCEPTED: list[dict[str, Any]] = [
    {},
    {"idempotency_key": "order-17", "correlation_id": "req:9/a@b", "causation_id": "c.1"},
    {"deadline": NOW + timedelta(minutes=5)},
    {"deadline": datetime(2027, 1, 1, tzinfo=timezone(timedelta(hours=-3, minutes=-30)))},
    {"created_at": datetime(2026, 1, 1, tzinfo=timezone(timedelta(0)))},
    {"created_at": datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=5)))},
    {"headers": {"conveyor.producer-version": "v1.2.3", "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}},
    {"headers": {f"h{i}": "v" * 1024 for i in range(64)}},
    {"schema_version": 10_000, "job_type": "a" * 128},
    {"data": {"f": [0.1, 1e-7, 1e22, -0.0, 5e-324, 2**53 - 1], "s": "é\u2028<>&\"\\", "n": None, "b": True,
              "nested": {"deep": [[{"x": 1}]]}, "when": datetime(2026, 1, 1, tzinfo=UTC)}},
    {"data": {}},
    {"job_id": "x" * 128},
]

REFUSED: list[dict[str, Any]] = [
    {"job_type": "Email.send"},
    {"job_type": "email.send\n"},
    {"job_type": "a" * 129},
    {"job_id": "has space"},
    {"job_id": "x" * 129},
    {"idempotency_key": "line\n"},
    {"correlation_id": "é"},
    {"causation_id": ""},
    {"schema_version": 0},
    {"schema_version": 10_001},
    {"schema_version": True},
    {"created_at": datetime(2026, 1, 1)},  # naive
    {"deadline": datetime(2026, 1, 1)},
    {"headers": {"bad name": "v"}},
    {"headers": {"h": "v" * 1025}},
    {"headers": {f"h{i}": "v" for i in range(65)}},
    {"headers": {"h": 1}},
    {"data": {1: "non-string key"}},
    {"data": {"ok": 1, ("a",): "a tuple key after a good one"}},
    # what the remembered job-type verdicts and the UTC shortcut must not let through
    {"job_type": 5},
    {"job_type": ["email.send"]},  # unhashable: never reaches the cache
    {"job_type": _Str("Email.send")},
    {"causation_id": 5},
    {"created_at": datetime(2026, 1, 1, tzinfo=_NoOffset())},  # a tzinfo without an offset is naive
]


def _validated(fields: dict[str, Any]) -> Envelope:
    job_id = fields["job_id"]
    return Envelope(
        job_id=job_id, idempotency_key=fields.get("idempotency_key") or job_id, job_type=fields["job_type"],
        schema_version=fields["schema_version"], correlation_id=fields.get("correlation_id") or job_id,
        causation_id=fields.get("causation_id"), created_at=fields["created_at"], deadline=fields.get("deadline"),
        headers=fields["headers"], payload=InlinePayload(data=fields["data"]),
    )


@pytest.mark.parametrize("changes", ACCEPTED)
def test_the_same_envelope_and_json_as_validating_every_field(changes: dict[str, Any]) -> None:
    fields = {**BASE, **changes}
    built, validated = new_envelope(**fields), _validated(fields)
    assert built == validated
    assert built.model_fields_set == validated.model_fields_set
    assert built.payload.model_fields_set == validated.payload.model_fields_set
    assert built.model_dump() == validated.model_dump()
    assert encode_envelope(built) == encode_model(validated) == encode_model(built)
    assert decode_envelope(encode_envelope(built)).job_id == built.job_id  # what a worker reads, strictly


@pytest.mark.parametrize("changes", REFUSED)
def test_refuses_what_the_envelope_refuses(changes: dict[str, Any]) -> None:
    fields = {**BASE, **changes}
    with pytest.raises(ValidationError):
        _validated(fields)
    with pytest.raises(ValidationError):
        new_envelope(**fields)


@pytest.mark.parametrize("job_type", ["email.send", "Email.send", "email.send\n"])
def test_a_remembered_job_type_verdict_is_the_envelopes_every_time(job_type: str) -> None:
    fields = {**BASE, "job_type": job_type}
    verdicts = []
    for _ in range(3):  # the first call decides, the later ones remember: all must agree
        try:
            new_envelope(**fields)
            verdicts.append(True)
        except ValidationError:
            verdicts.append(False)
    try:
        _validated(fields)
        expected = True
    except ValidationError:
        expected = False
    assert verdicts == [expected] * 3


def test_a_fresh_job_id_is_a_uuid4_and_the_envelope_the_validated_one() -> None:
    first, second = new_envelope(**{**BASE, "job_id": None}), new_envelope(**{**BASE, "job_id": None})
    assert first.job_id != second.job_id
    assert uuid.UUID(first.job_id).version == 4
    assert first.idempotency_key == first.correlation_id == first.job_id
    validated = _validated({**BASE, "job_id": first.job_id})
    assert first == validated and encode_envelope(first) == encode_model(validated)


def test_a_fresh_envelope_is_as_frozen_as_a_validated_one() -> None:
    built = new_envelope(**BASE)
    with pytest.raises(ValidationError):
        built.attempt = 2  # type: ignore[misc]
    assert built.next_attempt(_record()).attempt == 2
    assert built.model_copy(update={"attempt": 3}).attempt == 3


def _record() -> AttemptRecord:
    return AttemptRecord(attempt=1, worker_id="w", started_at=NOW, finished_at=NOW, outcome="retried")


@pytest.mark.parametrize(
    "envelope",
    [
        # what orjson cannot write as pydantic does goes through pydantic-core, unchanged
        new_envelope(**{**BASE, "data": {"amount": decimal.Decimal("1.10"), "id": uuid.UUID(int=5), "tags": {"a"}}}),
        new_envelope(**{**BASE, "data": {"big": 2**70, "nested": {3: "int key"}}}),
        new_envelope(**{**BASE, "data": {"big": 2**70}}).next_attempt(_record()),  # a copy too, history and all
        Envelope(job_id="j", idempotency_key="j", job_type="t", schema_version=1, correlation_id="j", created_at=NOW,
                 payload=PayloadReference(store="s3", bucket="b", key="k", sha256="0" * 64, size=1)),
    ],
)
def test_encode_envelope_falls_back_to_pydantic_for_anything_else(envelope: Envelope) -> None:
    assert encode_envelope(envelope) == encode_model(envelope)


@pytest.mark.parametrize(
    "records",
    [
        [dict(outcome="retried")],
        [dict(outcome="timeout", error_type="TimeoutError", error_message="é\u2028\n\"\\<>&\x01\x7f")],
        [dict(outcome="deferred", error_type=None, error_message=None, worker_id="w" * 128)],
        [dict(started_at=datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
              finished_at=datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=timezone(timedelta(hours=-3))))],
        [dict(started_at=datetime(1, 1, 1, tzinfo=UTC), finished_at=datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))],
        [dict(attempt=n, outcome="retried") for n in range(1, 31)],  # a full history, and past it
    ],
)
def test_a_retry_copy_with_its_history_is_written_as_pydantic_writes_it(records: list[dict[str, Any]]) -> None:
    """encode_envelope writes every retry copy (settlement): its attempt history too."""
    envelope = new_envelope(**{**BASE, "data": {"f": [0.1, 1e22, -0.0], "s": "é\u2028", "n": None}})
    for changes in records:
        fields = {"attempt": 1, "worker_id": "w", "started_at": NOW, "finished_at": NOW, "outcome": "retried",
                  "error_type": "RetryableError", "error_message": "once", **changes}
        envelope = envelope.next_attempt(AttemptRecord(**fields))
    assert envelope.history
    assert encode_envelope(envelope) == encode_model(envelope)
    assert decode_envelope(encode_envelope(envelope)) == envelope

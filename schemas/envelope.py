"""The job envelope: everything a worker needs to run, retry and account for one job.

The envelope is frozen and versioned by ``envelope_version``; the job's own payload is
versioned separately by ``job_type`` + ``schema_version`` (see ``schemas.registry``).
Unknown fields are rejected so a typo or a smuggled field never passes silently.

The exported JSON Schema (``schemas/json/envelope.v1.json``) and this model are one contract:
whatever one accepts the other accepts (a differential test holds them to it). So integers
take ``2.0`` (JSON has one number type; JSON Schema's ``integer`` takes it) but never ``true``;
date-times are RFC 3339 strings only (the schema states the pattern, and the worker does not
take the other spellings pydantic would parse, nor Unix timestamps); a payload names its
``kind``; header names are checked like every other name.
"""

from __future__ import annotations

import os
import re
from collections import deque
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, WithJsonSchema

__all__ = [
    "ENVELOPE_VERSION",
    "AttemptRecord",
    "Envelope",
    "InlinePayload",
    "JOB_TYPE_PATTERN",
    "MAX_DEPTH",
    "MAX_HISTORY",
    "MAX_SCHEMA_VERSION",
    "Payload",
    "PayloadReference",
    "RFC3339_PATTERN",
    "Timestamp",
    "new_attempt_record",
    "new_envelope",
    "new_job_id",
]

ENVELOPE_VERSION: Final = 1  # Final: typed Literal[1], the Envelope field's default
MAX_HISTORY = 50  # bounded so a job that bounced many times cannot outgrow the size limit
# Levels of nesting (objects and arrays) in one message, the envelope's own three included:
# every copy re-encodes the message, and the encoders stop near 255 levels (.NET's readers at 64).
MAX_DEPTH = 64
WIRE_RULES = (
    f"A message is one JSON object in I-JSON (RFC 7493): UTF-8 without lone surrogates, no "
    f"duplicate object keys, no NaN or infinity, integers within +-(2**53-1), nested at most "
    f"{MAX_DEPTH} levels (the envelope's own levels included). Its content type is "
    f"application/json or unset, its content encoding identity or unset. Patterns are ECMA-262 "
    f"regular expressions: '$' matches only at the very end of the string."
)



def _whole_number(value: Any) -> Any:
    """``2.0`` is the integer 2 (JSON has one number type); ``true`` is no number at all."""
    if type(value) is float and value.is_integer():
        return int(value)
    if type(value) is bool:  # a Literal[1] would take it as 1
        raise ValueError("a boolean is not an integer")
    return value


WholeNumber = BeforeValidator(_whole_number)

Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:@/-]{1,128}$")]
JOB_TYPE_PATTERN = r"^[a-z][a-z0-9_.-]{0,127}$"
JobType = Annotated[str, StringConstraints(pattern=JOB_TYPE_PATTERN)]
MAX_SCHEMA_VERSION = 10_000  # and of attempts: ``Count``
HEADER_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
HeaderName = Annotated[str, StringConstraints(pattern=HEADER_NAME_PATTERN)]
HeaderValue = Annotated[str, StringConstraints(max_length=1024)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
# Strict: "1" is not an attempt number; a producer sending strings for counters is broken.
Count = Annotated[int, Field(strict=True, ge=1, le=MAX_SCHEMA_VERSION), WholeNumber]  # 2.0 first, then strict

# RFC 3339 date-time (§5.6), years 0001-9999, no leap second: what Python's datetime can hold.
# ASCII digits only ([0-9], not \d: Unicode digits in some regex engines).
RFC3339_PATTERN = (
    r"^([0-9]{3}[1-9]|[0-9]{2}[1-9][0-9]|[0-9][1-9][0-9]{2}|[1-9][0-9]{3})"
    r"-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?"
    r"([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
_RFC3339 = re.compile(RFC3339_PATTERN.removeprefix("^").removesuffix("$"), re.ASCII)


def _rfc3339(value: Any) -> Any:
    """A date-time from the wire is an RFC 3339 string; ``datetime`` objects come from Python."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or _RFC3339.fullmatch(value) is None:
        raise ValueError("a date-time must be an RFC 3339 string with an offset")
    return value


# Still checked by pydantic afterwards: a day the month does not have is refused (the schema's
# "format": "date-time" says the same to validators that assert formats).
Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": RFC3339_PATTERN}),
]


def _kind_required(schema: dict[str, Any]) -> None:
    """The discriminator is required on the wire (the Python default is a convenience only)."""
    schema["required"] = ["kind", *schema.get("required", [])]
    schema["properties"]["kind"].pop("default", None)


def new_job_id() -> str:
    """A random, URL-safe job id; uuid4 so ids from many producers never collide.

    The same string as ``str(uuid.uuid4())``, from the same source (``os.urandom``), built
    without the ``UUID`` object (whose constructor costs about as much as validating the whole
    envelope) and without a system call per id: see ``_JobIdPool``.
    """
    return _job_ids.take()


class _JobIdPool:
    """uuid4 strings made 256 at a time from one ``os.urandom`` read.

    ``os.urandom`` is a system call, and CPython lets go of the GIL around it: in a process
    whose broker client calls back from its own threads (pulsar-client does, for every send
    receipt), each call is a chance for those threads to take the interpreter, and a publish
    waits for them. One read per 256 ids removes that from the publish path. ``popleft`` and
    ``extend`` are atomic, so threads never get the same id; a forked child starts with an empty
    pool, so parent and child never share ids either.
    """

    __slots__ = ("_ready",)
    BATCH = 256

    def __init__(self) -> None:
        self._ready: deque[str] = deque()

    def take(self) -> str:
        while True:
            try:
                return self._ready.popleft()
            except IndexError:  # empty, or emptied by another thread since the refill
                self._ready.extend(_uuid4_strings(os.urandom(16 * self.BATCH)))

    def forget(self) -> None:
        self._ready.clear()


def _uuid4_strings(raw: bytes) -> list[str]:
    ids = bytearray(raw)
    ids[6::16] = bytes((b & 0x0F) | 0x40 for b in ids[6::16])  # version 4
    ids[8::16] = bytes((b & 0x3F) | 0x80 for b in ids[8::16])  # RFC 4122 variant
    h = ids.hex()
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-{h[i + 20:i + 32]}"
            for i in range(0, len(h), 32)]


_job_ids = _JobIdPool()
os.register_at_fork(after_in_child=_job_ids.forget)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class InlinePayload(_Frozen):
    """A small payload carried inside the message."""

    model_config = ConfigDict(json_schema_extra=_kind_required)

    kind: Literal["inline"] = "inline"
    data: dict[str, Any]


class PayloadReference(_Frozen):
    """A claim check: where a large payload lives in an object store, and how to verify it.

    Structured on purpose, never a free-form URL, so a consumer can check the store, bucket
    and key against its allow-list before it makes any request.
    """

    model_config = ConfigDict(json_schema_extra=_kind_required)

    kind: Literal["ref"] = "ref"
    store: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
    bucket: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    key: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    sha256: Sha256Hex
    size: Annotated[int, Field(strict=True, ge=0, le=5 * 1024**3), WholeNumber]
    content_type: Literal["application/json"] = "application/json"


Payload = Annotated[InlinePayload | PayloadReference, Field(discriminator="kind")]


class AttemptRecord(_Frozen):
    """One finished attempt, kept in the envelope so retries and dead letters carry it."""

    attempt: Count
    worker_id: Annotated[str, StringConstraints(max_length=128)]
    started_at: Timestamp
    finished_at: Timestamp
    outcome: Literal["retried", "failed", "timeout", "deferred", "rejected"]
    error_type: Annotated[str, StringConstraints(max_length=200)] | None = None
    error_message: Annotated[str, StringConstraints(max_length=1000)] | None = None


class Envelope(_Frozen):
    """The typed, versioned job message."""

    # A job's string values are mostly unique (ids, times): pydantic-core's default would cache
    # each in its process-wide 16,384-entry string cache, where no later message reuses them in a
    # process that reads many (the outbox relay; the worker's one pass, ``common.codec``).
    model_config = ConfigDict(json_schema_extra={"$comment": WIRE_RULES}, cache_strings="keys")

    envelope_version: Annotated[Literal[1], WholeNumber] = ENVELOPE_VERSION
    job_id: Identifier
    idempotency_key: Identifier
    job_type: JobType
    schema_version: Count
    correlation_id: Identifier
    causation_id: Identifier | None = None
    attempt: Count = 1
    created_at: Timestamp
    deadline: Timestamp | None = None
    headers: Annotated[
        dict[HeaderName, HeaderValue],
        # patternProperties alone would let other names through; the worker never does.
        Field(max_length=64, json_schema_extra={"propertyNames": {"pattern": HEADER_NAME_PATTERN}}),
    ] = Field(default_factory=dict)
    payload: Payload
    history: Annotated[tuple[AttemptRecord, ...], Field(max_length=MAX_HISTORY)] = ()

    def next_attempt(self, record: AttemptRecord) -> Envelope:
        """The copy to publish for a retry: attempt+1 and this attempt in the history."""
        history = (*self.history, record)[-MAX_HISTORY:]
        return self._copied({"attempt": self.attempt + 1, "history": history})

    def with_history(self, record: AttemptRecord) -> Envelope:
        """The same attempt with one more history entry (a deferral spends no attempt)."""
        history = (*self.history, record)[-MAX_HISTORY:]
        return self._copied({"history": history})

    def _copied(self, update: dict[str, Any]) -> Envelope:
        """``model_copy(update=update)`` (unvalidated, as that is) without its generic machinery:
        one per retry copy. A unit test holds the two equal."""
        if self.__pydantic_private__ is not None or self.__pydantic_extra__ is not None:
            return self.model_copy(update=update)
        copy = Envelope.__new__(type(self))
        _object_setattr(copy, "__dict__", {**self.__dict__, **update})
        _object_setattr(copy, "__pydantic_fields_set__", self.__pydantic_fields_set__ | update.keys())
        _object_setattr(copy, "__pydantic_extra__", None)
        _object_setattr(copy, "__pydantic_private__", None)
        return copy

    def bounded_by_history(self) -> Envelope:
        """This envelope with ``attempt`` no higher than its own history accounts for.

        ``attempt`` is a publisher's claim: the schema takes up to 10,000, and a publisher in
        another language may send its own counter. Trusted for limits, ``attempt=999`` with an
        empty history would be dead-lettered as exhausted after one run. So the worker counts an
        attempt only where the history records the run before it: every copy Conveyor writes
        adds one record per attempt it adds (``next_attempt``), a deferral adds a record and no
        attempt, a replay resets ``attempt`` to 1 and keeps the history, so its own messages
        always have ``attempt <= len(history) + 1`` and pass unchanged. A full history
        (``MAX_HISTORY``) dropped its oldest records: then the newest record's attempt + 1
        bounds it instead. Lowering a claim only gives the job the runs its policy allows
        (``max_attempts`` and ``max_age`` still bound it). The records themselves are taken at
        their word: forging a history is a deliberate lie about the past, not a counter sent in
        good faith, and a publisher can always send a job that fails anyway.
        """
        bound = len(self.history) + 1
        if self.attempt > bound and len(self.history) >= MAX_HISTORY:
            bound = self.history[-1].attempt + 1
        return self if self.attempt <= bound else self.model_copy(update={"attempt": bound})

    def expired(self, now: datetime) -> bool:
        return self.deadline is not None and now >= self.deadline


# -- building a new job's envelope without validating what the producer made itself ---------
# ``Envelope(...)`` runs every field through pydantic (regexes, date-time checks),
# the largest single cost of a publish after the broker client. For a new job nearly every
# field is the producer's own (a fresh uuid4 id, the clock's time, the envelope's defaults),
# and the caller's few (job type, optional ids and headers) are checked here the way the
# schema checks them. Anything else (a naive clock, a name the
# patterns refuse, an unusual type) goes through ``Envelope(...)``, which raises the same
# error as ever. A unit test holds both ways to equal envelopes and equal JSON.
_IDENTIFIER = re.compile(r"[A-Za-z0-9._:@/-]{1,128}")
_JOB_TYPE = re.compile(JOB_TYPE_PATTERN.removeprefix("^").removesuffix("$"))
_HEADER_NAME = re.compile(HEADER_NAME_PATTERN.removeprefix("^").removesuffix("$"))
_MAX_VERSION = MAX_SCHEMA_VERSION
_object_setattr = object.__setattr__


def _passes(value: object, pattern: re.Pattern[str]) -> bool:
    # fullmatch, as pydantic's regex engine reads the schema's ^…$ (no match before a final newline).
    return type(value) is str and pattern.fullmatch(value) is not None


def _optional_id(value: object) -> bool:
    return value is None or (type(value) is str and _IDENTIFIER.fullmatch(value) is not None)


def _aware(value: object) -> bool:
    # UTC first: what the system clock gives, and a tzinfo whose offset is never None.
    return type(value) is datetime and (value.tzinfo is UTC or value.utcoffset() is not None)


@lru_cache(maxsize=1024)
def _job_type_passes(job_type: str) -> bool:
    """The pattern's verdict on a job type, remembered: a producer sends a few types, many times."""
    return _JOB_TYPE.fullmatch(job_type) is not None


def _str_keys(data: dict[Any, Any]) -> bool:
    for name in data:  # a loop, not all(...): no generator per publish
        if type(name) is not str:
            return False
    return True


def _headers_pass(headers: dict[str, str]) -> bool:
    if len(headers) > 64:
        return False
    for name, value in headers.items():
        if type(name) is not str or type(value) is not str or len(value) > 1024:
            return False
        if not _passes(name, _HEADER_NAME):
            return False
    return True


def new_envelope(
    *,
    job_id: str | None,
    job_type: str,
    schema_version: int,
    created_at: datetime,
    data: dict[str, Any],
    headers: dict[str, str],
    idempotency_key: str | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    deadline: datetime | None = None,
) -> Envelope:
    """A first-attempt envelope with an inline payload, equal to ``Envelope(...)`` of the same
    fields (the key and correlation id default to ``job_id``); raises ``ValidationError`` for
    whatever ``Envelope`` refuses, since then it is ``Envelope(...)`` that builds it.
    ``job_id=None``: a fresh one (``new_job_id``), which needs no check."""
    fresh = job_id is None
    if job_id is None:
        job_id = _job_ids.take()
    key = job_id if idempotency_key is None else idempotency_key
    correlation = job_id if correlation_id is None else correlation_id
    if not (
        (fresh or (type(job_id) is str and _IDENTIFIER.fullmatch(job_id) is not None))
        and (idempotency_key is None or _optional_id(key))
        and (correlation_id is None or _optional_id(correlation))
        and (causation_id is None or _optional_id(causation_id))
        and type(job_type) is str and _job_type_passes(job_type)
        and type(schema_version) is int and 1 <= schema_version <= _MAX_VERSION
        and _aware(created_at)
        and (deadline is None or _aware(deadline))
        and type(data) is dict and _str_keys(data)
        and type(headers) is dict and (not headers or _headers_pass(headers))
    ):
        return Envelope(
            job_id=job_id, idempotency_key=key, job_type=job_type, schema_version=schema_version,
            correlation_id=correlation, causation_id=causation_id, created_at=created_at, deadline=deadline,
            headers=headers, payload=InlinePayload(data=data),
        )
    payload = InlinePayload.__new__(InlinePayload)
    _object_setattr(payload, "__dict__", {"kind": "inline", "data": data})
    _object_setattr(payload, "__pydantic_fields_set__", {"data"})
    _object_setattr(payload, "__pydantic_extra__", None)
    _object_setattr(payload, "__pydantic_private__", None)
    envelope = Envelope.__new__(Envelope)
    _object_setattr(envelope, "__dict__", {
        "envelope_version": ENVELOPE_VERSION,
        "job_id": job_id,
        "idempotency_key": key,
        "job_type": job_type,
        "schema_version": schema_version,
        "correlation_id": correlation,
        "causation_id": causation_id,
        "attempt": 1,
        "created_at": created_at,
        "deadline": deadline,
        "headers": headers,
        "payload": payload,
        "history": (),
    })
    _object_setattr(envelope, "__pydantic_fields_set__", set(_FIELDS_SET))
    _object_setattr(envelope, "__pydantic_extra__", None)
    _object_setattr(envelope, "__pydantic_private__", None)
    return envelope


# What ``Envelope(...)`` records as set when given every field new_envelope passes it.
_FIELDS_SET = frozenset({
    "job_id", "idempotency_key", "job_type", "schema_version", "correlation_id", "causation_id",
    "created_at", "deadline", "headers", "payload",
})


_OUTCOMES = frozenset({"retried", "failed", "timeout", "deferred", "rejected"})
_RECORD_FIELDS_SET = frozenset(AttemptRecord.model_fields)


def new_attempt_record(
    *,
    attempt: int,
    worker_id: str,
    started_at: datetime,
    finished_at: datetime,
    outcome: str,
    error_type: str | None,
    error_message: str | None,
) -> AttemptRecord:
    """``AttemptRecord(...)`` of these fields, without pydantic's pass where every field is
    plainly valid (one per retry copy); anything else goes through ``AttemptRecord(...)``,
    which raises ``ValidationError`` for what it refuses. A unit test holds the two equal."""
    if not (
        type(attempt) is int and 1 <= attempt <= _MAX_VERSION
        and type(worker_id) is str and len(worker_id) <= 128
        and _aware(started_at) and _aware(finished_at)
        and outcome in _OUTCOMES and type(outcome) is str
        and (error_type is None or (type(error_type) is str and len(error_type) <= 200))
        and (error_message is None or (type(error_message) is str and len(error_message) <= 1000))
    ):
        return AttemptRecord(
            attempt=attempt, worker_id=worker_id, started_at=started_at, finished_at=finished_at,
            outcome=outcome, error_type=error_type, error_message=error_message,  # type: ignore[arg-type]
        )
    record = AttemptRecord.__new__(AttemptRecord)
    _object_setattr(record, "__dict__", {
        "attempt": attempt,
        "worker_id": worker_id,
        "started_at": started_at,
        "finished_at": finished_at,
        "outcome": outcome,
        "error_type": error_type,
        "error_message": error_message,
    })
    _object_setattr(record, "__pydantic_fields_set__", set(_RECORD_FIELDS_SET))
    _object_setattr(record, "__pydantic_extra__", None)
    _object_setattr(record, "__pydantic_private__", None)
    return record

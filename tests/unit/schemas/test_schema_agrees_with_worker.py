"""The published envelope schema and the worker's decoder are one contract (a differential test).

A publisher in another language validates against ``schemas/json/envelope.v1.json``; the worker
decodes with ``decode_envelope``. For every hostile envelope below, both must accept it or both
must reject it: a message the schema accepts and the worker dead-letters as ``malformed`` (or
the reverse) is a broken contract.

The reference validator is what the schema promises, read by the book: JSON Schema 2020-12 with
ECMA-262 regular expressions (python-jsonschema uses Python's ``re``, whose ``$`` also matches
before a final newline) and the ``date-time`` format asserted (RFC 3339 §5.6, checked here
independently of the worker's parser). Texts that are not I-JSON (RFC 7493: duplicate keys, lone
surrogates, NaN, integers beyond ±(2**53-1), nesting past the limit) are outside what a JSON
Schema can say about *values*; the schema states those rules in its description, and the
worker rejects every one of them (the second test).
"""

from __future__ import annotations

import calendar
import copy
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import regress
from jsonschema import validators

from conveyor.common.codec import MAX_DEPTH, decode_envelope
from conveyor.common.errors import MalformedMessage

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[3] / "schemas" / "json" / "envelope.v1.json").read_text(encoding="utf-8")
)

# RFC 3339 §5.6 (the ABNF: "T" or "t", "Z" or "z", a numeric offset with a colon), §5.7 (days
# per month, leap years; a leap second is allowed by the RFC).
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-](\d{2}):(\d{2}))", re.ASCII
)


def _rfc3339_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True  # formats only speak about strings
    match = _RFC3339.fullmatch(value)
    if match is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    if not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year or 2000, month)[1]:
        return False
    offset_ok = match.group(9) is None or (int(match.group(9)) <= 23 and int(match.group(10)) <= 59)
    return hour <= 23 and minute <= 59 and second <= 60 and offset_ok


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[jsonschema.ValidationError]:
    if validator.is_type(instance, "string") and regress.Regex(pattern, flags="u").find(instance) is None:
        yield jsonschema.ValidationError(f"does not match {pattern!r}")


def _ecma_pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        regex = regress.Regex(pattern, flags="u")
        for key, value in instance.items():
            if regex.find(key) is not None:
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


_BookValidator = validators.extend(
    jsonschema.Draft202012Validator, {"pattern": _ecma_pattern, "patternProperties": _ecma_pattern_properties}
)
_formats = jsonschema.FormatChecker()
_formats.checks("date-time")(_rfc3339_date_time)
BY_THE_BOOK = _BookValidator(SCHEMA, format_checker=_formats)


def schema_accepts(text: bytes) -> bool:
    return BY_THE_BOOK.is_valid(json.loads(text))


def worker_accepts(text: bytes) -> bool:
    try:
        decode_envelope(text)
    except MalformedMessage:
        return False
    return True


BASE: dict[str, Any] = {
    "envelope_version": 1,
    "job_id": "0b7e5c9e-6c1f-4f5e-9a43-2d1c0f7f3a10",
    "idempotency_key": "order-42:charge",
    "job_type": "payments.charge",
    "schema_version": 1,
    "correlation_id": "req/7@edge",
    "created_at": "2026-01-01T00:00:00Z",
    "payload": {"kind": "inline", "data": {"amount": 5}},
}
REFERENCE = {"kind": "ref", "store": "s3", "bucket": "b", "key": "p/x.json", "sha256": "0" * 64, "size": 3}
RECORD = {"attempt": 1, "worker_id": "w1", "started_at": "2026-01-01T00:00:00Z",
          "finished_at": "2026-01-01T00:00:01Z", "outcome": "retried"}


def at(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set (or, with ``...``, delete) ``a.b.c`` in the envelope."""
    *parents, last = path.split(".")

    def change(envelope: dict[str, Any]) -> None:
        node: Any = envelope
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is ...:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return change


DATE_TIMES = [
    "2026-01-01t00:00:00z", "2026-01-01T00:00:00.123456789Z", "2026-01-01T00:00:00-00:00",
    "2026-01-01T00:00:00+23:59", "2024-02-29T12:00:00+05:30", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
    # rejected by both
    "2026-01-01", "2026-01-01T00:00:00", "2026-01-01 00:00:00Z", "2026-01-01T00:00Z", "2026-01-01T00:00:00,5Z",
    "2026-01-01T00:00:00+0000", "2026-02-30T00:00:00Z", "2023-02-29T00:00:00Z", "2026-01-01T23:59:60Z",
    "2026-01-01T24:00:00Z", "2026-13-01T00:00:00Z", "0000-01-01T00:00:00Z", "2026-01-01T00:00:00+24:00",
    "\uff12\uff10\uff12\uff16-01-01T00:00:00Z", "1700000000", "2026-01-01T00:00:00Z\n", " 2026-01-01T00:00:00Z",
    1700000000, None, True,
]

CASES: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("the friendly envelope", lambda e: None),
    # Defect 16 as reported.
    ("payload without kind", at("payload.kind", ...)),
    ("header name with a space", at("headers", {"tenant id": "t1"})),
    ("schema_version 1.0", at("schema_version", 1.0)),
    # Integers: JSON has one number type; 2.0 is the integer 2, true is not an integer.
    ("attempt 2.0", at("attempt", 2.0)),
    ("attempt 1e4", at("attempt", 1e4)),
    ("attempt 2.5", at("attempt", 2.5)),
    ("attempt true", at("attempt", True)),
    ("attempt as a string", at("attempt", "2")),
    ("attempt 0", at("attempt", 0)),
    ("attempt 10001", at("attempt", 10001)),
    ("attempt 1e5", at("attempt", 1e5)),
    ("schema_version null", at("schema_version", None)),
    ("envelope_version missing", at("envelope_version", ...)),
    ("envelope_version 1.0", at("envelope_version", 1.0)),
    ("envelope_version true", at("envelope_version", True)),
    ("envelope_version 2", at("envelope_version", 2)),
    ("envelope_version as a string", at("envelope_version", "1")),
    # Date-times, in the three fields that hold one.
    *((f"created_at {value!r}", at("created_at", value)) for value in DATE_TIMES),
    *((f"deadline {value!r}", at("deadline", value)) for value in DATE_TIMES),
    *((f"history started_at {value!r}", lambda e, v=value: (at("history", [dict(RECORD)])(e),
                                                           at("history.0.started_at", v)(e)))
      for value in DATE_TIMES[::3]),
    # Identifiers and job types.
    ("job_id with a trailing newline", at("job_id", "job-1\n")),
    ("job_id empty", at("job_id", "")),
    ("job_id of 128 characters", at("job_id", "j" * 128)),
    ("job_id of 129 characters", at("job_id", "j" * 129)),
    ("job_id with a letter outside ASCII", at("job_id", "j\u00f6b")),
    ("job_id with a space", at("job_id", "job 1")),
    ("job_id as a number", at("job_id", 12)),
    ("job_type with capitals", at("job_type", "Payments.charge")),
    ("job_type with a trailing newline", at("job_type", "payments.charge\n")),
    ("job_type of 128 characters", at("job_type", "p" * 128)),
    ("job_type with Arabic-Indic digits", at("job_type", "p\u0661")),
    ("causation_id null", at("causation_id", None)),
    ("causation_id empty", at("causation_id", "")),
    ("correlation_id missing", at("correlation_id", ...)),
    # Headers.
    ("headers empty", at("headers", {})),
    ("headers null", at("headers", None)),
    ("header name empty", at("headers", {"": "v"})),
    ("header name with a trailing newline", at("headers", {"tenant\n": "v"})),
    ("header name outside ASCII", at("headers", {"t\u00e9nant": "v"})),
    ("header name of 64 characters", at("headers", {"h" * 64: "v"})),
    ("header name of 65 characters", at("headers", {"h" * 65: "v"})),
    ("header value a number", at("headers", {"tenant": 1})),
    ("header value null", at("headers", {"tenant": None})),
    ("header value of 1024 characters", at("headers", {"tenant": "v" * 1024})),
    ("header value of 1025 characters", at("headers", {"tenant": "v" * 1025})),
    ("64 headers", at("headers", {f"h{i}": "v" for i in range(64)})),
    ("65 headers", at("headers", {f"h{i}": "v" for i in range(65)})),
    # Payloads.
    ("inline payload without data", at("payload", {"kind": "inline"})),
    ("inline data a list", at("payload.data", [1])),
    ("inline data null", at("payload.data", None)),
    ("inline payload with a reference field", at("payload.store", "s3")),
    ("a reference", at("payload", dict(REFERENCE))),
    ("a reference without kind", at("payload", {k: v for k, v in REFERENCE.items() if k != "kind"})),
    ("a reference of size 3.0", at("payload", {**REFERENCE, "size": 3.0})),
    ("a reference of size -1", at("payload", {**REFERENCE, "size": -1})),
    ("a reference over 5 GiB", at("payload", {**REFERENCE, "size": 5 * 1024**3 + 1})),
    ("a reference with an upper-case sha256", at("payload", {**REFERENCE, "sha256": "A" * 64})),
    ("a reference with a url", at("payload", {**REFERENCE, "url": "http://evil/"})),
    ("a reference of another content type", at("payload", {**REFERENCE, "content_type": "text/plain"})),
    ("a reference with inline data", at("payload", {**REFERENCE, "data": {}})),
    ("a payload of another kind", at("payload", {"kind": "url", "url": "http://x/"})),
    ("payload null", at("payload", None)),
    ("payload missing", at("payload", ...)),
    # History.
    ("one attempt in the history", at("history", [dict(RECORD)])),
    ("history null", at("history", None)),
    ("a history attempt of 1.0", at("history", [{**RECORD, "attempt": 1.0}])),
    ("a history entry with an unknown outcome", at("history", [{**RECORD, "outcome": "exploded"}])),
    ("a history entry without finished_at", at("history", [{k: v for k, v in RECORD.items() if k != "finished_at"}])),
    ("a history entry with an extra field", at("history", [{**RECORD, "host": "h"}])),
    ("a history error message of 1001 characters", at("history", [{**RECORD, "error_message": "e" * 1001}])),
    ("50 history entries", at("history", [dict(RECORD)] * 50)),
    ("51 history entries", at("history", [dict(RECORD)] * 51)),
    # The envelope itself.
    ("an unknown field", at("smuggled", True)),
]
WHOLE_TEXTS = [b"[]", b'"envelope"', b"null", b"1", b"{}"]


def _texts() -> Iterator[Any]:
    for name, change in CASES:
        envelope = copy.deepcopy(BASE)
        change(envelope)
        yield pytest.param(orjson.dumps(envelope), id=name)
    for text in WHOLE_TEXTS:
        yield pytest.param(text, id=text.decode())


@pytest.mark.parametrize("text", list(_texts()))
def test_the_published_schema_and_the_worker_accept_and_reject_the_same_envelopes(text: bytes) -> None:
    schema, worker = schema_accepts(text), worker_accepts(text)
    assert schema == worker, (
        f"the published schema {'accepts' if schema else 'rejects'} it, the worker {'accepts' if worker else 'rejects'} it"
    )


def test_the_hostile_list_has_both_verdicts() -> None:
    verdicts = {worker_accepts(param.values[0]) for param in _texts()}
    assert verdicts == {True, False}


def _amount(raw: bytes) -> bytes:
    """The friendly envelope with ``raw`` (JSON text) as the amount in its data."""
    return orjson.dumps(BASE).replace(b'"amount":5', b'"amount":' + raw)


NOT_I_JSON = {
    "a duplicate key": b'{"job_id": "a", "job_id": "b"}',
    "a lone surrogate in the data": orjson.dumps(BASE).replace(b'"amount"', b'"\\udc80"'),
    "a lone high surrogate in a header": orjson.dumps({**BASE, "headers": {"h": "x"}}).replace(b'"x"', b'"\\ud800"'),
    "NaN": _amount(b"NaN"),
    "an integer beyond 2**53-1": _amount(b"9007199254740993"),
    # The envelope, its payload and the data are three levels: the amount's lists add the rest.
    "data nested past the limit": _amount(b"[" * (MAX_DEPTH - 2) + b"1" + b"]" * (MAX_DEPTH - 2)),
    "data nested 300 levels": _amount(b"[" * 300 + b"1" + b"]" * 300),
    "a byte-order mark": b"\xef\xbb\xbf" + orjson.dumps(BASE),
    "invalid UTF-8": orjson.dumps(BASE).replace(b"payments", b"pay\xffments"),
}


@pytest.mark.parametrize("text", list(NOT_I_JSON.values()), ids=list(NOT_I_JSON))
def test_the_worker_rejects_every_text_that_is_not_i_json(text: bytes) -> None:
    assert not worker_accepts(text)


def test_the_published_schema_states_the_rules_it_cannot_express() -> None:
    rules = SCHEMA["$comment"]
    assert "I-JSON" in rules and "RFC 7493" in rules and f"{MAX_DEPTH} levels" in rules
    assert "ECMA-262" in rules

"""``decode_envelope``'s one pass (pydantic-core parses and validates) against the two-step way
it stands in for (``strict_json_loads``, then ``Envelope.model_validate``): a differential test.

For every text, hostile or friendly, the one pass either gives exactly the envelope the two-step
way gives, or stands aside (None) and the two-step way decides. So ``decode_envelope`` accepts
and refuses exactly what it did, with the same words; every text of the schema's differential
test (``tests/unit/schemas/test_schema_agrees_with_worker.py``) is run here too.
"""

from __future__ import annotations

import orjson
import pytest

from conveyor.common import codec
from conveyor.common.codec import MAX_DEPTH, decode_envelope
from conveyor.common.errors import MalformedMessage
from conveyor.schemas.envelope import Envelope
from tests.unit.schemas.test_schema_agrees_with_worker import BASE, NOT_I_JSON, RECORD, REFERENCE, _texts

_FRIENDLY = orjson.dumps(BASE)
assert b'"amount":5' in _FRIENDLY and b'"headers"' not in _FRIENDLY


def _amount(raw: bytes) -> bytes:
    return _FRIENDLY.replace(b'"amount":5', b'"amount":' + raw)


def _with(**fields: object) -> bytes:
    return orjson.dumps({**BASE, **fields})


EXTRA = {
    # Keys the parsed value no longer shows: a duplicate at every level, same value or not.
    "a duplicate envelope field, same value": _FRIENDLY.replace(b'"job_type"', b'"job_type":"payments.charge","job_type"'),
    "a duplicate key in the data": _amount(b'5,"amount":6'),
    "a duplicate nested data key": _amount(b'{"a":1,"a":1}'),
    "a duplicate payload kind": _FRIENDLY.replace(b'"kind":"inline"', b'"kind":"inline","kind":"inline"'),
    "a duplicate header name": _with(headers={"h": "x"}).replace(b'"h":"x"', b'"h":"x","h":"y"'),
    "a duplicate field in a history record": _with(history=[RECORD]).replace(b'"worker_id"', b'"worker_id":"w0","worker_id"'),
    "a duplicate field in a claim check": _with(payload=REFERENCE).replace(b'"bucket"', b'"bucket":"a","bucket"'),
    # More key-ending quotes than keys: valid, the count cannot prove it, the scanner does.
    'a value holding ":': _amount(b'{"note":"a\\":b"}'),
    'a header value holding " :': _with(headers={"h": 'x" :y'}),
    # Numbers at and past the edges.
    "2**53-1": _amount(b"9007199254740991"),
    "-(2**53-1)": _amount(b"-9007199254740991"),
    "2**53 as a float": _amount(b"9007199254740992.0"),
    "2**64": _amount(b"18446744073709551616"),
    "1e400": _amount(b"1e400"),
    "-1e400": _amount(b"-1e400"),
    "Infinity": _amount(b"Infinity"),
    "NaN as the attempt": _FRIENDLY.replace(b'"schema_version":1', b'"schema_version":1,"attempt":NaN'),
    "1e400 as the attempt": _FRIENDLY.replace(b'"schema_version":1', b'"schema_version":1,"attempt":1e400'),
    "0.1": _amount(b"0.1"),
    "a subnormal": _amount(b"4.9e-324"),
    "the smallest normal, long": _amount(b"2.2250738585072011e-308"),
    "many digits": _amount(b"123456789.12345678901234567890e-5"),
    "-0": _amount(b"-0"),
    "-0.0": _amount(b"-0.0"),
    "1E2": _amount(b"1E2"),
    "an attempt of 2.0": _FRIENDLY.replace(b'"schema_version":1', b'"schema_version":1,"attempt":2.0'),
    "a leading zero": _amount(b"05"),
    # Strings and escapes.
    "escapes": _amount(b'"\\u00e9\\n\\/\\"\\\\ \\u0000"'),
    "an escaped key": _amount(b'{"\\u0061":1}'),
    "a surrogate pair escaped": _amount(b'"\\ud83d\\ude00"'),
    "a surrogate pair escaped, upper case": _amount(b'"\\uD83D\\uDE00"'),
    "raw UTF-8": _amount('"é✓😀"'.encode()),
    "invalid UTF-8 in the data": _amount(b'"\xff"'),
    "an encoded surrogate (CESU)": _amount(b'"\xed\xa0\x80"'),
    # Layout.
    "pretty-printed": orjson.dumps(BASE, option=orjson.OPT_INDENT_2),
    "whitespace around everything": b" \n\t" + _FRIENDLY.replace(b":", b" : ").replace(b",", b" ,\r\n ") + b" \n",
    "trailing garbage": _FRIENDLY + b" x",
    "two objects": _FRIENDLY + _FRIENDLY,
    "a trailing comma": _FRIENDLY[:-1] + b",}",
    "single quotes": _FRIENDLY.replace(b'"amount"', b"'amount'"),
    "a comment": _FRIENDLY.replace(b"{", b"/* c */{", 1),
    # Depth: the envelope, payload and data are three levels of the 64.
    "data nested to the limit": _amount(b"[" * (MAX_DEPTH - 3) + b"1" + b"]" * (MAX_DEPTH - 3)),
    "data nested to the limit in objects": _amount(b'{"a":' * (MAX_DEPTH - 3) + b"1" + b"}" * (MAX_DEPTH - 3)),
    "data nested past the limit in objects": _amount(b'{"a":' * (MAX_DEPTH - 2) + b"1" + b"}" * (MAX_DEPTH - 2)),
    "data nested 250 levels": _amount(b"[" * 250 + b"1" + b"]" * 250),
    # Whole envelopes of other shapes.
    "a claim check": _with(payload=REFERENCE),
    "a history": _with(history=[RECORD, {**RECORD, "attempt": 2, "error_type": "E", "error_message": "m"}]),
    "headers": _with(headers={"traceparent": "00-abc-def-01", "conveyor.producer-version": "1.0"}),
    "every optional field": _with(causation_id="c", attempt=1, deadline="2030-01-01T00:00:00+02:00", headers={},
                                  history=[]),
}


def _params() -> list[object]:
    params = [pytest.param(p.values[0], id=f"schema: {p.id}") for p in _texts()]
    params += [pytest.param(text, id=f"not I-JSON: {name}") for name, text in NOT_I_JSON.items()]
    params += [pytest.param(text, id=name) for name, text in EXTRA.items()]
    return params


def _two_step(body: bytes) -> Envelope | str:
    try:
        result: Envelope = codec._validate(Envelope, codec.strict_json_loads(body, max_bytes=None))
    except MalformedMessage as exc:
        return f"refused: {exc}"
    return result


def _decoded(body: bytes) -> Envelope | str:
    try:
        return decode_envelope(body)
    except MalformedMessage as exc:
        return f"refused: {exc}"


@pytest.mark.parametrize("body", _params())
def test_the_one_pass_gives_the_two_step_envelope_or_stands_aside(body: bytes) -> None:
    reference = _two_step(body)
    at_once = codec._envelope_at_once(body)
    if at_once is not None:
        assert isinstance(reference, Envelope), f"the one pass accepts what the two-step way {reference}"
        assert at_once == reference
        assert at_once.model_dump() == reference.model_dump()
        assert at_once.model_fields_set == reference.model_fields_set
        assert codec.encode_model(at_once) == codec.encode_model(reference)
    assert _decoded(body) == reference


def test_the_one_pass_takes_the_common_messages_itself() -> None:
    # Not just standing aside every time: what producers send goes the fast way.
    for name in ("a claim check", "a history", "headers", "every optional field", "escapes", "0.1", "-0",
                 "pretty-printed", "data nested to the limit", "2**53-1"):
        assert codec._envelope_at_once(EXTRA[name]) is not None, name
    assert codec._envelope_at_once(_FRIENDLY) is not None


def test_each_proof_is_needed_the_one_pass_stands_aside_for_what_only_it_would_take() -> None:
    for name in ("a duplicate key in the data", "a duplicate header name", "a duplicate envelope field, same value",
                 "a duplicate field in a history record", "2**64", "1e400", "Infinity", "data nested 250 levels",
                 "data nested past the limit in objects", 'a value holding ":'):
        assert codec._envelope_at_once(EXTRA[name]) is None, name
    assert codec._envelope_at_once(NOT_I_JSON["a lone surrogate in the data"]) is None


@pytest.mark.parametrize("created_at", ["2026-01-01t00:00:00z", "2026-01-01T00:00:00.123456789Z",
                                        "2026-01-01T00:00:00-00:00", "2024-02-29T12:00:00+05:30"])
def test_the_one_pass_checks_date_times_itself_without_python_validators(created_at: str) -> None:
    body = _with(created_at=created_at, history=[{**RECORD, "started_at": created_at}])
    at_once = codec._envelope_at_once(body)
    assert at_once is not None and at_once == _two_step(body)


def test_whole_floats_are_the_integers_either_way_and_booleans_no_number_either_way() -> None:
    for body, expected in ((_with(attempt=2.0), 2), (_with(attempt=1e4), 10_000), (_with(envelope_version=1.0), 1),
                           (_with(schema_version=1.0), 1)):
        at_once = codec._envelope_at_once(body)
        assert at_once is None or at_once == _two_step(body)
        envelope = decode_envelope(body)
        counts = (envelope.attempt, envelope.envelope_version, envelope.schema_version)
        assert expected in counts and all(type(n) is int for n in counts)
    for body in (_with(attempt=True), _with(envelope_version=True), _with(schema_version=True), _with(attempt=2.5)):
        assert codec._envelope_at_once(body) is None
        with pytest.raises(MalformedMessage):
            decode_envelope(body)


def test_the_one_pass_validator_calls_no_python_function() -> None:
    import sys

    body = _with(history=[RECORD], deadline="2030-01-01T00:00:00Z", payload=REFERENCE)
    python_calls: list[str] = []

    def watch(frame: object, event: str, arg: object) -> None:
        if event == "call":
            python_calls.append(frame.f_code.co_name)  # type: ignore[attr-defined]

    sys.setprofile(watch)
    try:
        envelope = codec._ONE_PASS.validate_json(body)
    finally:
        sys.setprofile(None)
    assert python_calls == [], "pydantic-core called back into Python (a prebuilt validator?)"
    assert envelope == _two_step(body) and type(envelope) is Envelope
    assert Envelope.__pydantic_complete__, "the classes are complete again after the build"


def test_the_one_pass_caches_keys_only_never_a_jobs_values() -> None:
    # pydantic-core's default caches every short string value process-wide (16,384 entries);
    # a job's values are mostly unique (ids, times), so a drain filled it with strings no later
    # job reuses: ~1.3 MiB of the worker's peak RSS (issue 18).
    body = _with(headers={"tenant": "acme"})
    first, second = codec._envelope_at_once(body), codec._envelope_at_once(body)
    assert first is not None and second is not None and first == second
    assert first.job_id == second.job_id and first.job_id is not second.job_id
    assert first.idempotency_key is not second.idempotency_key
    assert first.headers["tenant"] is not second.headers["tenant"]

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from conveyor.common.codec import MAX_RECORD_BYTES, decode_envelope, encode_envelope, encode_model, strict_json_loads
from conveyor.common.errors import MalformedMessage, MessageTooLarge
from conveyor.schemas.envelope import MAX_HISTORY, AttemptRecord, Envelope, InlinePayload


def _envelope(**overrides) -> dict:
    base = {
        "job_id": "j1",
        "idempotency_key": "k1",
        "job_type": "email.send",
        "schema_version": 1,
        "correlation_id": "c1",
        "created_at": "2026-01-01T00:00:00+00:00",
        "payload": {"kind": "inline", "data": {"to": "a@example.com"}},
    }
    base.update(overrides)
    return base


def test_round_trip_keeps_every_field() -> None:
    env = Envelope.model_validate(_envelope(headers={"tenant": "t1"}))
    assert decode_envelope(encode_model(env)) == env


def test_size_is_checked_before_parsing() -> None:
    with pytest.raises(MessageTooLarge) as err:
        strict_json_loads(b"{" * 2000, max_bytes=1000)
    assert err.value.reason == "oversize"


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": -Infinity}',
        b'{"a": 1e400}',
        b'{"a": 123456789012345678901234567890}',
        b'{"a": 9007199254740993}',
        b'{"a": 1, "a": 2}',
        b'{"a": {"b": 1, "b": 1}}',
        # Duplicates the key count must still see: no space, space or newline before the
        # colon, and a string value holding '":' next to a duplicate.
        b'{"a":1,"a":2}',
        b'{"a":1,"a" :2}',
        b'{"a":1,"a"\n\t:2}',
        b'{"a":"x\\":","a":2}',
        b'[{"a": 1}, {"b": [{"c": 1, "c": 2}]}]',
        b'{"a": -9007199254740993}',
        b'{"a": [18446744073709551616]}',
        b"9007199254740993",  # a bare number at the top level is checked too
        b"[[1e400]]",
        b"\xff\xfe",
        b"[1, 2",
    ],
)
def test_hostile_json_is_rejected_as_malformed(body: bytes) -> None:
    with pytest.raises(MalformedMessage) as err:
        strict_json_loads(body)
    assert err.value.reason == "malformed"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"a": 9007199254740991, "b": -9007199254740991}', {"a": 2**53 - 1, "b": -(2**53 - 1)}),
        (b'{"a": 1e300, "b": 0.5}', {"a": 1e300, "b": 0.5}),
        (b"5", 5),
        (b'["x", [{"y": -2.5}], {}]', ["x", [{"y": -2.5}], {}]),
        (b'{"k": "x\\":y", "k2": {"k3" : [1, 2.5, true, null]}}', {"k": 'x":y', "k2": {"k3": [1, 2.5, True, None]}}),
        (b'{"a":' * 2000 + b"1" + b"}" * 2000, None),
    ],
)
def test_valid_json_is_accepted_whichever_parser_decides(body: bytes, expected: object) -> None:
    # Spaces before a colon, '":' inside strings, huge floats and deep nesting take the strict
    # scanner; the rest is orjson's. Both must agree with plain JSON.
    import json

    value = strict_json_loads(body) if expected is not None else None
    if expected is None:
        with pytest.raises(MalformedMessage):  # nesting deeper than either parser allows
            strict_json_loads(body)
    else:
        assert value == expected == json.loads(body)


def test_unknown_envelope_field_is_rejected() -> None:
    import orjson

    with pytest.raises(MalformedMessage, match="smuggled"):
        decode_envelope(orjson.dumps(_envelope(smuggled=True)))


@pytest.mark.parametrize(
    ("field", "value"),
    [("attempt", 0), ("attempt", "1"), ("schema_version", -1), ("job_type", "Bad Type"), ("created_at", "yesterday")],
)
def test_wrong_types_are_rejected_and_name_the_field(field: str, value: object) -> None:
    import orjson

    with pytest.raises(MalformedMessage) as err:
        decode_envelope(orjson.dumps(_envelope(**{field: value})))
    assert field in str(err.value)


def test_error_text_never_echoes_field_values() -> None:
    import orjson

    secret = "sk_live_CANARY_1234"
    body = orjson.dumps(_envelope(job_id=secret + " !!", headers={"x": secret * 100}))
    with pytest.raises(MalformedMessage) as err:
        decode_envelope(body)
    assert secret not in str(err.value)


def test_payload_must_be_inline_or_reference() -> None:
    import orjson

    with pytest.raises(MalformedMessage):
        decode_envelope(orjson.dumps(_envelope(payload={"kind": "url", "url": "http://x"})))
    env = decode_envelope(orjson.dumps(_envelope()))
    assert isinstance(env.payload, InlinePayload)


@pytest.mark.parametrize(
    "body",
    [b'"\\udc80"', b'{"a": "x\\ud800"}', b'{"\\udc80": 1}', b'["\\ud800\\ud800"]', b'{"a": "\\udfff\\ud800"}'],
    ids=["lone low", "lone high at the end", "in a key", "two highs", "low then high"],
)
def test_a_lone_surrogate_is_malformed_even_though_the_standard_library_would_take_it(body: bytes) -> None:
    # No encoder can write such a string back: a retry copy of it could never be built.
    with pytest.raises(MalformedMessage, match="line 1 column"):
        strict_json_loads(body)
    assert strict_json_loads(b'"\\ud83d\\ude00"') == "\U0001f600"  # a real pair is one character


def test_nesting_is_limited_to_what_every_copy_can_be_encoded_with() -> None:
    from conveyor.common.codec import MAX_DEPTH

    def nested(levels: int) -> bytes:
        return b'{"a":' * levels + b"1" + b"}" * levels

    assert strict_json_loads(nested(MAX_DEPTH)) is not None
    for levels in (MAX_DEPTH + 1, 300, 1024):
        with pytest.raises(MalformedMessage, match=f"deeper than {MAX_DEPTH} levels"):
            strict_json_loads(nested(levels))
    # The strict scanner's path (a string value holding '":' makes the key counts differ) too.
    with pytest.raises(MalformedMessage, match="deeper"):
        strict_json_loads(b'{"k": "x\\":", "d": ' + b"[" * 300 + b"]" * 300 + b"}")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"a": NaN}', "JSON constant NaN is not allowed"),
        (b'{"a": 1, "a": 2}', "duplicate JSON object key"),
        (b"to=someone", "message is not valid JSON: Expecting value at line 1 column 1"),
        (b'{"a": 1,\n "b": }', "message is not valid JSON: Expecting value at line 2 column 7"),
    ],
)
def test_a_refusal_is_one_line_saying_what_and_where_never_the_text(body: bytes, message: str) -> None:
    with pytest.raises(MalformedMessage) as err:
        strict_json_loads(body)
    assert str(err.value) == message and err.value.reason == "malformed"


def test_whatever_decodes_can_be_written_back_as_a_retry_copy() -> None:
    # Defect 14's property: a retry or deferral copy re-encodes the decoded message, so every
    # envelope the decoder accepts must encode again, to the same data. Seeded random data up to
    # every limit: nesting, the integer range, floats, all of Unicode but lone surrogates.
    import random
    from datetime import UTC, datetime

    import orjson

    from conveyor.common.codec import MAX_DEPTH
    from conveyor.schemas.envelope import AttemptRecord

    rng = random.Random(20260101)
    alphabet = "aé\u0000\n\"\\\u2028\U0001f600\ufffd"

    def text() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(6)))

    def value(levels: int) -> object:
        kind = rng.randrange(8 if levels > 0 else 5)
        if kind == 0:
            return rng.randint(-(2**53 - 1), 2**53 - 1)
        if kind == 1:
            return rng.choice([0.1, -2.5e-308, 1.7976931348623157e308, 5e-324, -0.0, rng.uniform(-1e9, 1e9)])
        if kind == 2:
            return text()
        if kind == 3:
            return rng.choice([True, False, None])
        if kind == 4:
            return rng.randint(-5, 5)
        if kind in (5, 6):
            return {text() + str(i): value(levels - 1) for i in range(rng.randrange(4))}
        return [value(levels - 1) for _ in range(rng.randrange(4))]

    record = AttemptRecord(attempt=1, worker_id="w", started_at=datetime.now(UTC), finished_at=datetime.now(UTC),
                           outcome="retried", error_type="E", error_message=text())
    for _ in range(300):
        chain: object = value(0)
        for _ in range(MAX_DEPTH - 3):  # data is the third level: the deepest a message may go
            chain = [chain] if rng.random() < 0.5 else {text(): chain}
        data = {"chain": chain, "deep": value(rng.randrange(MAX_DEPTH - 3)), "wide": [value(2) for _ in range(5)]}
        body = orjson.dumps(_envelope(payload={"kind": "inline", "data": data}))
        decoded = decode_envelope(body)
        copy = decoded.next_attempt(record)
        assert decode_envelope(encode_model(copy)).payload == decoded.payload


@pytest.mark.parametrize(
    "text",
    ["", "plain ascii", "caf\u00e9", "\U0001f600 emoji", "lone \udc80 surrogate", "\ud800", "ascii then \udfff",
     "\x00\x7f control", "\u2028 separator"],
)
def test_json_safe_text_escapes_lone_surrogates_and_returns_anything_else_itself(text: str) -> None:
    """The ASCII shortcut (issue 18: every failed attempt's error text) must not let a
    surrogate through, nor change a text that encodes."""
    from conveyor.common.codec import json_safe_text

    safe = json_safe_text(text)
    safe.encode("utf-8")  # always encodable
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        assert safe == text.encode("utf-8", "backslashreplace").decode("utf-8") and safe != text
    else:
        assert safe is text


def _worst_record(attempt: int) -> AttemptRecord:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    # Every string at its longest, in characters written six bytes each (\u0001).
    return AttemptRecord(attempt=attempt, worker_id="\x01" * 128, started_at=when, finished_at=when,
                         outcome="timeout", error_type="\x01" * 200, error_message="\x01" * 1000)


def test_an_attempt_record_is_never_longer_than_the_history_allowance_assumes() -> None:
    written = len(encode_model(_worst_record(10_000)))
    assert 7 * 1024 < written <= MAX_RECORD_BYTES


def _at_the_limit(limit: int) -> Envelope:
    sent = Envelope.model_validate(_envelope())
    pad = limit - len(encode_envelope(sent))
    return sent.model_copy(update={"payload": InlinePayload(data={"to": "a" * (len("a@example.com") + pad)})})


def test_a_job_at_the_limit_is_read_back_with_all_the_history_its_copies_gather() -> None:
    # Counted, a job sent near the limit came back from its first retry "oversize".
    limit = 4096
    copy = _at_the_limit(limit)
    assert len(encode_envelope(copy)) == limit
    for attempt in range(1, MAX_HISTORY + 1):
        copy = copy.next_attempt(_worst_record(attempt))
    body = encode_envelope(copy)
    assert len(body) > limit + MAX_HISTORY * 7 * 1024
    assert decode_envelope(body, max_bytes=limit) == copy


def test_a_job_over_the_limit_without_its_history_is_still_oversize() -> None:
    limit = 4096
    one_over = _at_the_limit(limit + 1)
    with pytest.raises(MessageTooLarge):
        decode_envelope(encode_envelope(one_over), max_bytes=limit)
    with pytest.raises(MessageTooLarge):  # its history does not excuse the rest
        decode_envelope(encode_envelope(one_over.next_attempt(_worst_record(1))), max_bytes=limit)
    for garbage in (b"{" * (limit + 1), b'{"pad": "' + b"x" * limit + b'"}'):  # oversize, not malformed
        with pytest.raises(MessageTooLarge):
            decode_envelope(garbage, max_bytes=limit)

"""The producer refuses, before anything is sent, every payload a worker would dead-letter as
``malformed`` (or that an encoder would silently change): a typed error with a reason code and
one line saying where, never a traceback from deep inside an encoder, never a quiet ``null``."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from conveyor.common.codec import MAX_DEPTH, decode_envelope, strict_json_loads
from conveyor.common.errors import InvalidPayload, MalformedMessage
from conveyor.common.jobs.registry import DEFAULT_QUEUE
from conveyor.common.transport.base import OutgoingMessage
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.producer.producer import Producer


class Reading(BaseModel):
    value: float


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


HOSTILE: dict[str, tuple[Any, str]] = {
    "NaN": ({"value": math.nan}, "payload.value: NaN or infinity"),
    "infinity in a list": ({"values": [1.0, -math.inf]}, "payload.values[1]: NaN or infinity"),
    "an integer beyond 2**53-1": ({"id": 2**53}, "payload.id: an integer beyond"),
    "a lone surrogate": ({"name": "caf\udc80"}, "payload.name: a string with a lone surrogate"),
    "a lone surrogate in a key": ({"caf\udc80": 1}, "payload: a key with a lone surrogate"),
    "nesting one level too deep": ({"x": nested(MAX_DEPTH - 2)}, "nested deeper than"),
    "a model holding NaN": (Reading(value=math.nan), "payload.value: NaN or infinity"),
    # Sent as str(key): {1: "a", "1": "b"} arrived as {"1": "b"}, None as "None", without a word.
    "an int key beside its string twin": ({"meta": {1: "a", "1": "b"}}, "payload.meta: a key that is not a string (int)"),
    "a None key in a list": ({"items": [{None: 1}]}, "payload.items[0]: a key that is not a string (NoneType)"),
    "a tuple key": ({"meta": {(1, 2): 1}}, "payload.meta: a key that is not a string (tuple)"),
}


@pytest.mark.parametrize(("payload", "says"), list(HOSTILE.values()), ids=list(HOSTILE))
async def test_a_payload_no_worker_would_accept_is_refused_before_anything_is_sent(payload: Any, says: str) -> None:
    sent: list[str] = []

    class Recording(MemoryTransport):
        async def publish(self, queue: str, message: OutgoingMessage) -> None:
            sent.append(message.message_id)
            await super().publish(queue, message)

    async with Producer(Recording(MemoryBroker()), allow_unregistered=True) as producer:
        with pytest.raises(MalformedMessage) as err:
            await producer.publish("t.reading", payload)
    assert err.value.reason == "malformed"
    assert says in str(err.value) and "\n" not in str(err.value)
    assert sent == []


async def test_a_payload_right_at_the_limits_is_sent_and_a_worker_decodes_it() -> None:
    broker = MemoryBroker()
    payload = {"x": nested(MAX_DEPTH - 3), "id": 2**53 - 1, "name": "caf\u00e9 \U0001f600", "v": 1e308}
    async with Producer(MemoryTransport(broker), allow_unregistered=True) as producer:
        receipt = await producer.publish("t.reading", payload)
    reader = MemoryTransport(broker)
    await reader.connect()
    delivery = await reader.get(DEFAULT_QUEUE)
    assert delivery is not None
    envelope = decode_envelope(delivery.body)
    assert envelope.job_id == receipt.job_id and envelope.payload.data == payload  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'{"value": NaN}', "JSON constant NaN is not allowed"),
        (b'{"value": 1, "value": 2}', "duplicate JSON object key"),
        (b"value=1", "message is not valid JSON: Expecting value at line 1 column 1"),
        (b'{"value": 1', "message is not valid JSON: Expecting ',' delimiter at line 1 column 12"),
    ],
    ids=["NaN", "duplicate key", "not JSON", "cut short"],
)
def test_publish_input_that_is_not_json_is_a_one_line_typed_error(text: bytes, message: str) -> None:
    # What `conveyor publish --payload` parses its argument with.
    with pytest.raises(MalformedMessage) as err:
        strict_json_loads(text)
    assert (str(err.value), err.value.reason) == (message, "malformed")


ENVELOPE_FIELDS: dict[str, tuple[str, dict[str, Any], str]] = {
    "an empty job type": ("", {}, "job_type: string_pattern_mismatch"),
    "a job type with capitals and a space": ("Send Email", {}, "job_type: string_pattern_mismatch"),
    "a job type of 10,000 characters": ("j" * 10_000, {}, "job_type: string_pattern_mismatch"),
    "an idempotency key of 1,000 characters": ("t.reading", {"idempotency_key": "k" * 1000}, "idempotency_key"),
    "a header name with a space": ("t.reading", {"headers": {"a b": "c"}}, "headers"),
    "a deadline past year 9999": ("t.reading", {"deadline": timedelta(days=10**8)}, "deadline: out of range"),
    "a deadline before year 1": ("t.reading", {"deadline": -timedelta(days=10**8)}, "deadline: out of range"),
}


@pytest.mark.parametrize(("job_type", "options", "says"), list(ENVELOPE_FIELDS.values()), ids=list(ENVELOPE_FIELDS))
async def test_an_envelope_field_the_wire_refuses_is_a_typed_error_never_pydantics(
    job_type: str, options: dict[str, Any], says: str
) -> None:
    # `conveyor publish ""` printed pydantic's ValidationError traceback: the one error that
    # escaped the hierarchy. The value itself is never echoed (it may be a secret).
    async with Producer(MemoryTransport(MemoryBroker()), allow_unregistered=True) as producer:
        with pytest.raises(MalformedMessage) as err:
            await producer.publish(job_type, {"value": 1}, **options)
    assert err.value.reason == "malformed"
    assert says in str(err.value) and "\n" not in str(err.value) and "kkkk" not in str(err.value)


@pytest.mark.parametrize("payload", [[1, 2], [("a", 1)], "ab", 7, None, {1, 2}], ids=repr)
async def test_a_payload_that_is_not_a_mapping_or_a_model_is_an_invalid_payload(payload: Any) -> None:
    # A list reached dict() and raised its TypeError; a list of pairs even became an object.
    async with Producer(MemoryTransport(MemoryBroker()), allow_unregistered=True) as producer:
        with pytest.raises(InvalidPayload, match=f"not {type(payload).__name__}$") as err:
            await producer.publish("t.reading", payload)
    assert err.value.reason == "invalid_payload"


async def test_a_payload_key_that_is_not_a_string_is_a_typed_error() -> None:
    async with Producer(MemoryTransport(MemoryBroker()), allow_unregistered=True) as producer:
        for payload in ({1: 2}, {(1,): 2}):
            with pytest.raises(MalformedMessage) as err:
                await producer.publish("t.reading", payload)
            assert "\n" not in str(err.value)

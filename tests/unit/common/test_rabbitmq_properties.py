"""JobProperties writes exactly the bytes pamqp's generic encoder writes, for every shape."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from pamqp.commands import Basic

from conveyor.common.transport.rabbitmq.properties import JobProperties

JOB_HEADERS = {"x-conveyor-job-type": "bench.noop", "x-conveyor-attempt": "1", "x-conveyor-due-at": "1796423391.652"}


@pytest.mark.parametrize(
    "fields",
    [
        # the fast path: what every publish carries
        {"delivery_mode": 2, "message_id": "caaae87e-73b2-40be-8286-8fabc1c21c2b", "headers": JOB_HEADERS},
        {"delivery_mode": 2, "message_id": "m", "headers": {"b": "é ✓", "a": "", "A": "x"}, "expiration": "50"},
        {"delivery_mode": 2, "headers": {}},
        {"delivery_mode": 2, "message_id": ""},
        {"expiration": "1"},
        {},
        {"headers": {"k" * 128: "v" * 70_000}},
        # pamqp's own path: other value types, a key it truncates, another property, too long an id
        {"headers": {"x-delivery-count": 5, "flag": True, "nested": {"a": [1, "b"]}}},
        {"headers": {"k" * 129: "v"}},
        {"content_type": "application/json", "delivery_mode": 2, "headers": JOB_HEADERS},
        {"delivery_mode": 1, "correlation_id": "c", "app_id": "conveyor"},
        # the known keys (entries worked out once) beside others, before and after them in order
        {"delivery_mode": 2, "headers": {**JOB_HEADERS, "x-conveyor-reason": "exhausted", "traceparent": "00-a-b-01",
                                         "a": "1", "x-conveyor-z": "é", "x-conveyor-attempt-2": "3"}},
        {"headers": {"traceparent": 7, "x-conveyor-attempt": "1"}},  # a known key with a value pamqp encodes
        # every other property set alone (cluster_id's default is "", the rest None): pamqp's path
        *({"delivery_mode": 2, "headers": JOB_HEADERS, name: value} for name, value in (
            ("content_type", "a"), ("content_encoding", "gzip"), ("priority", 0), ("priority", 5),
            ("correlation_id", "c"), ("reply_to", "r"), ("timestamp", datetime(2026, 1, 1)),
            ("message_type", "t"), ("user_id", "conveyor"), ("app_id", "a"),
            ("cluster_id", ""), ("content_type", ""),
        )),
    ],
)
def test_the_same_bytes_as_pamqp(fields: dict[str, Any]) -> None:
    assert JobProperties(**fields).marshal() == Basic.Properties(**fields).marshal()


def test_an_over_long_message_id_is_refused_as_pamqp_refuses_it() -> None:
    with pytest.raises(TypeError, match="maximum length"):
        Basic.Properties(message_id="m" * 256).marshal()
    with pytest.raises(TypeError, match="maximum length"):
        JobProperties(message_id="m" * 256).marshal()


def test_what_pamqp_decodes_is_what_was_given() -> None:
    fields: dict[str, Any] = {"delivery_mode": 2, "message_id": "id-1", "headers": {**JOB_HEADERS, "é": "ü"}, "expiration": "250"}
    encoded = JobProperties(**fields).marshal()
    decoded = Basic.Properties()
    decoded.unmarshal(int.from_bytes(encoded[:2], "big"), encoded[2:])
    assert decoded.headers == fields["headers"]
    assert (decoded.delivery_mode, decoded.message_id, decoded.expiration) == (2, "id-1", "250")

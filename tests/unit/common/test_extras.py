"""A missing broker or store client is a one-line ConfigurationError naming the extra."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from conveyor import ConfigurationError, store_from_url, transport_from_url
from conveyor.common.idempotency import store_from_url as idempotency_store_from_url


def _without(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name in modules else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize(
    ("missing", "extra", "make"),
    [
        ("aio_pika", "rabbitmq", lambda: transport_from_url("amqp://u:secret@h/")),
        ("aiormq", "rabbitmq", lambda: transport_from_url("amqps://u:secret@h/")),
        ("pulsar", "pulsar", lambda: transport_from_url("pulsar://h:6650")),
        ("h11", "pulsar", lambda: transport_from_url("pulsar://h:6650")),  # the admin API's HTTP/1.1
        ("aiobotocore", "s3", lambda: store_from_url("s3://bucket/prefix")),
        ("asyncpg", "postgres", lambda: idempotency_store_from_url("postgresql://u:secret@h/db")),
    ],
)
def test_missing_client_names_the_extra_in_one_line(
    monkeypatch: pytest.MonkeyPatch, missing: str, extra: str, make: Any
) -> None:
    _without(monkeypatch, missing)
    with pytest.raises(ConfigurationError) as raised:
        make()
    message = str(raised.value)
    assert f"pip install 'conveyor[{extra}]'" in message
    assert "\n" not in message and "secret" not in message

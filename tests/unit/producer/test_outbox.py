"""The outbox without a database: rows built by the producer's own checks, driver dispatch, relay settings."""

from __future__ import annotations

from datetime import timedelta

import pytest

from conveyor.common.errors import (
    ConfigurationError,
    InvalidPayload,
    MalformedMessage,
    MessageTooLarge,
    PublishNotConfirmed,
    PublishOutcomeUnknown,
    TransportError,
    UnknownJobType,
)
from conveyor.producer.outbox import Outbox, RelayConfig, migration_sql
from conveyor.producer.outbox.relay import _permanent
from conveyor.schemas.envelope import Envelope
from tests.unit.producer.test_producer import jobs


def test_a_row_carries_the_envelope_the_producer_builds() -> None:
    outbox = Outbox(jobs=jobs())
    row = outbox.row("email.send", {"to": "a@example.com"}, delay=12, ordering_key="k", idempotency_key="welcome-1",
                     headers={"tenant": "t1"})
    envelope = Envelope.model_validate_json(row.envelope)
    assert (envelope.job_id, envelope.idempotency_key, envelope.headers) == (row.job_id, "welcome-1", {"tenant": "t1"})
    assert (row.queue, row.delay_seconds, row.ordering_key, row.job_type) == ("conveyor.default", 12.0, "k", "email.send")
    assert outbox.row("email.send", {"to": "b"}).job_id != row.job_id
    assert outbox.row("email.send", {"to": "b"}, queue="elsewhere").queue == "elsewhere"


@pytest.mark.parametrize(("payload", "job_type", "options", "error"), [
    ({"too": "x"}, "email.send", {}, InvalidPayload),
    ({"to": "x"}, "email.nope", {}, UnknownJobType),
    ({"to": float("nan")}, "email.send", {}, MalformedMessage),
    ({"to": "x"}, "email.send", {"delay": 31 * 86400}, ConfigurationError),
])
def test_what_a_worker_would_refuse_is_refused_at_add(payload: dict[str, object], job_type: str,
                                                      options: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        Outbox(jobs=jobs()).row(job_type, payload, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(("options", "match"), [
    ({"queue": "orders queue"}, "queue 'orders queue'"),
    ({"queue": "orders.dlq"}, "dead-letter queues"),
    ({"queue": "amq.orders"}, "reserved by RabbitMQ"),
    ({"queue": "q" * 200}, "use 1 to 121"),
    ({"ordering_key": ""}, "ordering_key"),
    ({"ordering_key": "user\x00-1"}, "ordering_key"),
    ({"ordering_key": "\udcff"}, "ordering_key"),
])
def test_a_row_the_relay_could_not_send_as_asked_is_refused_at_add(options: dict[str, object], match: str) -> None:
    # Accepted at add, these failed later: the relay's publish was refused (a failed row for an
    # operator) or, on RabbitMQ, declared a work queue of a dead-letter queue's name; an empty
    # key locked like a key but went out unordered; NUL failed in the database driver.
    with pytest.raises(ConfigurationError, match=match):
        Outbox(jobs=jobs()).row("email.send", {"to": "x"}, **options)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        Outbox(jobs=jobs(), routes={"email.send": "mail.dlq"}).row("email.send", {"to": "x"})


def test_add_refuses_a_connection_it_cannot_write_through() -> None:
    with pytest.raises(ConfigurationError, match="cannot write the outbox through a int"):
        Outbox(jobs=jobs()).add(42, "email.send", {"to": "x"})


async def test_add_refuses_a_sqlalchemy_engine_which_is_in_no_transaction() -> None:
    # An Engine is not the application's transaction: the row could only commit on its own.
    # It was an AttributeError traceback ("'Engine' object has no attribute 'execute'").
    from sqlalchemy import create_engine
    from sqlalchemy.ext.asyncio import create_async_engine

    outbox = Outbox(jobs=jobs())
    engine = create_engine("sqlite://")  # never connected
    with pytest.raises(ConfigurationError, match="SQLAlchemy Engine: it is not in your transaction"):
        outbox.add(engine, "email.send", {"to": "x"})
    async_engine = create_async_engine("sqlite+aiosqlite://")
    with pytest.raises(ConfigurationError, match="SQLAlchemy AsyncEngine: it is not in your transaction"):
        await outbox.add_async(async_engine, "email.send", {"to": "x"})
    with pytest.raises(ConfigurationError, match="SQLAlchemy AsyncEngine: it is not in your transaction"):
        outbox.add(async_engine, "email.send", {"to": "x"})
    engine.dispose()
    await async_engine.dispose()


async def test_add_async_refuses_a_sync_connection() -> None:
    with pytest.raises(ConfigurationError, match="use 'outbox.add"):
        await Outbox(jobs=jobs()).add_async(object(), "email.send", {"to": "x"})


def test_the_migration_names_the_table_everywhere() -> None:
    sql = migration_sql("orders_outbox")
    assert "{table}" not in sql
    assert "CREATE TABLE IF NOT EXISTS orders_outbox" in sql and "pg_notify('orders_outbox'" in sql


def test_only_refusals_that_cannot_change_mark_a_row_failed() -> None:
    assert _permanent(PublishNotConfirmed("unroutable")) and _permanent(MessageTooLarge("big"))
    assert not _permanent(PublishOutcomeUnknown("lost confirm")) and not _permanent(TransportError("reset"))
    assert not _permanent(OSError("network"))


@pytest.mark.parametrize("options", [{"batch_size": 0}, {"poll_interval": 0}, {"retention": timedelta(seconds=-1)},
                                     {"table": "Bad Name"}, {"nack_patience": timedelta(seconds=-1)}])
def test_relay_settings_are_checked(options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        RelayConfig(**options)  # type: ignore[arg-type]


def test_a_job_the_relay_could_not_send_is_refused_at_add_unless_the_relay_offloads() -> None:
    big = {"to": "x" * 2_000_000}
    with pytest.raises(MessageTooLarge, match="max_message_bytes=None"):
        Outbox(jobs=jobs()).row("email.send", big)
    assert len(Outbox(jobs=jobs(), max_message_bytes=None).row("email.send", big).envelope) > 2_000_000


async def test_a_failing_chore_is_logged_and_tried_again_not_swallowed(caplog: pytest.LogCaptureFixture) -> None:
    """A clean-up that always fails (no DELETE permission, say) must show in the log: the table
    would otherwise grow without a word."""
    import asyncio
    import logging

    from conveyor.producer.outbox.relay import OutboxRelay

    relay = OutboxRelay("postgresql://unused/db", lambda: None)  # type: ignore[arg-type, return-value]
    stop = asyncio.Event()
    calls = 0

    async def clean_up() -> int:
        nonlocal calls
        calls += 1
        if calls == 3:
            stop.set()
        raise PermissionError("permission denied for table conveyor_outbox")

    with caplog.at_level(logging.WARNING, logger="conveyor.producer.outbox.relay"):
        await asyncio.wait_for(relay._every(0.001, clean_up, stop), 10)
    assert calls == 3
    warned = [r.getMessage() for r in caplog.records if "clean_up" in r.getMessage()]
    assert len(warned) == 3 and "PermissionError: permission denied" in warned[0], warned

"""Numbers no job system can honour are refused where they enter: NaN and infinity in settings,
retry policies and job time limits (NaN passed every ``<=``/``>=`` check, infinity every ``ge``),
and values past what the broker or the clock can take."""

from __future__ import annotations

import math

import pytest
from pydantic import BaseModel, ValidationError

from conveyor import ConfigurationError, JobRegistry, RetryPolicy
from conveyor.common.settings import Settings

SECONDS = ["grace_period", "metrics_interval", "breaker_reset_timeout", "stall_warn_after", "stall_exit_after",
           "payload_timeout", "job_state_lease"]


@pytest.mark.parametrize("name", SECONDS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e308", "86401"])
def test_a_duration_setting_is_a_finite_number_of_seconds_up_to_a_day(name: str, value: str) -> None:
    with pytest.raises(ValidationError, match=name):
        Settings(**{name: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", SECONDS)
def test_a_day_is_still_taken(name: str) -> None:
    values = {name: "86400", **({"stall_exit_after": "86400"} if name == "stall_warn_after" else {})}
    assert getattr(Settings(**values), name) == 86400  # type: ignore[arg-type]


def test_prefetch_stops_where_amqp_does() -> None:
    assert Settings(prefetch=65535).prefetch == 65535
    with pytest.raises(ValidationError, match="prefetch"):
        Settings(prefetch=65536)  # basic.qos carries 16 bits: it was a TypeError at consume


@pytest.mark.parametrize("field", ["max_age", "base", "factor", "cap", "jitter"])
def test_a_retry_policy_with_nan_is_refused_naming_the_field(field: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{field} must be a number, not NaN"):
        RetryPolicy(**{field: math.nan})


class Nap(BaseModel):
    seconds: float = 0


@pytest.mark.parametrize("timeout", [math.nan, math.inf, 0.0, -1.0])
def test_a_job_time_limit_is_a_positive_finite_number_of_seconds(timeout: float) -> None:
    jobs = JobRegistry()
    with pytest.raises(ConfigurationError, match="timeout must be a positive number of seconds"):
        @jobs.job("naps.take", timeout=timeout)
        async def nap(payload: Nap) -> None: ...


@pytest.mark.parametrize(("option", "value"), [
    ("confirm_timeout", math.nan), ("confirm_timeout", math.inf), ("confirm_timeout", 0.0),
    ("publish_tries", math.nan), ("publish_tries", 0), ("publish_tries", 2.5),
    ("max_message_bytes", math.inf), ("max_message_bytes", -1),
    ("payload_threshold", math.nan), ("payload_threshold", -1),
])
def test_a_producer_refuses_a_number_it_cannot_honour_naming_it(option: str, value: float) -> None:
    from conveyor import MemoryBroker, MemoryTransport, Producer

    with pytest.raises(ConfigurationError, match=option):
        Producer(MemoryTransport(MemoryBroker()), **{option: value})


@pytest.mark.parametrize(("option", "value"), [
    ("concurrency", math.nan), ("concurrency", 0), ("prefetch", 65536), ("prefetch", math.inf),
    ("grace_period", math.nan), ("grace_period", math.inf), ("metrics_interval", math.nan),
    ("crash_limit", math.nan), ("crash_limit", 0), ("cpu_time_every", 0), ("max_message_bytes", -1),
])
def test_a_worker_config_refuses_a_number_it_cannot_honour_naming_it(option: str, value: float) -> None:
    from conveyor import WorkerConfig

    with pytest.raises(ConfigurationError, match=option):
        WorkerConfig(**{option: value})


@pytest.mark.parametrize(("option", "value"), [
    ("reset_timeout", math.inf), ("reset_timeout", math.nan), ("consecutive_failures", math.nan),
    ("failure_rate", math.nan), ("failure_rate", 0.0), ("window", 0), ("min_calls", -1),
])
def test_a_breaker_that_could_never_close_or_open_is_refused(option: str, value: float) -> None:
    from conveyor.consumer.breaker import BreakerConfig

    with pytest.raises(ConfigurationError, match=option):
        BreakerConfig(**{option: value})


@pytest.mark.parametrize(("option", "value"), [
    ("warn_after", math.nan), ("interval", math.inf), ("exit_after", math.nan), ("exit_after", math.inf),
])
def test_a_watchdog_with_a_number_it_cannot_honour_is_refused(option: str, value: float) -> None:
    from conveyor.consumer.watchdog import WatchdogConfig

    with pytest.raises(ConfigurationError, match=option):
        WatchdogConfig(**{option: value})


@pytest.mark.parametrize(("option", "value"), [
    ("connect_timeout", math.nan), ("reconnect_interval", math.inf), ("consumer_timeout", math.nan),
    ("delivery_limit", math.nan),
])
def test_a_rabbitmq_transport_refuses_a_number_it_cannot_honour(option: str, value: float) -> None:
    from conveyor.common.transport.rabbitmq import RabbitMQTransport

    with pytest.raises(ConfigurationError, match=option):
        RabbitMQTransport("amqp://u:p@127.0.0.1:1/", **{option: value})


@pytest.mark.parametrize(("option", "value"), [
    ("send_timeout", math.nan), ("operation_timeout", math.inf), ("connect_timeout", math.nan),
    ("nack_delay", math.nan), ("get_wait", math.inf), ("get_max_wait", math.nan),
    ("receiver_queue_size", math.nan), ("max_pending_sends", math.inf),
])
def test_a_pulsar_transport_refuses_a_number_it_cannot_honour(option: str, value: float) -> None:
    from conveyor.common.transport.pulsar import PulsarTransport

    with pytest.raises(ConfigurationError, match=option):
        PulsarTransport("pulsar://127.0.0.1:1", **{option: value})

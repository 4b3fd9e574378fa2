"""Numbers no job system can honour are refused where they enter: NaN and infinity in settings,
retry policies and job time limits (NaN passed every ``<=``/``>=`` check, infinity every ``ge``),
and values past what the broker or the clock can take."""

from __future__ import annotations

import math

import pytest
from pydantic import BaseModel, ValidationError

from conveyor import ConfigurationError, JobContext, JobRegistry, RetryPolicy
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
        async def nap(payload: Nap, ctx: JobContext) -> None: ...


def _producer(**options: float) -> object:
    from conveyor import MemoryBroker, MemoryTransport, Producer

    return Producer(MemoryTransport(MemoryBroker()), **options)  # type: ignore[arg-type]


def _worker_config(**options: float) -> object:
    from conveyor import WorkerConfig

    return WorkerConfig(**options)  # type: ignore[arg-type]


def _breaker(**options: float) -> object:
    from conveyor.consumer.breaker import BreakerConfig

    return BreakerConfig(**options)  # type: ignore[arg-type]


def _watchdog(**options: float) -> object:
    from conveyor.consumer.watchdog import WatchdogConfig

    return WatchdogConfig(**options)


def _rabbitmq(**options: float) -> object:
    from conveyor.common.transport.rabbitmq import RabbitMQTransport

    return RabbitMQTransport("amqp://u:p@127.0.0.1:1/", **options)  # type: ignore[arg-type]


def _pulsar(**options: float) -> object:
    from conveyor.common.transport.pulsar import PulsarTransport

    return PulsarTransport("pulsar://127.0.0.1:1", **options)  # type: ignore[arg-type]


def _relay(**options: float) -> object:
    from conveyor.producer.outbox.relay import RelayConfig

    return RelayConfig(**options)  # type: ignore[arg-type]


def _payload_store(**options: float) -> object:
    from conveyor.common.payload_store.memory import MemoryPayloadStore

    return MemoryPayloadStore(**options)  # type: ignore[arg-type]


# (what is built, the option, a value it cannot honour): NaN and infinity for durations (no
# timeout at all, a breaker that never half-opens), NaN, fractions and out-of-range for counts.
REFUSED = [
    (_producer, "confirm_timeout", math.nan), (_producer, "confirm_timeout", math.inf), (_producer, "confirm_timeout", 0.0),
    (_producer, "publish_tries", math.nan), (_producer, "publish_tries", 0), (_producer, "publish_tries", 2.5),
    (_producer, "max_message_bytes", math.inf), (_producer, "max_message_bytes", -1),
    (_producer, "payload_threshold", math.nan), (_producer, "payload_threshold", -1),
    (_worker_config, "concurrency", math.nan), (_worker_config, "concurrency", 0),
    (_worker_config, "prefetch", 65536), (_worker_config, "prefetch", math.inf),  # 65536: a TypeError at consume
    (_worker_config, "grace_period", math.nan), (_worker_config, "grace_period", math.inf),
    (_worker_config, "metrics_interval", math.nan), (_worker_config, "crash_limit", math.nan),
    (_worker_config, "crash_limit", 0), (_worker_config, "cpu_time_every", 0), (_worker_config, "max_message_bytes", -1),
    (_breaker, "reset_timeout", math.inf), (_breaker, "reset_timeout", math.nan),
    (_breaker, "consecutive_failures", math.nan), (_breaker, "failure_rate", math.nan),
    (_breaker, "failure_rate", 0.0), (_breaker, "window", 0), (_breaker, "min_calls", -1),
    (_watchdog, "warn_after", math.nan), (_watchdog, "interval", math.inf),
    (_watchdog, "exit_after", math.nan), (_watchdog, "exit_after", math.inf),
    (_rabbitmq, "connect_timeout", math.nan), (_rabbitmq, "reconnect_interval", math.inf),
    (_rabbitmq, "consumer_timeout", math.nan), (_rabbitmq, "delivery_limit", math.nan),
    (_pulsar, "send_timeout", math.nan), (_pulsar, "operation_timeout", math.inf),
    (_pulsar, "connect_timeout", math.nan), (_pulsar, "nack_delay", math.nan), (_pulsar, "get_wait", math.inf),
    (_pulsar, "get_max_wait", math.nan), (_pulsar, "receiver_queue_size", math.nan),
    (_pulsar, "max_pending_sends", math.inf),
    (_relay, "poll_interval", math.nan), (_relay, "cleanup_interval", math.inf), (_relay, "metrics_interval", 0.0),
    (_rabbitmq, "delay_tiers", [5.0, math.nan]), (_rabbitmq, "delay_tiers", [math.inf]),
    (_payload_store, "timeout", math.nan), (_payload_store, "max_bytes", math.inf),
    (_relay, "backoff_cap", math.nan), (_relay, "shutdown_grace", math.nan), (_relay, "batch_size", 0),
]


@pytest.mark.parametrize(("build", "option", "value"), REFUSED,
                         ids=[f"{b.__name__[1:]}-{o}-{v}" for b, o, v in REFUSED])  # type: ignore[attr-defined]
def test_a_constructor_refuses_a_number_it_cannot_honour_naming_it(build, option: str, value: object) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigurationError, match=option):
        build(**{option: value})


async def test_a_call_with_a_timeout_it_cannot_honour_is_refused_before_it_waits() -> None:
    from conveyor import MemoryBroker, MemoryJobStateStore, MemoryTransport, Producer, SyncProducer, Worker

    broker, jobs = MemoryBroker(), JobRegistry()

    @jobs.job("naps.take")
    async def nap(payload: Nap, ctx: JobContext) -> None: ...

    async with Producer.for_registry(MemoryTransport(broker), jobs, job_state=MemoryJobStateStore()) as producer:
        handle = await producer.publish("naps.take", Nap())
        with pytest.raises(ConfigurationError, match="timeout"):
            await handle.result(timeout=math.nan)  # timed out at once, whatever the job's state
    transport = MemoryTransport(broker)
    await transport.connect()
    async with Worker(transport, jobs) as worker:
        with pytest.raises(ConfigurationError, match="grace_period"):
            await worker.drain(grace_period=math.nan)  # cut every job in flight short at once
    with pytest.raises(ConfigurationError, match="exit_timeout"):
        SyncProducer.from_url("memory://", exit_timeout=math.inf)


COUNTS = [name for name, field in Settings.model_fields.items() if field.annotation in (int, int | None)]


def test_the_counts_are_the_settings_that_need_a_top() -> None:
    assert {"max_message_bytes", "crash_limit", "breaker_consecutive_failures", "payload_threshold_bytes",
            "payload_max_bytes", "concurrency", "prefetch", "http_port"} <= set(COUNTS)


@pytest.mark.parametrize("name", COUNTS)
def test_every_count_setting_refuses_a_number_past_its_top_naming_it(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Past 64 bits, CONVEYOR_MAX_MESSAGE_BYTES, _CRASH_LIMIT, _BREAKER_CONSECUTIVE_FAILURES and
    # _PAYLOAD_*_BYTES were taken, and the worker died at start with orjson's TypeError traceback.
    monkeypatch.setenv(f"CONVEYOR_{name.upper()}", "99999999999999999999999")
    with pytest.raises(ValidationError, match=name):
        Settings()


BLANK_REFUSED = ["http_host", "state_dir", "tls_ca_file", "tls_cert_file", "tls_key_file", "s3_endpoint_url",
                 "s3_access_key", "s3_region"]


@pytest.mark.parametrize("name", BLANK_REFUSED)
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_address_or_path_variable_is_refused_not_taken(name: str, value: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # CONVEYOR_HTTP_HOST="" listened on every interface (0.0.0.0 and ::) instead of 127.0.0.1;
    # an empty path was "." (the crash journal in the working directory).
    monkeypatch.setenv(f"CONVEYOR_{name.upper()}", value)
    with pytest.raises(ValidationError, match=f"{name}\\n.*must not be empty"):
        Settings()


def test_an_unset_address_or_path_keeps_its_default() -> None:
    settings = Settings()
    assert settings.http_host == "127.0.0.1" and settings.state_dir is None and settings.tls_ca_file is None

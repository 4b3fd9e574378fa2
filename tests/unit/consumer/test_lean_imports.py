"""A worker loads only what its configuration uses (issue 18, worker RSS).

Each case runs in a fresh interpreter, builds a worker the way a user's module does, and
lists which optional modules got imported. Resident memory is roughly proportional to the
modules a process has loaded, so these names are the guard, not a size or time assertion.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

# Heavyweight or optional modules a plain worker must not load: the producer and its retry
# library, the job-state and idempotency store drivers and their SQL layer, the payload-store
# factory (S3 client), OpenTelemetry's API, pydantic-settings and the CLI's click/rich.
OPTIONAL = (
    "tenacity",
    "opentelemetry",
    "conveyor.producer.producer",
    "conveyor.producer.sync_producer",
    "conveyor.common.job_state.postgres",
    "conveyor.common.job_state.sql_store",
    "conveyor.common.job_state.writer",
    "conveyor.common.job_state.spill",
    "conveyor.common.job_state.handle",
    "conveyor.common.idempotency.postgres",
    "conveyor.common.idempotency.memory",
    "conveyor.consumer.middleware.idempotency",
    "conveyor.consumer.middleware.job_state",
    "conveyor.common.payload_store.factory",
    "conveyor.common.payload_store.s3",
    "conveyor.common.payload_store.filesystem",
    "conveyor.common.transport.memory",
    "conveyor.common.settings",
    "pydantic_settings",
    "sqlite3",
    "asyncpg",
    "aiosqlite",
    "aiobotocore",
    "botocore",
    "click",
    "rich",
)

# A user's module: one pydantic-validated job (also the CLI test's app).
REGISTRY_SOURCE = """
from pydantic import BaseModel
from conveyor import JobContext, JobRegistry

class Ping(BaseModel):
    n: int

jobs = JobRegistry()

@jobs.job("ping", model=Ping)
async def ping(payload: Ping, ctx: JobContext) -> None:
    return None
"""

_PREAMBLE = """
import json, sys
from conveyor import Worker, WorkerConfig
from conveyor.common.transport.{broker} import {transport}
transport = {transport}({url!r})
"""

BROKERS = {
    "rabbitmq": ("RabbitMQTransport", "amqp://guest:guest@127.0.0.1:1/"),
    "pulsar": ("PulsarTransport", "pulsar://127.0.0.1:1"),
}


def _loaded(broker: str, body: str) -> set[str]:
    transport, url = BROKERS[broker]
    script = REGISTRY_SOURCE + _PREAMBLE.format(broker=broker, transport=transport, url=url) + textwrap.dedent(body) + (
        "\nprint(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def _optional(loaded: set[str]) -> set[str]:
    return {name for name in OPTIONAL if name in loaded}


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_a_plain_worker_loads_no_optional_module(broker: str) -> None:
    loaded = _loaded(broker, "worker = Worker(transport, jobs, config=WorkerConfig(concurrency=4))")
    assert "conveyor.consumer.worker" in loaded and "prometheus_client" in loaded  # metrics stay on
    assert _optional(loaded) == set()


def test_the_other_broker_is_not_loaded() -> None:
    assert "aio_pika" not in _loaded("pulsar", "Worker(transport, jobs)")
    assert "aiormq" not in _loaded("pulsar", "Worker(transport, jobs)")
    assert "pulsar" not in _loaded("rabbitmq", "Worker(transport, jobs)")


def test_a_configured_job_state_store_loads_its_middleware() -> None:
    loaded = _loaded("pulsar", """
        from conveyor import MemoryJobStateStore
        worker = Worker(transport, jobs, job_state=MemoryJobStateStore())
        assert worker.job_state is not None
    """)
    assert {"conveyor.consumer.middleware.job_state", "conveyor.common.job_state.writer"} <= loaded
    assert "conveyor.common.job_state.postgres" not in loaded  # the memory store needs no SQL driver


def test_a_configured_idempotency_store_loads_its_middleware() -> None:
    loaded = _loaded("rabbitmq", """
        from conveyor.common.idempotency import store_from_url
        from conveyor.consumer.middleware.idempotency import IdempotencyMiddleware
        worker = Worker(transport, jobs, idempotency=store_from_url("memory://"))
        assert any(isinstance(m, IdempotencyMiddleware) for m in worker.middlewares)
    """)
    assert {"conveyor.consumer.middleware.idempotency", "conveyor.common.idempotency.memory"} <= loaded
    assert "conveyor.common.idempotency.postgres" not in loaded


def test_log_lines_carry_trace_ids_once_opentelemetry_is_in_use() -> None:
    # The logger no longer imports OpenTelemetry itself: an active span of the app's own must
    # still put its ids on the line.
    loaded = _loaded("pulsar", """
        import io, logging
        from opentelemetry.sdk.trace import TracerProvider
        from conveyor.common.logging import configure_logging
        stream = io.StringIO()
        configure_logging("INFO", "json", stream=stream)
        with TracerProvider().get_tracer("t").start_as_current_span("s") as span:
            logging.getLogger("x").info("inside")
        line = json.loads(stream.getvalue().splitlines()[-1])
        assert line["trace_id"] == format(span.get_span_context().trace_id, "032x"), line
    """)
    assert "opentelemetry" in loaded

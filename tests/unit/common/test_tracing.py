"""One trace per job: publish → every attempt → dead letter → replay, with the OTel SDK."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.clock import FakeClock
from conveyor.common.errors import RetryableError
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.logging import configure_logging
from conveyor.common.tracing import TracingMiddleware
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer.ops.dead_letters import DeadLetters
from conveyor.consumer.worker import Worker
from conveyor.producer.producer import Producer

ROOT = Path(__file__).resolve().parents[3]


class Job(BaseModel):
    n: int


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def _advance(clock: FakeClock, seconds: float) -> None:
    for _ in range(int(seconds * 10)):
        clock.advance(0.1)
        for _ in range(10):
            await asyncio.sleep(0)


async def test_publish_attempts_dead_letter_and_replay_share_one_trace(spans) -> None:
    provider, exporter = spans
    clock = FakeClock()
    broker = MemoryBroker(clock)
    fixed = False
    jobs = JobRegistry()

    @jobs.job("t.traced", retry=RetryPolicy(max_attempts=3, base=1, factor=1, jitter=0))
    async def handler(payload: Job, ctx: JobContext) -> None:
        logging.getLogger("app").warning("handling attempt %d", ctx.attempt)
        if not fixed:
            raise RetryableError("downstream is down")

    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    tracing = TracingMiddleware(tracer_provider=provider)
    worker_transport = MemoryTransport(broker)
    await worker_transport.connect()
    try:
        async with Producer.for_registry(MemoryTransport(broker), jobs, clock=clock, middlewares=[tracing]) as producer:
            async with Worker(worker_transport, jobs, clock=clock, middlewares=[tracing], rng=random.Random(1)):
                await producer.publish("t.traced", Job(n=1))
                await _advance(clock, 5)
                dlq = DeadLetters(producer.transport, DEFAULT_QUEUE, clock=clock)
                [record] = await dlq.list()
                assert record.reason == "exhausted"
                assert "traceparent" in record.original_headers
                fixed = True
                report = await dlq.replay()
                assert report.replayed == 1
                await _advance(clock, 1)
                await broker.join(DEFAULT_QUEUE)
    finally:
        logging.getLogger().handlers.clear()

    finished = exporter.get_finished_spans()
    [publish] = [s for s in finished if s.kind is SpanKind.PRODUCER]
    processes = sorted((s for s in finished if s.kind is SpanKind.CONSUMER), key=lambda s: s.start_time)
    assert publish.name == f"{DEFAULT_QUEUE} publish"
    assert [s.attributes["conveyor.attempt"] for s in processes] == [1, 2, 3, 1]  # 3 tries, then the replay
    trace_id = publish.context.trace_id
    assert {s.context.trace_id for s in finished} == {trace_id}, "one trace for the whole life of the job"
    assert all(s.parent is not None and s.parent.span_id == publish.context.span_id for s in processes)
    assert [s.status.status_code for s in processes] == [StatusCode.ERROR] * 3 + [StatusCode.UNSET]
    assert processes[0].events[0].name == "exception"

    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    handling = [line for line in lines if line["msg"].startswith("handling attempt")]
    assert len(handling) == 4
    assert {line["trace_id"] for line in handling} == {format(trace_id, "032x")}
    assert [line["span_id"] for line in handling] == [format(s.context.span_id, "016x") for s in processes]
    failed = [line for line in lines if line["msg"] == "job attempt failed"]
    assert len(failed) == 3 and all(line["trace_id"] == format(trace_id, "032x") for line in failed)


async def test_publish_inside_an_application_span_continues_its_trace(spans) -> None:
    provider, exporter = spans
    broker = MemoryBroker()
    jobs = JobRegistry()

    @jobs.job("t.child")
    async def handler(payload: Job, ctx: JobContext) -> None:
        return None

    tracing = TracingMiddleware(tracer_provider=provider)
    async with Producer.for_registry(MemoryTransport(broker), jobs, middlewares=[tracing]) as producer:
        with provider.get_tracer("app").start_as_current_span("POST /orders") as request:
            await producer.publish("t.child", Job(n=2))
    [publish] = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    assert publish.context.trace_id == request.get_span_context().trace_id
    assert publish.parent.span_id == request.get_span_context().span_id


def test_conveyor_imports_and_runs_without_opentelemetry() -> None:
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # as if the otel extra were not installed\n"
        "import asyncio, conveyor.common.tracing, conveyor.common.logging, conveyor.consumer.worker, conveyor.consumer.cli, conveyor.producer.producer\n"
        "from conveyor.consumer.ops.demo import run_demo\n"
        "assert not conveyor.common.tracing.tracing_available()\n"
        "assert conveyor.common.tracing.current_trace_ids() is None\n"
        "try:\n"
        "    conveyor.common.tracing.TracingMiddleware()\n"
        "except Exception as exc:\n"
        "    assert 'conveyor[otel]' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('TracingMiddleware needs OpenTelemetry')\n"
        "import logging, io\n"
        "conveyor.common.logging.configure_logging('INFO', 'json', io.StringIO())\n"
        "logging.getLogger('x').warning('works')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_configure_tracing_installs_an_otlp_exporter_named_after_the_service() -> None:
    code = (
        "from opentelemetry import trace\n"
        "from conveyor.common.tracing import configure_tracing\n"
        "provider = configure_tracing('conveyor-worker', 'otlp')\n"
        "assert trace.get_tracer_provider() is provider\n"
        "assert provider.resource.attributes['service.name'] == 'conveyor-worker'\n"
        "[processor] = provider._active_span_processor._span_processors\n"
        "assert type(processor.span_exporter).__name__ == 'OTLPSpanExporter'\n"
        "provider.shutdown()\n"
        "try:\n"
        "    configure_tracing('x', 'zipkin')\n"
        "except Exception as exc:\n"
        "    assert 'otlp or console' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('unknown exporter accepted')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**env, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr

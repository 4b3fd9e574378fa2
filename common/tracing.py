"""OpenTelemetry tracing, as middleware. Optional: ``pip install 'conveyor[otel]'``.

This module imports cleanly without OpenTelemetry; only creating a ``TracingMiddleware`` or
calling ``configure_tracing`` needs it. One job is one trace::

    app span (if any) ─▶ "orders publish" (PRODUCER)          producer: publish hook
                             │  W3C traceparent/tracestate in the transport headers
                             ├─▶ "orders process" attempt 1 (CONSUMER, error)
                             ├─▶ "orders process" attempt 2 (CONSUMER, error)   retry copies keep
                             └─▶ "orders process" attempt 3 … / replayed from the DLQ  the headers

* The **publish hook** starts a PRODUCER span (a child of whatever span is active, e.g. the
  web request that enqueued the job) and injects its context into the transport headers.
* The **consume hook** continues that context: a CONSUMER span per attempt with the job id,
  type, attempt and delivery count; exceptions are recorded on it. The handler runs inside
  it, so the handler's own spans (HTTP clients, databases) nest under it.
* Settlement copies non-``x-`` headers onto retry, deferral and dead-letter copies, and
  ``dlq replay`` republishes with them (``common.headers``): every attempt, the dead letter
  and a later replay stay in the trace of the original publish.
* Log lines written while a job's span is active carry ``trace_id`` and ``span_id``
  (``common.logging``), including the worker's "job attempt failed" line.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from conveyor.common.errors import ConfigurationError
from conveyor.common.logging import job_log_fields
from conveyor.common.middleware import ConsumeNext, Middleware, PublishNext

try:  # the optional dependency
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind
except ImportError:  # pragma: no cover - exercised by the "imports cleanly" test
    propagate = trace = SpanKind = None  # type: ignore[assignment, misc]  # OTel absent: None marks it (tracing_available)

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

    from conveyor.common.jobs.command import PublishCommand
    from conveyor.common.jobs.context import JobContext

__all__ = ["TracingMiddleware", "configure_tracing", "current_trace_ids", "tracing_available"]

_INSTRUMENTATION = "conveyor"


def tracing_available() -> bool:
    return trace is not None


def current_trace_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` in W3C hex of the active span, or None (none, or no OTel)."""
    if trace is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def _require() -> None:
    if trace is None:
        raise ConfigurationError("tracing needs OpenTelemetry: pip install 'conveyor[otel]'")


class TracingMiddleware(Middleware):
    """Spans for publish and for each attempt, linked through W3C headers (module docs)."""

    def __init__(self, tracer_provider: Any = None, propagator: Any = None) -> None:
        _require()
        self._tracer = trace.get_tracer(_INSTRUMENTATION, tracer_provider=tracer_provider)
        self._propagator = propagator

    def _textmap(self) -> Any:
        # Looked up per call, so a propagator configured after start-up is honoured.
        return self._propagator or propagate.get_global_textmap()

    async def publish(self, cmd: PublishCommand, call_next: PublishNext) -> None:
        envelope = cmd.envelope
        attributes: dict[str, AttributeValue] = {
            "messaging.system": "conveyor",
            "messaging.operation.type": "send",
            "messaging.destination.name": cmd.queue,
            "messaging.message.id": envelope.job_id,
            "messaging.message.conversation_id": envelope.correlation_id,
            "conveyor.job_type": envelope.job_type,
            "conveyor.attempt": envelope.attempt,
            "conveyor.delay_seconds": cmd.delay,
        }
        with self._tracer.start_as_current_span(
            f"{cmd.queue} publish", kind=SpanKind.PRODUCER, attributes=attributes
        ):
            self._textmap().inject(cmd.headers)
            await call_next(cmd)

    async def consume(self, ctx: JobContext, call_next: ConsumeNext) -> Any:
        parent = self._textmap().extract(ctx.headers)
        attributes: dict[str, AttributeValue] = {
            "messaging.system": "conveyor",
            "messaging.operation.type": "process",
            "messaging.destination.name": ctx.queue,
            "messaging.message.id": ctx.job_id,
            "messaging.message.conversation_id": ctx.correlation_id,
            "conveyor.job_type": ctx.job_type,
            "conveyor.attempt": ctx.attempt,
            "conveyor.worker_id": ctx.worker_id,
        }
        with self._tracer.start_as_current_span(
            f"{ctx.queue} process", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        ) as span:
            ctx.state["span"] = span
            ids = current_trace_ids()
            fields = job_log_fields.get()
            if ids and fields is not None:
                # The job's log fields outlive the span (the log middleware reports the
                # failure after it ended): put the ids there too.
                fields["trace_id"], fields["span_id"] = ids
            return await call_next(ctx)


def configure_tracing(service_name: str, exporter: str = "otlp") -> Any:
    """Install a global ``TracerProvider`` exporting to ``exporter`` (otlp | console).

    OTLP settings come from the standard ``OTEL_EXPORTER_OTLP_*`` environment variables.
    Returns the provider; call its ``shutdown()`` before exiting to flush spans.
    """
    _require()
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )
        except ImportError as exc:
            raise ConfigurationError(
                "OTLP export needs opentelemetry-exporter-otlp-proto-http: pip install 'conveyor[otel]'"
            ) from exc
        span_exporter: Any = OTLPSpanExporter()
    elif exporter == "console":
        span_exporter = ConsoleSpanExporter()
    else:
        raise ConfigurationError(f"unknown trace exporter {exporter!r}: use otlp or console")
    # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win over our default name.
    named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    provider = TracerProvider(resource=Resource.create({} if named else {"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    return provider

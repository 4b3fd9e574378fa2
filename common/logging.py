"""Structured JSON logs (one orjson object per line), with secrets masked.

Fields passed with ``extra={...}`` (job_id, correlation_id, attempt, job_type, …) become
top-level keys. With OpenTelemetry installed, a line written while a span is active carries
its ``trace_id`` and ``span_id``. Anything that looks like a credential in a URL is masked, and long values
are truncated so one hostile message cannot flood the log.
"""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

import orjson

try:  # optional: trace ids on log lines when OpenTelemetry is installed
    from opentelemetry import trace as _otel_trace
except ImportError:  # pragma: no cover
    _otel_trace = None  # type: ignore[assignment]

__all__ = ["JobLogContext", "JsonFormatter", "configure_logging", "job_log_fields", "mask_secrets"]

# The job being handled in this task: its fields are added to every log line written while
# it runs, including the handler's own ``logging`` calls. A ContextVar, so concurrent jobs
# in one process never mix their fields.
job_log_fields: ContextVar[dict[str, Any] | None] = ContextVar("conveyor_job_log_fields", default=None)


class JobLogContext:
    """``with JobLogContext(fields):`` — every log line inside carries ``fields``."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self._fields = fields
        self._token: Token[dict[str, Any] | None] | None = None

    def __enter__(self) -> None:
        self._token = job_log_fields.set(self._fields)

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            job_log_fields.reset(self._token)

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@", re.I)
_MAX_VALUE = 2000
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def mask_secrets(text: str) -> str:
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return mask_secrets(value)[:_MAX_VALUE]
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return mask_secrets(str(value))[:_MAX_VALUE]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _clean(record.getMessage()),
        }
        job = job_log_fields.get()
        if job:
            entry.update(job)
        _add_trace_ids(entry)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, list) else _clean(value)
        if record.exc_info:
            entry["exc"] = mask_secrets(self.formatException(record.exc_info))[-8000:]
        return orjson.dumps(entry, default=str).decode()


def _add_trace_ids(entry: dict[str, Any]) -> None:
    if _otel_trace is None:
        return
    context = _otel_trace.get_current_span().get_span_context()
    if context.is_valid:
        entry["trace_id"] = format(context.trace_id, "032x")
        entry["span_id"] = format(context.span_id, "016x")


def configure_logging(level: str = "INFO", fmt: str = "json", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiormq").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("aio_pika").setLevel(max(logging.WARNING, root.level))

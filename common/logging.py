"""Structured JSON logs (one orjson object per line), with secrets masked.

Fields passed with ``extra={...}`` (job_id, correlation_id, attempt, job_type, …) become
top-level keys. With OpenTelemetry installed, a line written while a span is active carries
its ``trace_id`` and ``span_id``. Anything that looks like a credential in a URL is masked, as is
every secret value the process knows (``redact``: a ``common.secrets.Redactor``, passed in by
whoever configures logging). Values are truncated and a whole line is bounded (16 KiB), so one
hostile message cannot flood the log; JSON escapes newlines and quotes, and the text format
escapes newlines too: one record is always one line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

import orjson

from conveyor.common.secrets import mask_secrets

__all__ = [
    "PULSAR_NATIVE_LOGGER",
    "JobLogContext",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "job_log_fields",
    "mask_secrets",
]

# The Pulsar client's native log follows this logger's level (common/transport/pulsar/transport.py).
PULSAR_NATIVE_LOGGER = "conveyor.pulsar.native"

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

_MAX_VALUE = 2000
_MAX_EXC = 8000
_MAX_LIST = 50
_MAX_LINE = 16 * 1024  # characters of one JSON line, all fields together
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}

Redact = Callable[[str], str]


class JsonFormatter(logging.Formatter):
    def __init__(self, redact: Redact = mask_secrets) -> None:
        super().__init__()
        self._redact = redact
        self._second: tuple[int, str] = (-1, "")  # one tuple: swapped whole, never half-updated

    def format(self, record: logging.LogRecord) -> str:
        clean = self._clean
        entry: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": clean(record.getMessage()),
        }
        job = job_log_fields.get()
        if job:
            for key, value in job.items():
                entry[key] = clean(value)
        _add_trace_ids(entry)
        attributes = record.__dict__
        extra = attributes.keys() - _STANDARD  # a set difference in C, not a loop over ~20 names
        if extra:
            # In the record's own order (``extra=`` keys come last); most lines have one.
            for key in extra if len(extra) == 1 else [k for k in attributes if k in extra]:
                if not key.startswith("_"):
                    value = attributes[key]
                    entry[key] = [clean(v) for v in value[:_MAX_LIST]] if isinstance(value, list) else clean(value)
        if record.exc_info:
            entry["exc"] = self._redact(self.formatException(record.exc_info)[-_MAX_EXC * 4 :])[-_MAX_EXC:]
        line = orjson.dumps(entry, default=str).decode()
        return line if len(line) <= _MAX_LINE else _shrunk(entry)

    def _timestamp(self, created: float) -> str:
        """``datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")``, with the
        part up to the second worked out once a second: most of a log line's formatting cost."""
        second = int(created)
        micros = round((created - second) * 1e6)  # as datetime rounds a timestamp
        if not 0 <= micros < 1_000_000:  # the next second, or before 1970: the slow way
            return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        cached, prefix = self._second
        if cached != second:
            prefix = datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds")[:-6]
            self._second = (second, prefix)
        return f"{prefix}.{micros // 1000:03d}+00:00"

    def _clean(self, value: Any, limit: int = _MAX_VALUE) -> Any:
        if type(value) is str:  # most values: no isinstance chain
            if len(value) <= limit:  # most of those: nothing to cut before or after masking
                text = self._redact(value)
                return text if len(text) <= limit else text[:limit]
            text = value
        elif isinstance(value, (int, float, bool)) or value is None:
            return value
        else:
            text = str(value)
        return self._redact(text[: limit * 4])[:limit]  # cut first: a 1 MB value is not scanned whole


def _shrunk(entry: dict[str, Any]) -> str:
    """A line over the bound: every value cut to a few hundred characters, then extra keys dropped."""
    small = {key: (value[:300] if isinstance(value, str) else value) for key, value in entry.items()
             if not isinstance(value, list)}
    small["exc"] = str(entry.get("exc", ""))[-2000:] or None
    small["truncated"] = True
    line = orjson.dumps(small, default=str).decode()
    if len(line) <= _MAX_LINE:
        return line
    core = {key: small[key] for key in ("ts", "level", "logger", "msg", "truncated") if key in small}
    return orjson.dumps(core, default=str).decode()


class TextFormatter(logging.Formatter):
    """``time level logger: message`` on one line: secrets masked, newlines escaped, bounded."""

    def __init__(self, redact: Redact = mask_secrets) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        text = self._redact(super().format(record)[: _MAX_LINE * 4])[:_MAX_LINE]
        return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


def _add_trace_ids(entry: dict[str, Any]) -> None:
    # Only once something has loaded OpenTelemetry's API (tracing configured, or the app's own
    # spans) can a span be active: until then there is nothing to add, and a worker without
    # tracing does not carry the API's modules (issue 18, worker RSS).
    otel_trace = sys.modules.get("opentelemetry.trace")
    if otel_trace is None:
        return
    context = otel_trace.get_current_span().get_span_context()
    if context.is_valid:
        entry["trace_id"] = format(context.trace_id, "032x")
        entry["span_id"] = format(context.span_id, "016x")


def configure_logging(level: str, fmt: str = "json", stream: Any = None, redact: Redact = mask_secrets) -> None:
    """One handler on the root logger; ``redact`` masks the secrets this process knows.

    ``level`` has no default here: it is ``Settings.log_level``'s (WARNING), the one default."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(redact) if fmt == "json" else TextFormatter(redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiormq").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("aio_pika").setLevel(max(logging.WARNING, root.level))

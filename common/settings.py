"""Typed settings from flags and ``CONVEYOR_*`` environment variables.

Secrets (a broker URL with a password, the idempotency database URL, the S3 secret key) are
``SecretStr``: they never appear in a repr, a log line or an error message; use
``common.transport.factory.mask_url`` to show a URL. Each also reads ``CONVEYOR_<NAME>_FILE``
(a mounted secret file) and feeds the ``Redactor`` that masks its value in every output
(``common.secrets``). Precedence: flags, then the variable or its ``_FILE`` (not both).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from conveyor.common.codec import DEFAULT_MAX_MESSAGE_BYTES
from conveyor.common.defaults import (
    DEFAULT_BREAKER_CONSECUTIVE_FAILURES,
    DEFAULT_BREAKER_RESET_TIMEOUT,
    DEFAULT_CONCURRENCY,
    DEFAULT_CRASH_LIMIT,
    DEFAULT_GRACE_PERIOD,
    DEFAULT_HTTP_HOST,
    DEFAULT_HTTP_PORT,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_METRICS_INTERVAL,
    DEFAULT_PAYLOAD_THRESHOLD,
    DEFAULT_STALL_EXIT_AFTER,
    DEFAULT_STALL_WARN_AFTER,
    DEFAULT_STORE_TIMEOUT,
)
from conveyor.common.secrets import secret_fields, secret_from_file
from conveyor.common.tls import TlsConfig

__all__ = ["LOG_LEVELS", "Settings"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# Upper bounds of the counts and sizes that had none: a value past 64 bits (a typo, a pasted
# byte count) was a traceback from orjson at the worker's start, and a huge crash limit or
# breaker threshold is the same as none. 512 MiB is RabbitMQ's largest message; an S3 object
# is at most 10,000 parts of the store's 8 MiB.
MAX_MESSAGE_BYTES_LIMIT = 512 * 1024 * 1024
MAX_PAYLOAD_BYTES_LIMIT = 10_000 * 8 * 1024 * 1024
MAX_FAILURE_COUNT = 10_000


class SecretFilesSource(PydanticBaseSettingsSource):
    """``<PREFIX><NAME>_FILE`` for each secret setting (see module docs)."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self._prefix = str(settings_cls.model_config.get("env_prefix", "")).upper()

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything happens in __call__

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in secret_fields(self.settings_cls):
            value = secret_from_file(f"{self._prefix}{name.upper()}")
            if value is not None:
                values[name] = value
        return values


class Settings(BaseSettings):
    # inf passed every ``ge``/``gt`` (a breaker that never half-opens, a store call that never
    # times out); NaN is refused by them, but not with its own message.
    model_config = SettingsConfigDict(env_prefix="CONVEYOR_", extra="ignore", allow_inf_nan=False)

    broker_url: SecretStr | None = Field(
        default=None,
        description=(
            "Broker to use: amqp://user:pass@host:5672/vhost, pulsar://host:6650, or memory:// (in-process); "
            "no default: a command without one is a usage error"
        ),
    )
    concurrency: int = Field(
        default=DEFAULT_CONCURRENCY, ge=1, le=10_000, description="Jobs run at once per worker process"
    )
    # 65535: AMQP's basic.qos prefetch count is 16 bits (a larger one was a TypeError at consume).
    prefetch: int | None = Field(
        default=None, ge=1, le=65535, description="Unacked deliveries held (default: concurrency)"
    )
    grace_period: float = Field(
        default=DEFAULT_GRACE_PERIOD, ge=0, le=86400, description="Seconds to finish in-flight jobs on SIGTERM"
    )
    http_host: str = Field(default=DEFAULT_HTTP_HOST, description="Address of /healthz, /readyz, /metrics")
    http_port: int = Field(default=DEFAULT_HTTP_PORT, ge=0, le=65535, description="Port of the HTTP endpoints (0: off)")
    max_message_bytes: int = Field(
        default=DEFAULT_MAX_MESSAGE_BYTES, ge=1024, le=MAX_MESSAGE_BYTES_LIMIT,
        description="Size limit, checked before parsing",
    )
    # The one default of the log level and format: the CLI's options take theirs from here.
    log_level: str = Field(
        default="WARNING", pattern="(?i)^(debug|info|warning|error)$", description="DEBUG, INFO, WARNING or ERROR"
    )
    log_format: str = Field(default="json", pattern="^(json|text)$", description="json or text")
    metrics_interval: float = Field(
        default=DEFAULT_METRICS_INTERVAL, ge=0, le=86400, description="Seconds between queue depth samples (0: off)"
    )
    breaker_consecutive_failures: int = Field(
        default=DEFAULT_BREAKER_CONSECUTIVE_FAILURES,
        ge=1, le=MAX_FAILURE_COUNT,
        description="Consecutive failures that open a job's circuit breaker",
    )
    breaker_reset_timeout: float = Field(
        default=DEFAULT_BREAKER_RESET_TIMEOUT,
        gt=0, le=86400,
        description="Seconds an open breaker waits before a half-open probe",
    )
    stall_warn_after: float = Field(
        default=DEFAULT_STALL_WARN_AFTER,
        ge=0, le=86400,
        description="Seconds the event loop may be blocked before a stall is logged (0: off)",
    )
    stall_exit_after: float = Field(
        default=DEFAULT_STALL_EXIT_AFTER,
        ge=0, le=86400,
        description=(
            "Seconds the event loop may be blocked before the worker exits so its jobs are redelivered (0: never)"
        ),
    )
    state_dir: Path | None = Field(
        default=None,
        description="Directory of the crash journal (default: $XDG_STATE_HOME/conveyor, ~/.local/state/conveyor)",
    )
    crash_limit: int = Field(
        default=DEFAULT_CRASH_LIMIT,
        ge=1, le=MAX_FAILURE_COUNT,
        description="Worker deaths a job may be running in before it is dead-lettered as crash_loop",
    )
    code_version: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._+-]{1,40}$",
        description="This deploy's code version (a release, a git sha), recorded with every run, attempt and dead "
                    "letter; the worker id ends in @<version> (default: package version + git revision when known)",
    )
    tracing: str = Field(
        default="off",
        pattern="^(off|otlp|console)$",
        description="OpenTelemetry traces: off, otlp (OTEL_EXPORTER_OTLP_* settings) or console; needs conveyor[otel]",
    )
    idempotency_url: SecretStr | None = Field(
        default=None,
        description="Processed-key store: sqlite:///path/keys.db or postgresql://… (unset: off)",
    )
    job_state_url: SecretStr | None = Field(
        default=None,
        description="Job-state store: memory://, sqlite:///path/state.db or postgresql://… (unset: off)",
    )
    job_state_lease: float = Field(
        default=60.0, gt=0, le=86_400,
        description="Seconds a running attempt may go without a heartbeat before it counts as abandoned "
        "(its worker died); heartbeats every sixth of it",
    )
    payload_store: str | None = Field(
        default=None, description="Claim-check store: file:///path, s3://bucket/prefix, memory:// (unset: off)"
    )
    payload_threshold_bytes: int = Field(
        default=DEFAULT_PAYLOAD_THRESHOLD, ge=1024, le=MAX_MESSAGE_BYTES_LIMIT,
        description="Encoded payloads above this go to the store",
    )
    payload_max_bytes: int = Field(
        default=DEFAULT_MAX_PAYLOAD_BYTES, ge=1024, le=MAX_PAYLOAD_BYTES_LIMIT, description="Largest payload stored"
    )
    payload_timeout: float = Field(
        default=DEFAULT_STORE_TIMEOUT, gt=0, le=86400, description="Seconds per upload/download"
    )
    s3_endpoint_url: str | None = Field(default=None, description="S3 endpoint (unset: AWS)")
    s3_access_key: str | None = Field(default=None, description="S3 access key (unset: the AWS default chain)")
    s3_secret_key: SecretStr | None = Field(default=None, description="S3 secret key")
    s3_region: str = Field(default="us-east-1", description="S3 region (signing)")
    # TLS for amqps:// and pulsar+ssl:// (see common.tls): which CA to trust, and an optional
    # client certificate. There is deliberately no setting that turns verification off.
    tls_ca_file: Path | None = Field(
        default=None, description="PEM CA bundle that signed the brokers' certificates (unset: system trust store)"
    )
    tls_cert_file: Path | None = Field(default=None, description="Client certificate (PEM), if the broker asks for one")
    tls_key_file: Path | None = Field(default=None, description="Its private key (PEM; unset: in the cert file)")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # CONVEYOR_<SECRET>_FILE right after the environment (the two never both set).
        return init_settings, env_settings, SecretFilesSource(settings_cls), dotenv_settings, file_secret_settings

    def broker(self) -> str | None:
        return None if self.broker_url is None else self.broker_url.get_secret_value()

    @field_validator("http_host", "state_dir", "tls_ca_file", "tls_cert_file", "tls_key_file", "s3_endpoint_url",
                     "s3_access_key", "s3_region", mode="before")
    @classmethod
    def _not_blank(cls, value: Any) -> Any:
        # An empty variable (a template's unset ${VAR}) meant something else than unset: ""
        # as the HTTP host listened on every interface, and "" as a path was "." (the
        # crash journal in the working directory).
        if isinstance(value, str) and not value.strip():
            raise PydanticCustomError("blank", "must not be empty (leave it unset for the default)")
        return value

    @model_validator(mode="after")
    def _stall_limits_in_order(self) -> Settings:
        if self.stall_exit_after and self.stall_exit_after < self.stall_warn_after:
            raise PydanticCustomError(
                "stall_order",
                "CONVEYOR_STALL_EXIT_AFTER ({exit}) must be ≥ CONVEYOR_STALL_WARN_AFTER ({warn}), or 0 (never exit)",
                {"exit": self.stall_exit_after, "warn": self.stall_warn_after},
            )
        return self

    def tls(self) -> TlsConfig:
        return TlsConfig(ca_file=self.tls_ca_file, cert_file=self.tls_cert_file, key_file=self.tls_key_file)

    @property
    def effective_state_dir(self) -> Path:
        """The crash journal's directory: the setting, else the user's XDG state directory."""
        if self.state_dir is not None:
            return self.state_dir
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "conveyor"

"""Typed settings from flags and ``CONVEYOR_*`` environment variables.

Secrets (a broker URL with a password) are ``SecretStr``: they never appear in a repr,
a log line or an error message; use ``common.transport.factory.mask_url`` to show a URL.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.codec import DEFAULT_MAX_MESSAGE_BYTES

__all__ = ["Settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONVEYOR_", extra="ignore")

    broker_url: SecretStr = Field(
        default=SecretStr("memory://"),
        description="Broker to use: memory://, amqp://user:pass@host:5672/vhost, pulsar://host:6650",
    )
    concurrency: int = Field(default=16, ge=1, le=10_000, description="Jobs run at once per worker process")
    prefetch: int | None = Field(default=None, ge=1, description="Unacked deliveries held (default: concurrency)")
    grace_period: float = Field(default=30.0, ge=0, description="Seconds to finish in-flight jobs on SIGTERM")
    http_host: str = Field(default="127.0.0.1", description="Address of /healthz, /readyz, /metrics")
    http_port: int = Field(default=9464, ge=0, le=65535, description="Port of the HTTP endpoints (0: off)")
    max_message_bytes: int = Field(default=DEFAULT_MAX_MESSAGE_BYTES, ge=1024, description="Size limit, checked before parsing")
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: str = Field(default="json", pattern="^(json|text)$", description="json or text")

    def broker(self) -> str:
        return self.broker_url.get_secret_value()

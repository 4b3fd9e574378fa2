"""A careless application for the canary test: its handler logs and raises its own secrets.

The secrets are read when the registry is built (before the event loop runs), as an app
would read its configuration, and then put into log lines and an exception message: the
worker must mask them wherever they go.
"""

from __future__ import annotations

import logging
import os

from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.settings import Settings

log = logging.getLogger("canary.app")


class Leak(BaseModel):
    note: str


class Blob(BaseModel):
    data: str


def jobs() -> JobRegistry:
    registry = JobRegistry()
    queue = os.environ.get("E2E_QUEUE", "conveyor.default")
    settings = Settings()
    secrets = [
        settings.broker(),
        settings.idempotency_url.get_secret_value() if settings.idempotency_url else "",
        settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else "",
    ]
    fast = RetryPolicy(max_attempts=2, base=0.2, factor=1, cap=0.2, jitter=0)

    @registry.job("canary.leak", queue=queue, retry=fast)
    async def leak(payload: Leak, ctx: JobContext) -> None:
        log.warning("connecting with %s", " and ".join(secrets), extra={"dsn": secrets[1], "key": secrets[2]})
        log.debug("settings in use: %r; raw: %s", settings, secrets)
        raise RuntimeError(f"cannot connect to {secrets[0]} (keys {secrets[1]}, s3 {secrets[2]})")

    @registry.job("canary.blob", queue=queue, retry=fast)
    async def blob(payload: Blob, ctx: JobContext) -> None:
        """Never runs with the canary S3 key: fetching the payload fails (signature mismatch)."""

    return registry

"""Defaults that more than one component reads: the settings, the stores and the producer
take them from here, so a default is written once."""

from __future__ import annotations

__all__ = [
    "DEFAULT_BREAKER_CONSECUTIVE_FAILURES",
    "DEFAULT_BREAKER_RESET_TIMEOUT",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_CRASH_LIMIT",
    "DEFAULT_GRACE_PERIOD",
    "DEFAULT_HTTP_HOST",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "DEFAULT_METRICS_INTERVAL",
    "DEFAULT_PAYLOAD_THRESHOLD",
    "DEFAULT_STALL_EXIT_AFTER",
    "DEFAULT_STALL_WARN_AFTER",
    "DEFAULT_STORE_TIMEOUT",
]

DEFAULT_PAYLOAD_THRESHOLD = 128 * 1024  # encoded payloads above this go to the store
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
DEFAULT_STORE_TIMEOUT = 60.0  # seconds for one whole upload or download

# The worker (WorkerConfig and its parts, Settings, the CLI's help texts)
DEFAULT_CONCURRENCY = 16
DEFAULT_GRACE_PERIOD = 30.0
DEFAULT_HTTP_HOST = "127.0.0.1"  # metrics are not for the internet
DEFAULT_HTTP_PORT = 9464
DEFAULT_METRICS_INTERVAL = 15.0
DEFAULT_BREAKER_CONSECUTIVE_FAILURES = 5
DEFAULT_BREAKER_RESET_TIMEOUT = 30.0
DEFAULT_STALL_WARN_AFTER = 5.0
DEFAULT_STALL_EXIT_AFTER = 60.0
DEFAULT_CRASH_LIMIT = 3

"""Middleware the worker ships: processed-key idempotency and per-job log context.

Optional, cross-cutting behaviour around a handler; the engine (processor, settlement) never
depends on it. The circuit breaker's middleware lives with the breaker in the engine, since
the worker pauses queues on its state changes.
"""

from typing import TYPE_CHECKING

from conveyor.common.lazy import lazy_exports

if TYPE_CHECKING:
    from conveyor.consumer.middleware.idempotency import IdempotencyMiddleware, job_transaction
    from conveyor.consumer.middleware.log_context import LogContextMiddleware

__all__ = ["IdempotencyMiddleware", "LogContextMiddleware", "job_transaction"]

# Lazy: the worker loads its middleware modules one by one, idempotency only when configured.
__getattr__ = lazy_exports(__name__, {
    ".idempotency": ("IdempotencyMiddleware", "job_transaction"),
    ".log_context": ("LogContextMiddleware",),
})

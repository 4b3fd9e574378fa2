"""Consumers: the engine (worker, processor, settlement, breaker, watchdog, health), then
``middleware/``, ``ops/`` (dead letters, status, sweep, demo) and ``cli/`` on top."""

from conveyor.consumer.worker import Worker, WorkerConfig

__all__ = ["Worker", "WorkerConfig"]

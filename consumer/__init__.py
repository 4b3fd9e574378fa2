"""Consumers: the worker, the job registry, settlement, breakers, replay, HTTP and the CLI."""

from consumer.context import JobContext
from consumer.registry import JobRegistry, JobSpec
from consumer.worker import Worker, WorkerConfig

__all__ = ["JobContext", "JobRegistry", "JobSpec", "Worker", "WorkerConfig"]

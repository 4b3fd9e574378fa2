"""Consumers: the worker, the job registry, settlement, breakers, replay, HTTP and the CLI."""

from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry, JobSpec
from conveyor.consumer.worker import Worker, WorkerConfig

__all__ = ["JobContext", "JobRegistry", "JobSpec", "Worker", "WorkerConfig"]

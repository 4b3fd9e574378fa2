"""Jobs as both sides see them: the registry of job types, the handler's context, the publish
command and the outcome of one attempt. Below the producer and the consumer so both can use them."""

from conveyor.common.jobs.command import PublishCommand, PublishReceipt
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.outcome import Outcome
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry, JobSpec

__all__ = ["DEFAULT_QUEUE", "JobContext", "JobRegistry", "JobSpec", "Outcome", "PublishCommand", "PublishReceipt"]

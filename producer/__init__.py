"""Producers: publish schema-versioned jobs, confirmed by the broker before returning."""

from conveyor.common.jobs.command import PublishCommand, PublishReceipt
from conveyor.producer.producer import Producer

__all__ = ["Producer", "PublishCommand", "PublishReceipt"]

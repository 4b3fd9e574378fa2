"""Producers: publish schema-versioned jobs, confirmed by the broker before returning."""

from conveyor.common.jobs.command import PublishCommand, PublishReceipt
from conveyor.producer.producer import Producer
from conveyor.producer.sync_producer import SyncProducer

__all__ = ["Producer", "PublishCommand", "PublishReceipt", "SyncProducer"]

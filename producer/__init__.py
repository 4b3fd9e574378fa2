"""Producers: publish schema-versioned jobs, confirmed by the broker before returning."""

from producer.command import PublishCommand, PublishReceipt
from producer.producer import Producer

__all__ = ["Producer", "PublishCommand", "PublishReceipt"]

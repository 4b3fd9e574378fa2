"""The Pulsar transport: ``transport`` (client, producers, publish with send receipts, delays),
``consumer`` (receives driven by completions), ``inbox`` (client-thread completions back on the
event loop in batches) and ``admin`` (the admin REST API: depth, browsing, topics)."""

from conveyor.common.transport.pulsar.transport import PulsarTransport

__all__ = ["PulsarTransport"]

"""The RabbitMQ transport: ``transport`` (connections, publish with confirms, declare, stats),
``consumer`` (consumers on plain aiormq channels, coalesced acks), ``publisher`` (confirmed
publishes on their channels) and ``topology`` (exchanges, queues, delay tiers, permissions)."""

from conveyor.common.transport.rabbitmq.transport import RabbitMQTransport

__all__ = ["RabbitMQTransport"]

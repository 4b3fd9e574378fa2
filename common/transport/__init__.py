"""Broker transports behind one contract (see ``common.transport.base``)."""

from conveyor.common.transport.base import (
    ConsumerHandle,
    Delivery,
    DeliveryHandler,
    OutgoingMessage,
    Transport,
)

__all__ = ["ConsumerHandle", "Delivery", "DeliveryHandler", "OutgoingMessage", "Transport"]

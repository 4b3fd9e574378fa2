"""Broker transports behind one contract (see ``common.transport.base``)."""

from common.transport.base import ConsumerHandle, Delivery, DeliveryHandler, OutgoingMessage, Transport

__all__ = ["ConsumerHandle", "Delivery", "DeliveryHandler", "OutgoingMessage", "Transport"]

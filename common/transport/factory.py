"""Pick a transport from a broker URL, and show URLs without their secrets.

    memory://                  MemoryTransport on a new, private MemoryBroker
    amqp://  amqps://          RabbitMQTransport (aio-pika)
    pulsar:// pulsar+ssl://    PulsarTransport (pulsar-client's asyncio API)

Broker clients are imported only when their scheme is used, so a memory-only install
does not need them. ``tls`` (CA and client certificate, see ``common.tls``) goes to the broker
transports; the URL's scheme alone decides whether TLS is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.common.errors import ConfigurationError
from conveyor.common.extras import require
from conveyor.common.secrets import mask_url
from conveyor.common.transport.base import Transport

if TYPE_CHECKING:
    from conveyor.common.tls import TlsConfig

__all__ = ["transport_from_url"]



def transport_from_url(url: str, *, tls: TlsConfig | None = None, **kwargs: Any) -> Transport:
    """The transport for ``url``; ``tls`` and ``kwargs`` go to its constructor.

    The in-process ``memory://`` broker has no network, so it ignores ``tls``.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "memory":
        from conveyor.common.transport.memory import MemoryBroker, MemoryTransport

        return MemoryTransport(MemoryBroker(), **kwargs)
    if scheme in ("amqp", "amqps"):
        require("rabbitmq", f"a {scheme}:// broker")
        from conveyor.common.transport.rabbitmq import RabbitMQTransport

        return RabbitMQTransport(url, tls=tls, **kwargs)
    if scheme in ("pulsar", "pulsar+ssl"):
        require("pulsar", f"a {scheme}:// broker")
        from conveyor.common.transport.pulsar import PulsarTransport

        return PulsarTransport(url, tls=tls, **kwargs)
    raise ConfigurationError(
        f"unsupported broker URL {mask_url(url)!r}: use memory://, amqp://, amqps://, pulsar:// or pulsar+ssl://"
    )

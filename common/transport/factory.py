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
from urllib.parse import parse_qsl, urlencode

from conveyor.common.errors import ConfigurationError
from conveyor.common.transport.base import Transport

if TYPE_CHECKING:
    from conveyor.common.tls import TlsConfig

__all__ = ["mask_url", "transport_from_url"]

_MASK = "***"
# Query parameters that carry credentials in some clients' URLs (e.g. a Pulsar token).
_SECRET_PARAMS = ("password", "passwd", "secret", "token", "key")


def transport_from_url(url: str, *, tls: TlsConfig | None = None, **kwargs: Any) -> Transport:
    """The transport for ``url``; ``tls`` and ``kwargs`` go to its constructor.

    The in-process ``memory://`` broker has no network, so it ignores ``tls``.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "memory":
        from conveyor.common.transport.memory import MemoryBroker, MemoryTransport

        return MemoryTransport(MemoryBroker(), **kwargs)
    if scheme in ("amqp", "amqps"):
        from conveyor.common.transport.rabbitmq import RabbitMQTransport

        return RabbitMQTransport(url, tls=tls, **kwargs)
    if scheme in ("pulsar", "pulsar+ssl"):
        from conveyor.common.transport.pulsar import PulsarTransport

        return PulsarTransport(url, tls=tls, **kwargs)
    raise ConfigurationError(
        f"unsupported broker URL {mask_url(url)!r}: use memory://, amqp://, amqps://, pulsar:// or pulsar+ssl://"
    )


def mask_url(url: str) -> str:
    """``url`` with any password (and credential-like query values) replaced by ``***``.

    Works on URLs ``urllib`` cannot parse as well, e.g. Pulsar's multi-host
    ``pulsar://h1:6650,h2:6650``: only the ``user:password@`` part is touched.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    netloc, slash, tail = _split_netloc(rest)
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = f"{userinfo.partition(':')[0]}:{_MASK}"
        netloc = f"{userinfo}@{hosts}"
    tail = _mask_query(tail)
    return f"{scheme}{sep}{netloc}{slash}{tail}"


def _split_netloc(rest: str) -> tuple[str, str, str]:
    """Split ``host…/path?query`` into netloc, the separator found, and the remainder."""
    cut = len(rest)
    for marker in "/?#":
        index = rest.find(marker)
        if index != -1:
            cut = min(cut, index)
    return rest[:cut], rest[cut : cut + 1], rest[cut + 1 :]


def _mask_query(tail: str) -> str:
    path, qmark, query = tail.partition("?")
    if not qmark:
        return tail
    query, hash_, fragment = query.partition("#")
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(_is_secret(name) for name, _ in pairs):
        return tail
    masked = [(name, _MASK if _is_secret(name) else value) for name, value in pairs]
    return f"{path}?{urlencode(masked, safe='*')}{hash_}{fragment}"


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_PARAMS)

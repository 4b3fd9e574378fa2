"""One AMQP URL for a RabbitMQ cluster: several hosts, one user, one vhost.

``amqp://user:pass@h1:5672,h2:5673,h3:5674/vhost?options`` (``amqps://`` alike): the hosts of
the cluster's nodes, comma-separated, each with its own port (default 5672, 5671 for
``amqps``), IPv6 addresses in brackets. Credentials, vhost and options apply to every host.
This is the one place that reads such a URL; producers, workers and the CLI all pass the URL to
the RabbitMQ transport, which connects to the first host that answers and, after a lost
connection, to the next (``rabbitmq.failover``). A URL with one host is left exactly as given.
"""

from __future__ import annotations

from dataclasses import dataclass

from conveyor.common.errors import ConfigurationError
from conveyor.common.secrets import mask_url
from conveyor.common.transport.hosts import split_host_port

__all__ = ["BrokerAddresses", "parse_amqp_url"]


@dataclass(frozen=True, slots=True)
class BrokerAddresses:
    """A cluster URL split into one single-host URL per node (in the order given)."""

    urls: tuple[str, ...]
    hosts: tuple[tuple[str, int], ...]
    secure: bool

    def __len__(self) -> int:
        return len(self.urls)


def parse_amqp_url(url: str) -> BrokerAddresses:
    """The hosts of an ``amqp[s]://`` URL; ``ConfigurationError`` (password masked) when one is malformed."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("amqp", "amqps"):
        raise ConfigurationError(f"not an AMQP URL: {mask_url(url)!r}")
    secure = scheme.lower() == "amqps"
    cut = min((i for i in (rest.find(c) for c in "/?#") if i != -1), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    userinfo, at, hostlist = netloc.rpartition("@")
    if not at and ":" in netloc and "@" in tail:
        # Else the host list would be "user:pass…" and the error would show the password.
        raise ConfigurationError(
            "AMQP URL's user or password holds an unencoded '/', '?' or '#' (or its path an '@'): "
            f"percent-encode it (%2F, %3F, %23, %40): {mask_url(url)!r}"
        )
    entries = hostlist.split(",")
    hosts = tuple(_host_port(entry, secure, url) for entry in entries)
    if len(hosts) == 1:
        return BrokerAddresses(urls=(url,), hosts=hosts, secure=secure)
    if len(set(hosts)) != len(hosts):
        raise ConfigurationError(f"AMQP URL names a host twice: {mask_url(url)!r}")
    urls = tuple(f"{scheme}://{userinfo}{at}{entry.strip()}{tail}" for entry in entries)
    return BrokerAddresses(urls=urls, hosts=hosts, secure=secure)


def _host_port(entry: str, secure: bool, url: str) -> tuple[str, int]:
    entry = entry.strip()
    try:
        host, port = split_host_port(entry)
    except ValueError as exc:
        raise ConfigurationError(f"AMQP URL has {exc} {entry!r}: {mask_url(url)!r}") from None
    return host, port or (5671 if secure else 5672)

"""Pulsar names, URL options and the few admin REST calls the Pulsar transport makes.

No pulsar-client import: the rules are readable and testable without the native library.

    queue  orders          → persistent://public/default/orders        subscription "conveyor"
    its DLQ orders-DLQ     → persistent://public/default/orders-DLQ    subscription "conveyor"

* **URL.** ``pulsar://host:6650`` or ``pulsar+ssl://host:6651`` (several hosts:
  ``pulsar://h1:6650,h2:6650``). Options ride in the query string so that ``--broker`` and
  ``CONVEYOR_BROKER_URL`` can carry them: ``token``, ``tenant``, ``namespace``,
  ``subscription``, ``subscription_type`` (``shared`` | ``key_shared``) and ``admin_url``.
  ``user:password@`` means HTTP basic authentication. An unknown option is an error, not
  silently ignored. The URL handed to the client keeps only scheme and hosts, so no secret
  reaches the client's own log lines.
* **Admin URL.** ``http://<first host>:8080`` (``https://…:8443`` for ``pulsar+ssl``) unless
  ``admin_url`` is given. The transport needs it for ``depth``/``stats``/``delete``, for
  ``get``'s "is it really empty" check, and to check that a queue nobody declared in this
  process exists; declare, publish, consume and settle use the binary protocol only.
  An ``https://`` admin URL is verified like the broker connection (same CA, host name always
  checked; see ``common.tls``). The transport refuses ``pulsar+ssl://`` with an ``http://``
  admin URL: the token or password would travel in clear.
* **Backlog.** ``msgBacklog`` counts every message of the subscription not yet acked:
  ready, handed out (``unackedMessages``, which includes messages sitting in a client's
  receive queue) and delayed. ``msgDelayed`` is known only while a consumer is attached (the
  broker reads a delayed message, and learns it is delayed, only to dispatch it); without
  a consumer a delayed message counts as ready. Entries are counted, not messages: exact for
  Conveyor's producers, which never batch.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urljoin, urlsplit

import h11
import orjson

from conveyor.common.errors import ConfigurationError, TransportError
from conveyor.common.secrets import mask_url
from conveyor.common.tls import tls_error
from conveyor.common.transport.hosts import split_host_port
from conveyor.common.transport.pulsar.admin_http import HttpResponse, request

__all__ = [
    "DEFAULT_SUBSCRIPTION",
    "AdminClient",
    "PulsarOptions",
    "SubscriptionStats",
    "TopicNames",
    "check_admin_url",
    "check_name",
    "parse_pulsar_url",
]

DEFAULT_SUBSCRIPTION = "conveyor"
SUBSCRIPTION_TYPES = ("shared", "key_shared")
_URL_OPTIONS = ("token", "tenant", "namespace", "subscription", "subscription_type", "admin_url")
# Pulsar's rule for tenant, namespace and (here, conservatively) topic and subscription names.
_NAME = re.compile(r"^[A-Za-z0-9_.:=-]+$")
_MAX_REDIRECTS = 5  # a redirect goes to the topic's owner; a chain is a misconfiguration


@dataclass(frozen=True)
class PulsarOptions:
    """What a ``pulsar://`` URL says; ``service_url`` is safe to log and to hand to the client."""

    service_url: str
    admin_url: str
    options: dict[str, str]
    username: str | None = None
    password: str | None = None


def parse_pulsar_url(url: str) -> PulsarOptions:
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("pulsar", "pulsar+ssl"):
        raise ConfigurationError("not a Pulsar URL: use pulsar://host:6650 or pulsar+ssl://host:6651")
    rest, _, query = rest.partition("?")
    hosts = rest.split("/", 1)[0]
    username = password = None
    if "@" in hosts:
        userinfo, _, hosts = hosts.rpartition("@")
        username, _, password = (unquote(part) for part in userinfo.partition(":"))
        username, password = username or None, password or None
    if not hosts or any(not host for host in hosts.split(",")):
        raise ConfigurationError("the Pulsar URL names no broker host")
    for entry in hosts.split(","):
        _check_host(entry)
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in _URL_OPTIONS:
            raise ConfigurationError(f"unknown Pulsar URL option {name!r}: use one of {', '.join(_URL_OPTIONS)}")
        options[name] = value
    host = _host_of(hosts.split(",")[0])
    admin = options.get("admin_url") or (
        f"https://{host}:8443" if scheme == "pulsar+ssl" else f"http://{host}:8080"
    )
    check_admin_url(admin)
    return PulsarOptions(f"{scheme}://{hosts}", admin.rstrip("/"), options, username, password)


def _check_host(entry: str) -> None:
    try:
        split_host_port(entry)
    except ValueError:
        raise ConfigurationError(f"the Pulsar URL has an empty or malformed host {entry!r}: use host:port") from None


def check_admin_url(admin: str) -> None:
    try:
        parts = urlsplit(admin)
        valid = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # raises for a port that is not a number or out of range
    except ValueError:
        valid = False
    if not valid:
        raise ConfigurationError("the Pulsar admin_url is not an http:// or https:// URL with a host")


def _host_of(hostport: str) -> str:
    if hostport.startswith("["):  # [::1]:6650
        return hostport[: hostport.index("]") + 1]
    return hostport.rsplit(":", 1)[0] if ":" in hostport else hostport


def check_name(kind: str, name: str) -> str:
    if not _NAME.match(name):
        raise ConfigurationError(f"invalid Pulsar {kind} name {name!r}: use letters, digits and _ . : = -")
    return name


@dataclass(frozen=True)
class TopicNames:
    """Queue name → persistent topic in one tenant/namespace."""

    tenant: str = "public"
    namespace: str = "default"

    def __post_init__(self) -> None:
        check_name("tenant", self.tenant)
        check_name("namespace", self.namespace)

    def topic(self, queue: str) -> str:
        return f"persistent://{self.tenant}/{self.namespace}/{check_name('queue', queue)}"

    def rest_path(self, queue: str) -> str:
        """The topic's path in the admin API (``/admin/v2`` + this)."""
        return f"/persistent/{quote(self.tenant)}/{quote(self.namespace)}/{quote(check_name('queue', queue), safe='')}"


@dataclass(frozen=True)
class SubscriptionStats:
    backlog: int  # not yet acked: ready + handed out + delayed
    backlog_no_delayed: int
    delayed: int  # known only while a consumer is attached
    unacked: int  # handed out to consumers (incl. their receive queues), not yet acked
    consumers: int

    @property
    def ready(self) -> int:
        """Stored, not delayed, and not held by any consumer: what a new consumer would get."""
        return max(0, self.backlog_no_delayed - self.unacked)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SubscriptionStats:
        backlog = int(data.get("msgBacklog") or 0)
        return cls(
            backlog=backlog,
            backlog_no_delayed=int(data.get("msgBacklogNoDelayed", backlog) or 0),
            delayed=int(data.get("msgDelayed") or 0),
            unacked=int(data.get("unackedMessages") or 0),
            consumers=len(data.get("consumers") or ()),
        )


class AdminClient:
    """The handful of ``/admin/v2`` calls we need, one connection each (see ``admin_http``)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        headers: dict[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._base = f"{base_url.rstrip('/')}/admin/v2"
        self._host = urlsplit(base_url).hostname or "localhost"
        self._timeout = timeout
        self._headers = dict(headers or {})
        # For https: the transport's verifying context; without one the system's default,
        # which verifies too (built at start). Never an unverified one.
        self._ssl = ssl_context
        self._started = False

    @staticmethod
    def auth_headers(*, token: str | None, username: str | None, password: str | None) -> dict[str, str]:
        if token:
            return {"Authorization": f"Bearer {token}"}
        if username:
            basic = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            return {"Authorization": f"Basic {basic}"}
        return {}

    async def start(self) -> None:
        if self._ssl is None and self._base.lower().startswith("https://"):
            self._ssl = await asyncio.to_thread(ssl.create_default_context)  # reads the system's CA files
        self._started = True

    async def close(self) -> None:
        self._started = False

    async def subscription_stats(self, path: str, subscription: str) -> SubscriptionStats | None:
        """Backlog of ``subscription`` on the topic at ``path``; None if either does not exist."""
        data = await self._request("GET", f"{path}/stats")
        if data is None:
            return None
        found = (data.get("subscriptions") or {}).get(subscription)
        return None if found is None else SubscriptionStats.from_json(found)

    async def subscriptions(self, path: str) -> list[str] | None:
        """Subscriptions of the topic at ``path``; None if the topic does not exist."""
        names: list[str] | None = await self._request("GET", f"{path}/subscriptions")  # a JSON list of names
        return names

    async def delete_topic(self, path: str) -> None:
        """Delete the topic with its subscriptions and messages; a missing topic is fine."""
        await self._request("DELETE", f"{path}?force=true")

    async def _follow(self, method: str, url: str) -> HttpResponse:
        """Follow the broker's redirects (a topic owned by another broker answers 307) by hand,
        so one from https to anything else is refused before a request, with its auth header,
        goes out in clear."""
        for _ in range(_MAX_REDIRECTS + 1):
            response = await request(method, url, headers=self._headers, ssl_context=self._ssl, timeout=self._timeout)
            location = response.headers.get("location")
            if response.status not in (301, 302, 303, 307, 308) or not location:
                return response
            target = urljoin(response.url, location)
            scheme = urlsplit(target).scheme.lower()
            if urlsplit(response.url).scheme.lower() == "https" and scheme != "https":
                raise TransportError(f"Pulsar admin API redirected {method} from https to {scheme or '?'}: refused")
            url = target
        raise TransportError(f"Pulsar admin API: more than {_MAX_REDIRECTS} redirects for {method}")

    async def _request(self, method: str, path: str) -> Any:
        if not self._started:
            raise TransportError("Pulsar admin client is not started")
        try:
            response = await self._follow(method, f"{self._base}{path}")
        except (TimeoutError, OSError, h11.ProtocolError) as exc:
            failed = tls_error(exc, host=self._host)
            if failed is not None:
                raise failed from exc
            where = mask_url(self._base)
            raise TransportError(f"Pulsar admin API at {where} unreachable: {type(exc).__name__}") from exc
        if response.status == 404:
            return None
        if response.status in (401, 403):
            raise TransportError(f"Pulsar admin API refused {method} {path} ({response.status})")
        if response.status >= 300:
            text = response.text()[:300]
            raise TransportError(f"Pulsar admin API {method} {path} failed ({response.status}): {text}")
        if response.content_type == "application/json" and response.body:
            try:
                return orjson.loads(response.body)
            except orjson.JSONDecodeError as exc:
                raise TransportError(f"Pulsar admin API {method} {path}: malformed JSON ({exc})") from None
        return None

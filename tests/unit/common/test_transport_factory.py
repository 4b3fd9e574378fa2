"""Choosing a transport from a URL, and showing URLs without their secrets."""

from __future__ import annotations

import pytest

from conveyor.common.errors import ConfigurationError
from conveyor.common.secrets import mask_url
from conveyor.common.transport.factory import transport_from_url
from conveyor.common.transport.memory import MemoryTransport


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://user:pa55@host:5672/vhost", "amqp://user:***@host:5672/vhost"),
        ("amqps://user:p%40ss@host/", "amqps://user:***@host/"),
        ("amqp://user@host/", "amqp://user@host/"),
        ("amqp://host", "amqp://host"),
        ("amqp://user:pw@host/?heartbeat=30", "amqp://user:***@host/?heartbeat=30"),
        ("pulsar://h1:6650,h2:6650", "pulsar://h1:6650,h2:6650"),
        ("pulsar+ssl://h1:6651/?token=abc.def&x=1", "pulsar+ssl://h1:6651/?token=***&x=1"),
        ("memory://", "memory://"),
    ],
)
def test_mask_url_hides_passwords_and_tokens(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_memory_url_gives_a_memory_transport_with_its_own_broker() -> None:
    first, second = transport_from_url("memory://"), transport_from_url("memory://")
    assert isinstance(first, MemoryTransport)
    assert first.broker is not second.broker


def test_amqp_url_gives_a_rabbitmq_transport_with_options() -> None:
    from conveyor.common.transport.rabbitmq import RabbitMQTransport

    transport = transport_from_url("amqps://u:secret@host/", delay_tiers=(2, 10), delivery_limit=5)
    assert isinstance(transport, RabbitMQTransport)
    assert transport.topology.delay_tiers == (2.0, 10.0)
    assert transport.topology.delivery_limit == 5
    assert "secret" not in repr(transport)


def test_pulsar_url_gives_a_pulsar_transport_with_options_and_no_secret_in_repr() -> None:
    from conveyor.common.transport.pulsar import PulsarTransport

    transport = transport_from_url("pulsar+ssl://h1:6651,h2:6651/?token=s3cr3t&subscription=billing", nack_delay=0.2)
    assert isinstance(transport, PulsarTransport)
    assert (transport.subscription, transport.nack_delay) == ("billing", 0.2)
    assert transport.admin_url == "https://h1:8443"
    assert transport.dead_letter_queue("orders") == "orders-DLQ"
    assert "s3cr3t" not in repr(transport)


def test_unknown_scheme_is_a_configuration_error_without_the_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        transport_from_url("redis://u:hunter2@host/")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("pulsar://[::1", "malformed host '\\[::1'"),  # `conveyor worker` printed "substring not found"
        ("pulsar://u:hunter22@[::1]x:6650", "malformed host"),
        ("pulsar://h1:6650,h2:99999", "malformed host 'h2:99999'"),
        ("pulsar://h1:66x0", "malformed host"),
        ("pulsar://h1:6650/?admin_url=http://[::1", "admin_url"),
        ("pulsar://h1:6650/?admin_url=ftp://h1", "admin_url"),
        ("pulsar://h1:6650/?admin_url=http://h1:99999", "admin_url"),
    ],
)
def test_a_malformed_pulsar_url_is_one_configuration_error_before_connecting(url: str, error: str) -> None:
    with pytest.raises(ConfigurationError, match=error) as caught:
        transport_from_url(url)
    assert "hunter22" not in str(caught.value)


@pytest.mark.parametrize("url", ["pulsar://[::1]:6650", "pulsar://[::1]", "pulsar://h1", "pulsar://h1:6650,h2:6651/"])
def test_well_formed_pulsar_hosts_are_taken(url: str) -> None:
    assert transport_from_url(url).scheme == "pulsar"


def test_an_explicit_admin_url_is_checked_too() -> None:
    from conveyor.common.transport.pulsar import PulsarTransport

    with pytest.raises(ConfigurationError, match="admin_url"):
        PulsarTransport("pulsar://h1:6650", admin_url="h1:8080")

"""Cluster URLs: several hosts in one AMQP URL, parsed in one place, masked everywhere."""

from __future__ import annotations

import pytest
from aio_pika.robust_connection import RobustConnection

from conveyor.common.errors import ConfigurationError
from conveyor.common.secrets import Redactor, mask_secrets, mask_url, scrub_error
from conveyor.common.transport.rabbitmq.addresses import parse_amqp_url
from conveyor.common.transport.rabbitmq.failover import FailoverConnection
from conveyor.common.transport.rabbitmq.transport import RabbitMQTransport

CLUSTER = "amqp://app:s3cr%40t-pw@h1:5681,h2:5682,h3/jobs?heartbeat=10"


def test_a_cluster_url_becomes_one_single_host_url_per_node_with_the_same_user_vhost_and_options() -> None:
    addresses = parse_amqp_url(CLUSTER)
    assert addresses.hosts == (("h1", 5681), ("h2", 5682), ("h3", 5672))
    assert addresses.urls == (
        "amqp://app:s3cr%40t-pw@h1:5681/jobs?heartbeat=10",
        "amqp://app:s3cr%40t-pw@h2:5682/jobs?heartbeat=10",
        "amqp://app:s3cr%40t-pw@h3/jobs?heartbeat=10",
    )
    assert not addresses.secure


def test_amqps_cluster_urls_default_to_5671_and_take_ipv6_in_brackets() -> None:
    addresses = parse_amqp_url("amqps://u:p@[::1]:5701,[fe80::2],node3:5703/")
    assert addresses.secure
    assert addresses.hosts == (("::1", 5701), ("fe80::2", 5671), ("node3", 5703))
    assert addresses.urls[1] == "amqps://u:p@[fe80::2]/"


def test_a_single_host_url_is_left_exactly_as_given() -> None:
    url = "amqp://conveyor:conveyor@127.0.0.1:5672/"
    assert parse_amqp_url(url).urls == (url,)
    assert parse_amqp_url("amqp://localhost").hosts == (("localhost", 5672),)


@pytest.mark.parametrize(
    "url",
    [
        "amqp://app:hunter22@h1:5681,,h3:5683/",  # an empty host
        "amqp://app:hunter22@h1:56x1,h2/",  # a port that is not a number
        "amqp://app:hunter22@h1:99999,h2/",  # out of range
        "amqp://app:hunter22@h1:5681,h1:5681/",  # the same node twice
        "amqp://app:hunter22@[::1/",  # an unclosed bracket
        "http://app:hunter22@h1,h2/",
    ],
)
def test_a_malformed_cluster_url_is_one_configuration_error_without_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_amqp_url(url)
    assert "hunter22" not in str(caught.value)


def test_the_transport_refuses_a_malformed_cluster_url_before_connecting() -> None:
    with pytest.raises(ConfigurationError, match="empty or malformed host"):
        RabbitMQTransport("amqp://app:hunter22@h1:5681,,h3/")


@pytest.mark.parametrize("url", ["amqp://app:hunter22@[::1", "amqp://app:hunter22@[::1/?heartbeat=5"])
def test_an_unclosed_ipv6_bracket_is_a_configuration_error_not_urlsplits_value_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="empty or malformed host") as caught:
        RabbitMQTransport(url)
    assert "hunter22" not in str(caught.value)


def test_every_masker_hides_the_password_of_a_multi_host_url() -> None:
    url = "amqps://app:hunter22@h1:5681,h2:5682,[::1]:5683/vhost?password=tok3n-xyz"
    masked = mask_url(url)
    assert masked.startswith("amqps://app:***@h1:5681,h2:5682,[::1]:5683/vhost?")
    assert "hunter22" not in masked and "tok3n-xyz" not in masked
    assert mask_secrets(f"cannot reach {url}") == f"cannot reach {url.replace('hunter22', '***')}"
    redactor = Redactor([url])
    line = redactor(f"node h2 refused app/hunter22 on {url}")
    assert "hunter22" not in line and "tok3n-xyz" not in line
    assert "hunter22" not in scrub_error(RuntimeError(f"boom hunter22 {url}"), url)
    assert "hunter22" not in repr(RabbitMQTransport(url.partition("?")[0]))


def test_the_failover_hook_is_the_one_aio_pika_calls_for_each_connection_attempt() -> None:
    # FailoverConnection overrides aio-pika's private reconnect step: an aio-pika release that
    # renames it must fail here, not silently stick to one host.
    assert hasattr(RobustConnection, "_RobustConnection__connect_transport")
    assert "_RobustConnection__connect_transport" in FailoverConnection.__dict__


@pytest.mark.parametrize("url", [
    "amqp://app:s3cr/et-canary@h1:5672,h2:5673/",
    "amqp://app:s3cr?et-canary@h1,h2/",
    "amqps://app:s3cr#et-canary@h1/vhost",
    "amqp://app:s3cr/et-canary@h1/",
])
def test_a_password_with_an_unencoded_reserved_character_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(ConfigurationError, match="percent-encode") as refused:
        parse_amqp_url(url)
    assert "s3cr" not in str(refused.value) and "canary" not in str(refused.value), str(refused.value)

"""Pulsar URL options, topic names and backlog arithmetic (no broker, no native client)."""

from __future__ import annotations

import pytest

from conveyor.common.errors import ConfigurationError
from conveyor.common.transport.pulsar.admin import AdminClient, SubscriptionStats, TopicNames, parse_pulsar_url


def test_plain_url_derives_the_admin_url_from_the_first_host() -> None:
    parsed = parse_pulsar_url("pulsar://broker-1:6650,broker-2:6650")
    assert parsed.service_url == "pulsar://broker-1:6650,broker-2:6650"
    assert parsed.admin_url == "http://broker-1:8080"
    assert parsed.options == {}


def test_ssl_url_uses_the_tls_admin_port_and_options_ride_in_the_query() -> None:
    parsed = parse_pulsar_url("pulsar+ssl://b:6651/?token=t0k&tenant=acme&namespace=jobs&subscription_type=key_shared")
    assert parsed.service_url == "pulsar+ssl://b:6651"  # what the client (and its log lines) see
    assert parsed.admin_url == "https://b:8443"
    assert parsed.options == {"token": "t0k", "tenant": "acme", "namespace": "jobs", "subscription_type": "key_shared"}


def test_explicit_admin_url_and_basic_credentials() -> None:
    parsed = parse_pulsar_url("pulsar://u:p%40ss@[::1]:6650?admin_url=http://admin:18080/")
    assert (parsed.username, parsed.password) == ("u", "p@ss")
    assert parsed.service_url == "pulsar://[::1]:6650"
    assert parsed.admin_url == "http://admin:18080"


@pytest.mark.parametrize("url", ["amqp://h", "pulsar://", "pulsar://h:6650?subscripton=typo"])
def test_bad_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_pulsar_url(url)


def test_queue_names_map_to_persistent_topics() -> None:
    names = TopicNames("public", "default")
    assert names.topic("conveyor.default") == "persistent://public/default/conveyor.default"
    assert names.topic("conformance.abc123-DLQ") == "persistent://public/default/conformance.abc123-DLQ"
    assert names.rest_path("a:b") == "/persistent/public/default/a%3Ab"
    with pytest.raises(ConfigurationError):
        names.topic("no/slashes")
    with pytest.raises(ConfigurationError):
        TopicNames("public", "bad namespace")


def test_ready_excludes_delayed_and_handed_out_messages() -> None:
    stats = SubscriptionStats.from_json(
        {"msgBacklog": 10, "msgBacklogNoDelayed": 7, "msgDelayed": 3, "unackedMessages": 2, "consumers": [{}, {}]}
    )
    assert (stats.ready, stats.delayed, stats.consumers) == (5, 3, 2)
    assert SubscriptionStats.from_json({"msgBacklog": 1, "unackedMessages": 4}).ready == 0


def test_admin_auth_headers() -> None:
    assert AdminClient.auth_headers(token="t", username=None, password=None) == {"Authorization": "Bearer t"}
    assert AdminClient.auth_headers(token=None, username="u", password="p") == {"Authorization": "Basic dTpw"}
    assert AdminClient.auth_headers(token=None, username=None, password=None) == {}

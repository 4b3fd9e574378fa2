"""The broker under test runs with the latency setting docs/deploy.md "Pulsar in production" recommends.

Read back from the broker itself (its runtime configuration), not from the script that wrote it:
a broker started before the setting was added to ``scripts/services/pulsar.sh`` fails here until
``pulsar.sh up`` restarts it with the new configuration.
"""

from __future__ import annotations

import json
import urllib.request

from conveyor.common.transport.pulsar.admin import parse_pulsar_url


def _runtime_configuration(pulsar_url: str) -> dict[str, str]:
    admin = parse_pulsar_url(pulsar_url).admin_url
    with urllib.request.urlopen(f"{admin}/admin/v2/brokers/configuration/runtime", timeout=15) as response:
        data: dict[str, str] = json.loads(response.read())
    return data


def test_caught_up_subscriptions_read_new_entries_at_once(pulsar_url: str) -> None:
    config = _runtime_configuration(pulsar_url)
    # The default, 10, re-checks a caught-up cursor 10 ms later: ~5 ms of publish → handler latency.
    assert config["managedLedgerNewEntriesCheckDelayInMillis"] == "0"

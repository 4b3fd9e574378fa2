"""The brokers this suite runs on are the versions the README's "Tested versions" names.

A broker upgraded (or downgraded) under the suite fails here until the README says so; a
RabbitMQ older than the stated minimum (4.0) fails whatever the README says.
"""

from __future__ import annotations

import re
from pathlib import Path

import aio_pika
import aiohttp
import pytest

from conveyor.common.transport.pulsar.admin import parse_pulsar_url

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_versions() -> str:
    """The README's one "Tested versions" paragraph."""
    match = re.search(r"^\*\*Tested versions\*\*.*?(?=\n\n)", README.read_text(), re.M | re.S)
    assert match, "README.md has no **Tested versions** paragraph"
    return " ".join(match.group(0).split())


@pytest.mark.rabbitmq
async def test_the_rabbitmq_under_test_is_the_version_the_readme_names(amqp_url: str) -> None:
    connection = await aio_pika.connect(amqp_url, timeout=10)
    try:
        assert connection.transport is not None
        raw = connection.transport.connection.server_properties.get("version", b"")
    finally:
        await connection.close()
    version = raw.decode() if isinstance(raw, bytes) else str(raw)
    assert tuple(int(part) for part in version.split(".")[:2]) >= (4, 0), f"RabbitMQ {version} is below the minimum 4.0"
    assert f"RabbitMQ {version}" in readme_versions()
    assert "minimum RabbitMQ is 4.0" in readme_versions()


@pytest.mark.pulsar
async def test_the_pulsar_under_test_is_the_version_the_readme_names(pulsar_url: str) -> None:
    admin = parse_pulsar_url(pulsar_url).admin_url.rstrip("/")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.get(f"{admin}/admin/v2/brokers/version") as response:
            assert response.status == 200
            version = (await response.text()).strip().strip('"')
    assert f"Pulsar {version}" in readme_versions()

"""Where and with what a run happened: printed in the header and stored in the JSON."""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import aio_pika

__all__ = ["describe", "pulsar_version", "rabbitmq_version"]

_LIBRARIES = ("conveyor", "aio-pika", "aiormq", "pamqp", "pydantic", "orjson", "prometheus-client", "celery", "kombu", "dramatiq", "pika", "pulsar-client")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


async def rabbitmq_version(url: str) -> str:
    connection = await aio_pika.connect(url, timeout=15)
    try:
        props = connection.transport.connection.server_properties if connection.transport else {}
        version = props.get("version", b"?")
        return version.decode() if isinstance(version, bytes) else str(version)
    finally:
        await connection.close()


async def pulsar_version(url: str) -> str:
    """The broker's version from its admin API (``/admin/v2/brokers/version``)."""
    import aiohttp

    from conveyor.common.transport.pulsar.admin import parse_pulsar_url

    admin = parse_pulsar_url(url).admin_url.rstrip("/")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.get(f"{admin}/admin/v2/brokers/version") as response:
                return (await response.text()).strip() if response.status == 200 else "?"
    except (aiohttp.ClientError, OSError, TimeoutError):
        return "?"


def describe(broker_version: str, pulsar: str | None = None) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "rabbitmq": broker_version,
        "pulsar": pulsar,
        "libraries": {name: _version(name) for name in _LIBRARIES},
    }

"""``rabbitmqctl`` for tests that manage users, vhosts and permissions on the broker under test.

The broker is the RabbitMQ 4.x node of ``scripts/services/rabbitmq.sh``; its ``ctl`` subcommand
runs that node's own ``rabbitmqctl`` (inside its Debian trixie root, with its node name and
cookie), never the host's. ``CONVEYOR_RABBITMQCTL`` overrides the command for a broker the
script did not start (e.g. ``sudo rabbitmqctl -n rabbit@broker``).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import uuid
from pathlib import Path

import pytest
import yarl

__all__ = ["RABBITMQ_SCRIPT", "add_scratch_vhost", "delete_vhost", "rabbitmqctl", "rabbitmqctl_command", "user_url"]


RABBITMQ_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "services" / "rabbitmq.sh"


def rabbitmqctl_command() -> list[str]:
    """The ``rabbitmqctl`` of the broker under test, as an argv prefix."""
    override = os.environ.get("CONVEYOR_RABBITMQCTL", "").strip()
    return shlex.split(override) if override else ["bash", str(RABBITMQ_SCRIPT), "ctl"]


async def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl -q ARGS`` on the broker under test; a failure fails the test."""
    argv = [*rabbitmqctl_command(), "-q", *args]
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except FileNotFoundError:
        pytest.fail(f"{argv[0]} not found: this test manages the broker under test")
    stdout, stderr = await asyncio.wait_for(process.communicate(), 90)
    if process.returncode != 0:
        # Never echo the arguments: add_user and change_password carry a password.
        pytest.fail(f"rabbitmqctl {args[0]} failed ({process.returncode}): {stderr.decode()[-500:]}")
    return stdout.decode()


def user_url(amqp_url: str, user: str, password: str, vhost: str | None = None) -> str:
    """``amqp_url`` with another user (and vhost), percent-encoded as needed."""
    url = yarl.URL(amqp_url).with_user(user).with_password(password)
    if vhost is not None:
        url = url.with_path("/" + vhost, encoded=False)
    return str(url)


async def add_scratch_vhost(amqp_url: str, prefix: str = "conveyor-test") -> str:
    """A fresh vhost where the test URL's user may do anything; remove it with ``delete_vhost``."""
    vhost = f"{prefix}-{uuid.uuid4().hex[:10]}"
    await rabbitmqctl("add_vhost", vhost)
    await rabbitmqctl("set_permissions", "-p", vhost, yarl.URL(amqp_url).user or "guest", ".*", ".*", ".*")
    return vhost


async def delete_vhost(vhost: str) -> None:
    """Remove ``vhost`` with every queue, exchange and message in it."""
    await rabbitmqctl("delete_vhost", vhost)

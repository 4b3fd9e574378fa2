"""``rabbitmqctl`` for tests that manage users, vhosts and permissions on the broker under test.

The tests run as root on the broker's machine (``scripts/services/rabbitmq.sh``);
``CONVEYOR_RABBITMQCTL`` overrides the command (e.g. ``sudo rabbitmqctl``). Like the service
script, the node is ``rabbit@localhost`` when this machine's short hostname does not resolve.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
import uuid

import pytest
import yarl

__all__ = ["add_scratch_vhost", "delete_vhost", "rabbitmqctl", "user_url"]


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    if "RABBITMQ_NODENAME" not in env:
        try:
            socket.gethostbyname(socket.gethostname().split(".")[0])
        except OSError:
            env["RABBITMQ_NODENAME"] = "rabbit@localhost"
    return env


async def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl -q ARGS``; a failure fails the test (the broker is required)."""
    argv = [*shlex.split(os.environ.get("CONVEYOR_RABBITMQCTL", "rabbitmqctl")), "-q", *args]
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_environment()
        )
    except FileNotFoundError:
        pytest.fail(f"{argv[0]} not found: this test manages users on the broker under test")
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

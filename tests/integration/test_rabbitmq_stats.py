"""``Transport.stats`` and ``conveyor status`` against a real RabbitMQ."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.common.errors import TransportError
from conveyor.common.transport.base import Delivery, OutgoingMessage
from conveyor.common.transport.rabbitmq import RabbitMQTransport
from tests.conftest import wait_until

pytestmark = pytest.mark.rabbitmq
ROOT = Path(__file__).resolve().parents[2]


async def test_stats_counts_ready_delayed_dead_letters_and_consumers(amqp_url: str, queue_name: str) -> None:
    transport = RabbitMQTransport(amqp_url, delay_tiers=(1.0, 30.0))
    await transport.connect()
    try:
        await transport.declare(queue_name)
        for i in range(3):
            await transport.publish(queue_name, OutgoingMessage(body=b"{}", message_id=f"ready-{i}"))
        for i, delay in enumerate((20.0, 25.0)):
            await transport.publish(queue_name, OutgoingMessage(body=b"{}", message_id=f"later-{i}", delay=delay))
        await transport.publish(transport.dead_letter_queue(queue_name), OutgoingMessage(body=b"x", message_id="dead"))
        stats = await transport.stats(queue_name)
        assert (stats.ready, stats.delayed, stats.dead_letters, stats.consumers) == (3, 2, 1, 0)
        assert stats.oldest_age is None, "AMQP cannot tell a message's age without taking it"

        held: list[Delivery] = []

        async def hold(delivery: Delivery) -> None:
            held.append(delivery)

        handle = await transport.consume(queue_name, hold, prefetch=1)
        await wait_until(lambda: len(held) == 1, what="one delivery")
        await asyncio.sleep(0.2)
        stats = await transport.stats(queue_name)
        assert (stats.ready, stats.consumers) == (2, 1), "an unacked delivery is not ready"

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "conveyor", "status", "--broker", amqp_url, "--queue", queue_name,
             "--interval", "0.2", "--json"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert "conveyor:***@" in report["broker"], "the password is masked"
        [row] = report["queues"]
        assert (row["ready"], row["delayed"], row["dead_letters"], row["consumers"]) == (2, 2, 1, 1)
        assert row["ready_rate_per_second"] == 0
        assert row["dead_letters_by_reason"] == {"delivery_limit": 1}  # a raw message the broker dead-lettered
        await held[0].release()
        await handle.cancel()
        with pytest.raises(TransportError):
            await transport.stats(queue_name + ".missing")
    finally:
        await transport.delete(queue_name)
        await transport.close()

"""``conveyor demo --console``: after the demo, its broker, worker and console stay up.

A new user gets a console with something in it from one command: the demo's dead letters (the
invalid images and the poison messages), its worker's breakers and rates (its metrics endpoint
on a free loopback port), and a slow trickle of new jobs (one in ten invalid) so the overview
moves. Loopback only; Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools

from conveyor.common.jobs.registry import DEFAULT_QUEUE
from conveyor.common.secrets import Redactor
from conveyor.common.transport.memory import MemoryTransport
from conveyor.consumer.http import HealthServer
from conveyor.consumer.ops.console.app import serve
from conveyor.consumer.ops.console.config import ConsoleConfig
from conveyor.consumer.ops.console.history import OverviewHistory
from conveyor.consumer.ops.console.schema_catalog import SchemaCatalog
from conveyor.consumer.ops.console.state import ConsoleState
from conveyor.consumer.ops.demo import ChargeCard, DemoRun, ResizeImage

__all__ = ["keep_demo_up"]


async def keep_demo_up(run: DemoRun, *, port: int = 8765, trickle_every: float = 0.5) -> None:
    """Serve the console on the demo's broker until cancelled."""
    health = HealthServer(run.worker, port=0)
    await health.start()
    transport = MemoryTransport(run.broker)
    await transport.connect()
    config = ConsoleConfig(port=port, queues=(DEFAULT_QUEUE,), workers=(f"http://127.0.0.1:{health.port}",),
                           refresh=1.0, broker_label="memory:// (the demo's embedded broker)")
    state = ConsoleState(config=config, transport=transport, history=OverviewHistory(config.history),
                         schemas=SchemaCatalog.from_registry(run.jobs.schemas), redact=Redactor())
    trickle = asyncio.create_task(_trickle(run, trickle_every))
    try:
        await serve(state)
    finally:
        trickle.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await trickle
        await health.stop()
        await transport.close()


async def _trickle(run: DemoRun, every: float) -> None:
    for n in itertools.count(10_000):
        if n % 3 == 0:
            await run.producer.publish("payments.charge", ChargeCard(order_id=n, cents=500))
        else:
            await run.producer.publish("images.resize", ResizeImage(image_id=n, width=-1 if n % 10 == 1 else 800))
        await asyncio.sleep(every)

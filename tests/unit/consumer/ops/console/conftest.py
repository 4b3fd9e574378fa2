"""A console on the in-memory broker, over aiohttp's test client (no network but loopback)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.errors import PermanentError
from conveyor.common.job_state.base import JobStateStore
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.secrets import Redactor
from conveyor.common.transport.base import OutgoingMessage
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer.ops.console import (
    ConsoleAuth,
    ConsoleConfig,
    ConsoleState,
    OverviewHistory,
    SchemaCatalog,
    build_app,
)
from conveyor.consumer.ops.dead_letters import DeadLetters
from conveyor.consumer.worker import Worker
from conveyor.producer.producer import Producer

SECRET = "CNRYconsole0123456789"


class Resize(BaseModel):
    image_id: int
    width: int


@dataclass
class World:
    broker: MemoryBroker
    jobs: JobRegistry
    done: list[int]
    transport: MemoryTransport

    async def dead_letters(self) -> DeadLetters:
        return DeadLetters(self.transport, DEFAULT_QUEUE)


def registry(done: list[int]) -> JobRegistry:
    jobs = JobRegistry()

    @jobs.job("images.resize", retry=RetryPolicy(max_attempts=1))
    async def resize(payload: Resize, ctx: JobContext) -> None:
        if payload.width <= 0:
            raise PermanentError(f"width must be positive (token {SECRET})")
        done.append(payload.image_id)

    return jobs


@pytest.fixture
async def world() -> World:
    """A DLQ with 3 ``permanent`` entries (widths ≤ 0) and one poison message."""
    broker, done = MemoryBroker(), []
    jobs = registry(done)
    transport, worker_transport = MemoryTransport(broker), MemoryTransport(broker)
    await transport.connect()
    await worker_transport.connect()
    async with Producer.for_registry(MemoryTransport(broker), jobs) as producer, Worker(worker_transport, jobs):
        for image_id in (1, 2, 3):
            await producer.publish("images.resize", Resize(image_id=image_id, width=-image_id))
        await producer.transport.publish(DEFAULT_QUEUE, OutgoingMessage(body=b"{not json", message_id="poison"))
        await broker.join(DEFAULT_QUEUE)
    return World(broker, jobs, done, transport)


@pytest.fixture
async def make_client(world: World) -> AsyncIterator[Callable[..., object]]:
    clients: list[TestClient] = []  # type: ignore[type-arg]

    async def make(*, read_only: bool = False, auth: ConsoleAuth | None = None, schemas: bool = True,
                   job_states: JobStateStore | None = None,
                   queues: tuple[str, ...] = (DEFAULT_QUEUE,)) -> TestClient:  # type: ignore[type-arg]
        config = ConsoleConfig(queues=queues, read_only=read_only, auth=auth, broker_label="memory://")
        state = ConsoleState(config=config, transport=world.transport, history=OverviewHistory(900),
                             schemas=SchemaCatalog.from_registry(world.jobs.schemas) if schemas else SchemaCatalog(),
                             redact=Redactor([SECRET]), job_states=job_states)
        client = TestClient(TestServer(build_app(state, sample=False)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', html)
    assert found, "the page carries a CSRF token"
    return found.group(1)


def origin(client: TestClient) -> str:  # type: ignore[type-arg]
    return f"http://{client.host}:{client.port}"

"""The job-state record on every broker where its order against the ack matters.

A dead letter is recorded in the job-state store once its copy is confirmed and *before* the
original is acked (``Settlement(on_dead_lettered=…)``): a worker killed right after that ack
never runs anything else, and the broker never redelivers, so a record written later would
stay ``running`` for good. The unit test (tests/unit/consumer/middleware/test_job_state.py)
shows it on the memory broker; here each broker's own delivery acks, and everything the worker
would run after that ack is dropped, as a ``kill -9`` there would.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from conveyor.common.backoff import RetryPolicy
from conveyor.common.job_state import JobState, MemoryJobStateStore
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.outcome import Outcome, SettleAction
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.transport.base import Delivery
from conveyor.consumer.middleware.job_state import JobStateConfig
from conveyor.consumer.worker import Worker
from conveyor.producer.producer import Producer
from tests.conformance.test_job_lifecycle import Ping, dead_letters, fast_config
from tests.conftest import wait_until
from tests.support.backends import Backend


def _delivery_class(backend: Backend) -> type[Delivery]:
    if backend.name == "rabbitmq":
        from conveyor.common.transport.rabbitmq.consumer import AmqpDelivery

        return AmqpDelivery
    if backend.name == "pulsar":
        from conveyor.common.transport.pulsar.consumer import PulsarDelivery

        return PulsarDelivery
    from conveyor.common.transport.memory import _MemoryDelivery

    return _MemoryDelivery


async def test_a_worker_killed_between_a_dead_letters_ack_and_the_settled_hooks_leaves_it_dead_lettered(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MemoryJobStateStore()
    jobs = JobRegistry()

    @jobs.job("test.ping", queue=backend.queue, retry=RetryPolicy(max_attempts=1))
    async def doomed(payload: Ping, ctx: JobContext) -> None:
        raise RuntimeError("fails every time")

    acked: list[str] = []
    cls = _delivery_class(backend)
    ack = cls._ack

    async def ack_then_die(self: Delivery) -> None:
        await ack(self)  # type: ignore[arg-type]
        acked.append(self.message_id)

    monkeypatch.setattr(cls, "_ack", ack_then_die)
    dropped: list[SettleAction] = []
    producer = Producer.for_registry(await backend.transport(), jobs, manage_transport=False, job_state=store)
    async with producer:
        handle = await producer.publish("test.ping", Ping(n=1))
    config = JobStateConfig(cancel_poll=3600, control_channel=f"conveyor.control.test.{uuid.uuid4().hex[:10]}",
                            flush_interval=0.05)
    worker = Worker(await backend.transport(), jobs, config=fast_config(), job_state=store, job_state_config=config)
    hooks = worker._run_settled_hooks

    def dead_after_the_ack(outcome: Outcome, action: SettleAction) -> None:
        if acked:
            dropped.append(action)  # the process is gone: nothing after the ack runs
        else:
            hooks(outcome, action)

    monkeypatch.setattr(worker, "_run_settled_hooks", dead_after_the_ack)
    async with worker:
        await wait_until(lambda: worker.counts["dead_lettered"] == 1, what="the dead letter", timeout=30)
    await store.reconcile(timedelta(0))  # long after the kill: no attempt is left open
    [letter] = await dead_letters(backend)
    record = await handle.status()
    assert record.state is JobState.DEAD_LETTERED and record.dead_letter_id == letter.dead_letter_id
    assert [a.outcome for a in record.attempts] == ["failed"]
    assert acked == [handle.job_id] and dropped == []  # acked once; nothing was left for after it

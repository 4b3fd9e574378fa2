"""SyncProducer on the real brokers: confirms, and a real fork() whose child publishes on its own connection.

The test is synchronous on purpose: a pre-fork server forks from plain threads, not from inside an event loop.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading

import pytest

from conveyor.common.errors import UnknownJobType
from conveyor.producer.sync_producer import SyncProducer
from tests.support.drain import drain_ids
from tests.unit.producer.test_producer import jobs
from tests.unit.producer.test_sync_producer import wait_child


@pytest.fixture(params=["rabbitmq", "pulsar"])
def broker_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue({"rabbitmq": "amqp_url", "pulsar": "pulsar_url"}[request.param]))


def test_parent_and_forked_child_publish_on_their_own_connections(broker_url: str, queue_name: str) -> None:
    producer = SyncProducer.from_url(broker_url, jobs=jobs())
    sent = [producer.publish("email.send", {"to": "parent"}, queue=queue_name).job_id]
    parent_thread = producer._runner.thread if producer._runner else None
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child process
        code = 1
        try:
            os.close(read)
            receipt = producer.publish("email.send", {"to": "child"}, queue=queue_name)
            assert producer._runner is not None and producer._runner.thread is not parent_thread
            os.write(write, receipt.job_id.encode())
            producer.close()
            code = 0
        except BaseException as exc:
            print(f"child failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            os._exit(code)
    os.close(write)
    code = wait_child(pid)
    child_id = os.read(read, 200).decode()
    os.close(read)
    assert code == 0
    # The child closed its connection at exit; the parent's is unharmed and still confirms.
    threads: list[threading.Thread] = []
    for n in range(4):
        thread = threading.Thread(target=lambda n=n: sent.append(
            producer.publish("email.send", {"to": f"thread {n}"}, queue=queue_name).job_id))
        threads.append(thread)
        thread.start()
    for thread in threads:
        thread.join()
    with pytest.raises(UnknownJobType):
        producer.publish("email.nope", {"to": "x"}, queue=queue_name)
    producer.close()
    received = asyncio.run(drain_ids(broker_url, queue_name, 6))
    assert sorted(received) == sorted([*sent, child_id])


async def test_close_does_not_wait_out_a_first_connect_to_a_broker_that_never_answers(amqp_url: str) -> None:
    # The connect goes through a proxy that takes the TCP connection and passes nothing: the
    # publish waits in the AMQP handshake. close() cancels it (ConfigurationError for the
    # publish); before, it waited for the connect timeout and the publish got its TransportError.
    from urllib.parse import urlsplit

    from conveyor.common.errors import ConfigurationError, TransportError
    from tests.faults.proxy import FaultProxy

    target = urlsplit(amqp_url)
    async with FaultProxy(target.hostname or "127.0.0.1", target.port or 5672) as proxy:
        proxy.blackhole()
        url = amqp_url.replace(target.netloc, f"{target.netloc.rpartition('@')[0]}@127.0.0.1:{proxy.port}", 1)
        producer = SyncProducer.from_url(url, jobs=jobs())

        def publish() -> BaseException | None:
            try:
                producer.publish("email.send", {"to": "a@example.com"})
            except BaseException as exc:
                return exc
            return None

        publishing = asyncio.ensure_future(asyncio.to_thread(publish))
        for _ in range(600):  # until the connect is under way (a hang guard, not a timing)
            if proxy.accepted_total:
                break
            await asyncio.sleep(0.05)
        assert proxy.accepted_total, "the publish never connected"
        await asyncio.wait_for(asyncio.to_thread(producer.close, 1.0), 30)
        outcome = await asyncio.wait_for(publishing, 30)
    assert isinstance(outcome, ConfigurationError) and not isinstance(outcome, TransportError), outcome

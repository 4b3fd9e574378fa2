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

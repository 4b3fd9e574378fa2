"""SyncProducer on the in-memory broker: threads, the async producer's errors, close, fork, exit."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.common.errors import (
    ConfigurationError,
    InvalidPayload,
    PublishNotConfirmed,
    PublishOutcomeUnknown,
    TransportError,
    UnknownJobType,
)
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.producer.producer import Producer
from conveyor.producer.sync_producer import SyncProducer
from tests.unit.producer.test_producer import Email, FlakyConfirm, jobs

ROOT = Path(__file__).resolve().parents[3]


class Counting:
    """A producer factory that counts the producers (= connections) it made, per process."""

    def __init__(self, broker: MemoryBroker, transport: type[MemoryTransport] = MemoryTransport, **options: object):
        self.broker = broker
        self.transport = transport
        self.options = options
        self.made: list[tuple[int, Producer]] = []

    def __call__(self) -> Producer:
        producer = Producer.for_registry(self.transport(self.broker), jobs(), **self.options)  # type: ignore[arg-type]
        self.made.append((os.getpid(), producer))
        return producer


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
def factory(broker: MemoryBroker) -> Counting:
    return Counting(broker)


@pytest.fixture
def producer(factory: Counting) -> Iterator[SyncProducer]:
    with SyncProducer(factory) as sync:
        yield sync


def test_many_threads_publish_through_one_producer_and_connection(producer: SyncProducer, factory: Counting,
                                                                  broker: MemoryBroker) -> None:
    ids: list[str] = []
    errors: list[BaseException] = []

    def publish_25() -> None:
        try:
            for n in range(25):
                ids.append(producer.publish("email.send", Email(to=f"{n}@example.com")).job_id)
        except BaseException as exc:  # pragma: no cover - shown by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=publish_25) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(ids)) == 200
    assert broker.depth("conveyor.default") == 200
    assert len(factory.made) == 1, "one producer, one connection for every thread"


def test_errors_are_the_async_producers_types(producer: SyncProducer, broker: MemoryBroker) -> None:
    with pytest.raises(UnknownJobType):
        producer.publish("email.unknown", {"to": "x"})
    with pytest.raises(InvalidPayload):
        producer.publish("email.send", {"too": "x"})
    assert broker.queue_names() == []
    # The producer is still usable after a refused publish.
    assert producer.publish("email.send", {"to": "x"}).tries == 1


def test_an_unroutable_publish_raises_publish_not_confirmed(broker: MemoryBroker) -> None:
    with SyncProducer(Counting(broker, declare_queues=False)) as producer:
        with pytest.raises(PublishNotConfirmed):
            producer.publish("email.send", {"to": "x"})


def test_an_unknown_outcome_is_retried_with_the_same_job_id(broker: MemoryBroker) -> None:
    factory = Counting(broker, FlakyConfirm, confirm_timeout=0.05)
    with SyncProducer(factory) as producer:
        receipt = producer.publish("email.send", Email(to="a@example.com"))
    transport = factory.made[0][1].transport
    assert isinstance(transport, FlakyConfirm)
    assert receipt.tries == 2
    assert transport.sent == [receipt.job_id, receipt.job_id]


def test_close_is_idempotent_closes_the_connection_and_refuses_later_publishes(factory: Counting) -> None:
    producer = SyncProducer(factory)
    producer.publish("email.send", {"to": "x"})
    loop_thread = next(t for t in threading.enumerate() if t.name == "conveyor-producer")
    producer.close()
    producer.close()
    assert not loop_thread.is_alive()
    transport = factory.made[0][1].transport
    assert isinstance(transport, MemoryTransport) and not transport.connected
    with pytest.raises(ConfigurationError, match="closed"):
        producer.publish("email.send", {"to": "x"})


@pytest.mark.parametrize("timeout", [float("nan"), -1.0, float("inf")])
def test_a_close_with_a_bad_timeout_raises_and_leaves_the_producer_to_a_later_close(
    factory: Counting, timeout: float
) -> None:
    # The timeout was checked after the loop thread had been taken and its finaliser detached:
    # the bad close raised, every later close did nothing, and the connection stayed open.
    producer = SyncProducer(factory)
    producer.publish("email.send", {"to": "x"})
    loop_thread = next(t for t in threading.enumerate() if t.name == "conveyor-producer")
    with pytest.raises(ConfigurationError, match="timeout"):
        producer.close(timeout=timeout)
    assert producer.publish("email.send", {"to": "y"}).tries == 1, "still open"
    producer.close()
    assert not loop_thread.is_alive()
    transport = factory.made[0][1].transport
    assert isinstance(transport, MemoryTransport) and not transport.connected


class NeverConfirms(MemoryTransport):
    waiting = threading.Event()  # a publish is inside the transport, waiting for its confirm

    async def publish(self, queue: str, message: object) -> None:  # type: ignore[override]
        NeverConfirms.waiting.set()
        await asyncio.sleep(3600)


def test_close_while_a_publish_waits_for_its_confirm_ends_it_with_an_unknown_outcome(broker: MemoryBroker) -> None:
    producer = SyncProducer(Counting(broker, NeverConfirms, confirm_timeout=3600))
    outcome: list[BaseException] = []
    waiting = threading.Thread(target=lambda: _capture(outcome, producer.publish, "email.send", {"to": "x"}))
    NeverConfirms.waiting.clear()
    waiting.start()
    # Until the publish waits for its confirm: a close before it reached the transport is the
    # other outcome ("closed"), which a loaded machine made this test see now and then.
    _until(NeverConfirms.waiting.is_set)
    producer.close(timeout=1)
    waiting.join(30)
    assert not waiting.is_alive(), "a caller waited forever on a closed producer"
    assert len(outcome) == 1 and isinstance(outcome[0], PublishOutcomeUnknown)


def test_threads_publishing_while_the_producer_closes_all_return(factory: Counting) -> None:
    producer = SyncProducer(factory)
    producer.publish("email.send", {"to": "x"})
    errors: list[BaseException] = []
    published = [0]

    def publish_until_closed() -> None:
        while True:
            try:
                producer.publish("email.send", {"to": "x"})
                published[0] += 1
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=publish_until_closed) for _ in range(6)]
    for thread in threads:
        thread.start()
    _until(lambda: published[0] > 100)
    producer.close()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads), "a publishing thread hung across close()"
    assert len(errors) == 6
    assert all(isinstance(e, ConfigurationError | PublishOutcomeUnknown | TransportError) for e in errors), errors


def _capture(into: list[BaseException], call: object, *args: object) -> None:
    try:
        call(*args)  # type: ignore[operator]
    except BaseException as exc:
        into.append(exc)


def _until(predicate: object, limit: float = 30.0) -> None:
    """Wait for another thread's progress (a hang guard, not a timing assertion)."""
    import time

    deadline = time.monotonic() + limit
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.005)


def test_a_failed_connect_raises_and_the_next_publish_connects_again(broker: MemoryBroker) -> None:
    calls: list[int] = []

    def flaky() -> Producer:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionRefusedError("broker not up yet")
        return Producer.for_registry(MemoryTransport(broker), jobs())

    with SyncProducer(flaky) as producer:
        with pytest.raises(ConnectionRefusedError):
            producer.publish("email.send", {"to": "x"})
        producer.publish("email.send", {"to": "x"})
    assert len(calls) == 2 and broker.depth("conveyor.default") == 1


class NeverConnects(MemoryTransport):
    entered = threading.Event()

    async def connect(self) -> None:
        self.entered.set()
        await asyncio.sleep(3600)  # a broker that accepts the TCP connection and never answers


def test_close_during_the_first_connect_does_not_wait_for_it(broker: MemoryBroker) -> None:
    producer = SyncProducer(Counting(broker, NeverConnects), exit_timeout=1)
    outcomes: list[BaseException] = []
    publishers = [threading.Thread(target=_capture, args=(outcomes, producer.publish, "email.send", {"to": "x"}))
                  for _ in range(3)]
    for publisher in publishers:
        publisher.start()
    assert NeverConnects.entered.wait(30)
    closing = threading.Thread(target=producer.close)
    closing.start()
    closing.join(30)
    assert not closing.is_alive(), "close() waited for a connect that never ends"
    for publisher in publishers:
        publisher.join(30)
    assert not any(p.is_alive() for p in publishers), "a publish waited on a closed producer"
    assert len(outcomes) == 3 and all(isinstance(e, ConfigurationError) for e in outcomes), outcomes
    assert "conveyor.default" not in broker._queues  # nothing was published, not even declared


def test_threads_that_publish_during_a_failed_connect_share_it_and_the_next_publish_retries(
    broker: MemoryBroker,
) -> None:
    gate = threading.Event()
    calls: list[int] = []

    class SlowThenRefused(MemoryTransport):
        async def connect(self) -> None:
            calls.append(1)
            if len(calls) == 1:
                await asyncio.get_running_loop().run_in_executor(None, gate.wait, 30)
                raise ConnectionRefusedError("broker not up yet")
            await super().connect()

    with SyncProducer(Counting(broker, SlowThenRefused)) as producer:
        outcomes: list[BaseException] = []
        publishers = [threading.Thread(target=_capture, args=(outcomes, producer.publish, "email.send", {"to": "x"}))
                      for _ in range(4)]
        for publisher in publishers:
            publisher.start()
        _until(lambda: len(calls) == 1)
        # Released only once all four wait for that one connect (in its future's result()): a
        # thread that a loaded machine started after the failure would rightly connect again.
        _until(lambda: _waiting_for_the_connect(producer) == 4)
        gate.set()
        for publisher in publishers:
            publisher.join(30)
        assert len(outcomes) == 4 and all(isinstance(e, ConnectionRefusedError) for e in outcomes), outcomes
        assert len(calls) == 1, "each waiting thread made a connect of its own"
        producer.publish("email.send", {"to": "x"})
    assert len(calls) == 2 and broker.depth("conveyor.default") == 1


def _waiting_for_the_connect(producer: SyncProducer) -> int:
    runner = producer._runner
    opening = runner.opening if runner is not None else None
    return 0 if opening is None else len(opening._condition._waiters)  # type: ignore[attr-defined]


def test_publishing_from_the_loop_thread_itself_is_refused(producer: SyncProducer) -> None:
    producer.publish("email.send", {"to": "x"})
    runner = producer._runner
    assert runner is not None
    outcome: list[BaseException] = []
    done = threading.Event()

    def on_loop() -> None:
        try:
            producer.publish("email.send", {"to": "x"})
        except BaseException as exc:
            outcome.append(exc)
        done.set()

    runner.loop.call_soon_threadsafe(on_loop)
    assert done.wait(10)
    assert len(outcome) == 1 and isinstance(outcome[0], ConfigurationError)


def _in_child(check: object) -> int:
    """Fork; run ``check`` in the child; its exit status (0: passed)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child process
        code = 1
        try:
            check()  # type: ignore[operator]
            code = 0
        except BaseException as exc:
            print(f"child failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            os._exit(code)
    return wait_child(pid)


def wait_child(pid: int, limit: float = 60.0) -> int:
    """The child's exit code; a child still running after ``limit`` s is killed and fails the test
    (a hang guard: a deadlocked child must fail, not stall the suite)."""
    import time

    deadline = time.monotonic() + limit
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the forked child did not finish within {limit:g}s")
        time.sleep(0.01)


def test_a_forked_child_gets_its_own_loop_thread_and_connection(producer: SyncProducer, factory: Counting) -> None:
    producer.publish("email.send", {"to": "parent"})
    parent_runner = producer._runner
    assert parent_runner is not None

    def child() -> None:
        producer.publish("email.send", {"to": "child"})
        mine = producer._runner
        assert mine is not None and mine is not parent_runner and mine.pid == os.getpid()
        assert mine.thread.is_alive() and mine.thread is not parent_runner.thread
        pids = [pid for pid, _ in factory.made]
        assert pids == [os.getppid(), os.getpid()], pids
        producer.close()

    assert _in_child(child) == 0
    # The parent's loop thread and connection are untouched by the child (and its close).
    assert producer._runner is parent_runner and parent_runner.thread.is_alive()
    producer.publish("email.send", {"to": "parent again"})
    assert [pid for pid, _ in factory.made] == [os.getpid()]


def test_a_fork_while_another_thread_holds_the_lock_does_not_deadlock_the_child(broker: MemoryBroker) -> None:
    parent = os.getpid()
    connecting, release = threading.Event(), threading.Event()

    def slow_in_parent() -> Producer:
        if os.getpid() == parent:
            connecting.set()
            release.wait(30)  # holds the producer's lock (first connect) while the main thread forks
        return Producer.for_registry(MemoryTransport(broker), jobs())

    producer = SyncProducer(slow_in_parent)
    first = threading.Thread(target=producer.publish, args=("email.send", {"to": "x"}))
    first.start()
    try:
        assert connecting.wait(10)

        def child() -> None:
            producer.publish("email.send", {"to": "child"})
            producer.close()

        assert _in_child(child) == 0
    finally:
        release.set()
        first.join()
        producer.close()


EXIT_SCRIPT = """
import asyncio, sys
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.producer.producer import Producer
from conveyor.producer.sync_producer import SyncProducer

class HangsOnClose(MemoryTransport):
    async def close(self):
        await asyncio.sleep(3600)

transport = HangsOnClose if sys.argv[1] == "hang" else MemoryTransport
producer = SyncProducer(lambda: Producer(transport(MemoryBroker()), allow_unregistered=True), exit_timeout=0.5)
print(producer.publish("x.y", {"n": 1}).job_id)
# no close(): the interpreter's exit closes it, bounded by exit_timeout
"""


@pytest.mark.parametrize("close", ["ok", "hang"])
def test_an_open_producer_is_closed_at_exit_without_hanging(close: str) -> None:
    result = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, close], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip()) > 10
    if close == "hang":
        assert "closing the producer's connection failed: TimeoutError" in result.stderr


def test_a_producer_dropped_without_close_stops_its_thread_and_closes_its_connection(factory: Counting) -> None:
    producer = SyncProducer(factory, name="conveyor-producer-dropped")
    producer.publish("email.send", {"to": "x"})
    loop_thread = next(t for t in threading.enumerate() if t.name == "conveyor-producer-dropped")
    del producer
    gc.collect()
    assert not loop_thread.is_alive(), "a dropped producer's loop thread ran on until exit"
    transport = factory.made[0][1].transport
    assert isinstance(transport, MemoryTransport) and not transport.connected


def test_producers_made_and_closed_many_times_register_nothing_per_instance(
    factory: Counting, monkeypatch: pytest.MonkeyPatch
) -> None:
    registered: list[object] = []
    monkeypatch.setattr(os, "register_at_fork", lambda **hooks: registered.append(hooks))
    for _ in range(100):
        with SyncProducer(factory) as producer:
            producer.publish("email.send", {"to": "x"})
    assert registered == [], "each SyncProducer added a fork hook that is never removed"


async def test_publishing_from_a_running_event_loop_warns_once_that_it_blocks_the_loop(
    producer: SyncProducer, caplog: pytest.LogCaptureFixture
) -> None:
    # Not refused: a notebook's cells run on the kernel's loop, and there blocking is what the user wants.
    with caplog.at_level(logging.WARNING, logger="conveyor.producer.sync_producer"):
        for _ in range(3):
            producer.publish("email.send", {"to": "x"})
    warned = [r.getMessage() for r in caplog.records if "running event loop" in r.getMessage()]
    assert len(warned) == 1 and "await" in warned[0], warned


def test_publishing_from_plain_threads_does_not_warn(producer: SyncProducer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="conveyor.producer.sync_producer"):
        producer.publish("email.send", {"to": "x"})
    assert not caplog.records

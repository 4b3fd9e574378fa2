"""Fault scenarios on a real three-node RabbitMQ 4 cluster, with the ledger.

The cluster is scripts/services/rabbitmq-cluster.sh's (nodes rabbitc1..3@localhost, AMQP
5681-5683, quorum queues with three members); clients get the multi-host URL and fail over.
Every scenario: lost = 0 and duplicate effects = 0; duplicate executions (at-least-once after a
node death) and the time to recover are printed. Each runs once per session (not once per
CONVEYOR_FAULT_ROUNDS): the module must fit in about 8 minutes of CI. After each scenario every
node runs again (``up``) and no nftables rule is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from conveyor.common.errors import TransportError
from conveyor.common.transport.factory import transport_from_url
from tests.faults import app
from tests.faults.cluster import Cluster, paced_publish, readiness
from tests.faults.harness import FaultRun, check
from tests.faults.ledger import Figures
from tests.support.ports import free_port

IN_FLIGHT = 8
ONE_ROUND = True  # see tests/faults/conftest.py


@pytest.fixture(scope="session")
def cluster_url() -> str:
    return Cluster.up_sync()


@pytest.fixture
async def cluster(cluster_url: str) -> AsyncIterator[Cluster]:
    control = Cluster()
    try:
        yield control
    finally:
        await control.heal()  # never leave a node cut off
        await control.up()  # every node back, whatever the scenario did


@pytest.fixture
def fault_round() -> int:  # once per session here (ONE_ROUND), see the module docs
    return 1


@pytest.fixture
def broker() -> str:
    return "rabbitmq-cluster"


@pytest.fixture
def broker_url(cluster_url: str) -> str:
    return cluster_url


def _jobs(count: int, *, seconds: float = 0.02, fail_every: int = 0) -> tuple[list[dict[str, object]], set[int]]:
    payloads: list[dict[str, object]] = []
    dead = set()
    for n in range(count):
        failing = bool(fail_every) and n % fail_every == 0
        payloads.append({"n": n, "seconds": seconds, "mode": "fail" if failing else "ok"})
        if failing:
            dead.add(n)
    return payloads, dead


async def _eventually(probe: Callable[[], Awaitable[int | None]], want: int, *, timeout: float) -> float:
    """Seconds until ``probe()`` returns ``want``; fails after ``timeout``."""
    began = time.monotonic()
    while (got := await probe()) != want:
        if time.monotonic() - began > timeout:
            pytest.fail(f"/readyz answered {got}, not {want}, for {timeout}s")
        await asyncio.sleep(0.5)
    return time.monotonic() - began


async def _consumers(run: FaultRun, count: int, timeout: float = 60) -> None:
    async with transport_from_url(run.url) as transport:
        deadline = time.monotonic() + timeout
        while (await transport.stats(run.queue)).consumers != count:
            if time.monotonic() > deadline:
                pytest.fail(f"the queue does not have {count} consumers after {timeout}s")
            await asyncio.sleep(0.2)


def _report(figures: Figures, record_figures: list[Figures]) -> None:
    record_figures.append(figures)
    print("\n" + figures.line())


def _assert_workers_up(run: FaultRun) -> None:
    for process in run.workers:
        assert process.poll() is None, f"a worker died: {run.worker_log(process)[-3000:]}"


async def _declared(run: FaultRun) -> None:
    async with transport_from_url(run.url) as transport:
        await transport.declare(run.queue)


@contextlib.asynccontextmanager
async def _under_load(run: FaultRun, count: int, *, rate: float, fail_every: int) -> AsyncIterator[None]:
    """Two workers and a producer at ``rate`` jobs/s; the body runs once 20 jobs are done and
    the publishing has to finish (every job confirmed) before the block ends."""
    await _declared(run)
    for _ in range(2):
        run.start_worker(concurrency=IN_FLIGHT)
    payloads, dead = _jobs(count, fail_every=fail_every)
    publishing = asyncio.create_task(paced_publish(run, payloads, rate=rate, dead=dead))
    try:
        await run.wait_for_effects(20, timeout=120)
        yield
        await publishing
    finally:
        publishing.cancel()


def _finish(run: FaultRun, figures: Figures, record_figures: list[Figures]) -> None:
    _report(figures, record_figures)
    _assert_workers_up(run)
    check(figures, max_duplicate_dead_letters=2 * IN_FLIGHT)
    assert run.stop_workers() == [0, 0]


async def test_cluster_leader_kill_9_while_publishing_and_consuming(
    fault_run: FaultRun, cluster: Cluster, record_figures: list[Figures]
) -> None:
    async with _under_load(fault_run, 300, rate=20, fail_every=30):
        # The work queue is a quorum queue replicated on all three nodes.
        assert await cluster.members(fault_run.queue) == [f"rabbitc{n}@localhost" for n in (1, 2, 3)]
        leader = await cluster.leader(fault_run.queue)
        killed = time.time()
        await cluster.kill(leader)
    published_after = time.time() - killed  # publishing went on through the other two nodes
    await cluster.start(leader)
    figures = await fault_run.settle(timeout=240, healed_at=killed)
    figures.notes.update(killed=f"rabbitc{leader}", publish_done_after=round(published_after, 1))
    _finish(fault_run, figures, record_figures)


async def test_cluster_rolling_restart_under_load(
    fault_run: FaultRun, cluster: Cluster, record_figures: list[Figures]
) -> None:
    async with _under_load(fault_run, 600, rate=25, fail_every=50):
        began = time.time()
        for node in (1, 2, 3):  # one after another, each back in the cluster before the next
            await cluster.restart(node)
        rolled = time.time() - began
    figures = await fault_run.settle(timeout=240, healed_at=began)
    figures.notes.update(rolling_restart_seconds=round(rolled, 1))
    _finish(fault_run, figures, record_figures)


async def test_cluster_one_node_cut_off_clients_work_through_the_majority(
    fault_run: FaultRun, cluster: Cluster, record_figures: list[Figures]
) -> None:
    async with _under_load(fault_run, 400, rate=20, fail_every=40):
        # The node holding the queue's leader, where the clients are connected too (each starts
        # at the URL's first host): the hardest one to lose. It notices it is alone after about
        # net_ticktime (10 s), pauses (pause_minority) and closes its clients' connections, which
        # move to the majority; a leader is elected there.
        victim = await cluster.leader(fault_run.queue)
        cut = time.time()
        try:
            await cluster.isolate(victim)
            before = len((await fault_run.ledger.effects())[0])
            await asyncio.sleep(40)
            during = len((await fault_run.ledger.effects())[0]) - before
        finally:
            await cluster.heal()
    await cluster.up()  # the cut-off node resumes and rejoins
    figures = await fault_run.settle(timeout=240, healed_at=cut)
    figures.notes.update(cut_off=f"rabbitc{victim}", done_while_cut_off=during)
    assert during >= 50, "jobs must keep finishing through the majority while one node is cut off"
    assert figures.recover_seconds is not None and figures.recover_seconds < 35, figures.line()
    _finish(fault_run, figures, record_figures)


async def test_cluster_loss_of_two_nodes_fails_publishes_loudly_and_loses_nothing_confirmed(
    fault_run: FaultRun, cluster: Cluster, record_figures: list[Figures]
) -> None:
    await _declared(fault_run)
    payloads, dead = _jobs(150, fail_every=30)
    await paced_publish(fault_run, payloads, rate=1000, dead=dead)  # confirmed, waiting in the queue
    port = free_port()
    worker = fault_run.start_worker(concurrency=IN_FLIGHT, http_port=port)
    await fault_run.wait_for_effects(10, timeout=120)
    assert await readiness(port) == 200
    async with fault_run.producer(confirm_timeout=5, publish_tries=2) as producer:
        receipt = await producer.publish_envelope(producer.build_envelope(app.JOB_TYPE, {"n": -1}))  # connected
        fault_run.ledger.expect(receipt.job_id)
        lost_at = time.time()
        await asyncio.gather(cluster.kill(1), cluster.kill(2))
        failures: list[str] = []
        refused_in: list[float] = []
        for n in range(2):
            began = time.monotonic()
            with pytest.raises(TransportError) as caught:
                await producer.publish_envelope(producer.build_envelope(app.JOB_TYPE, {"n": 1000 + n}))
            refused_in.append(time.monotonic() - began)
            failures.append(type(caught.value).__name__)
        # No node serves (the survivor paused itself: a minority): the worker is not ready.
        unready = await _eventually(lambda: readiness(port), 503, timeout=30)
    restarted = time.time()
    await cluster.up()  # both at once: a node killed with its peers waits for them to boot
    await paced_publish(fault_run, [{"n": 9999}], rate=1000)  # and the cluster takes new jobs again
    ready_again = await _eventually(lambda: readiness(port), 200, timeout=60)
    figures = await fault_run.settle(timeout=240, healed_at=restarted)
    figures.notes.update(failed_publishes=len(failures), kinds=",".join(sorted(set(failures))),
                         slowest_refusal=f"{max(refused_in):.1f}s", outage=f"{restarted - lost_at:.1f}s",
                         unready_within=f"{unready:.1f}s", ready_again_after=f"{ready_again:.1f}s")
    _report(figures, record_figures)
    assert worker.poll() is None, fault_run.worker_log(worker)[-3000:]
    check(figures, max_duplicate_dead_letters=IN_FLIGHT)
    assert max(refused_in) < 30, "a publish to an unavailable queue must fail within its bounded retries"
    assert fault_run.stop_workers() == [0]


async def test_cluster_worker_fleet_scaled_up_and_down_accounts_for_every_job(
    fault_run: FaultRun, cluster: Cluster, record_figures: list[Figures]
) -> None:
    """As an autoscaler does: SIGTERM to some workers, new ones started, while jobs flow."""
    await _declared(fault_run)
    fleet = [fault_run.start_worker(concurrency=IN_FLIGHT) for _ in range(3)]
    payloads, dead = _jobs(600, seconds=0.05, fail_every=60)
    publishing = asyncio.create_task(paced_publish(fault_run, payloads, rate=30, dead=dead))
    try:
        await fault_run.wait_for_effects(60, timeout=120)
        for process in fleet[:2]:  # scale in: two of three go
            process.send_signal(signal.SIGTERM)
        grown = [fault_run.start_worker(concurrency=IN_FLIGHT) for _ in range(3)]  # scale out: three come
        await fault_run.wait_for_effects(300, timeout=120)
        await _consumers(fault_run, 4)  # the new ones attached (a SIGTERM before that ends a bare interpreter)
        grown[0].send_signal(signal.SIGTERM)  # and in again
        await publishing
    finally:
        publishing.cancel()
    figures = await fault_run.settle(timeout=240)
    figures.notes.update(workers_started=len(fault_run.workers), sigtermed=3)
    _report(figures, record_figures)
    check(figures)
    # Graceful scale-in finishes what it started and hands back the rest unstarted.
    assert figures.duplicate_executions == 0, figures.line()
    assert fault_run.stop_workers() == [0] * 6

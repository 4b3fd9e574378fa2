"""Fault injection with exact accounting, against the real brokers.

Each scenario publishes jobs, breaks something on purpose, heals it, and then accounts for
every job id (tests/faults/ledger.py). Invariants everywhere: lost = 0, duplicate effects = 0,
nothing both succeeded and dead-lettered, only the jobs meant to fail in the DLQ, and worker
processes survive bad input. Duplicate *executions* are allowed where a crash makes them
unavoidable (at-least-once) and are reported; the idempotency transaction turns them into
skips, which "duplicate effects = 0" proves.

The TCP scenarios (cut, black hole) run on RabbitMQ only: a Pulsar client looks up the
topic's owner and then connects to the address the broker advertises, so a proxy in front of
the service URL sees only the lookup. Pulsar's connection loss is covered by killing the broker.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import signal
import subprocess
import sys
import time

import orjson
import pytest

from conveyor.common.transport.base import OutgoingMessage
from conveyor.common.transport.factory import transport_from_url
from tests.faults import app
from tests.faults.harness import ROOT, BrokerControl, FaultRun, check
from tests.faults.ledger import POISON_HEADER, Figures
from tests.faults.proxy import FaultProxy

BOTH = pytest.mark.parametrize("broker", ["rabbitmq", "pulsar"])
RABBITMQ = pytest.mark.parametrize("broker", ["rabbitmq"])
# A job that was dead-lettered (confirmed) by a worker killed before its ack is redelivered and
# dead-lettered again: at-least-once, at most one per job in flight.
IN_FLIGHT = 8


def _jobs(count: int, *, fail_every: int = 0, seconds: float = 0.02, mode: str = "ok") -> tuple[list[dict[str, object]], set[int]]:
    payloads: list[dict[str, object]] = []
    dead = set()
    for n in range(count):
        if fail_every and n % fail_every == 0:
            payloads.append({"n": n, "seconds": seconds, "mode": "fail"})
            dead.add(n)
        else:
            payloads.append({"n": n, "seconds": seconds, "mode": mode})
    return payloads, dead


def _report(figures: Figures, record_figures: list[Figures]) -> None:
    record_figures.append(figures)
    print("\n" + figures.line())


@BOTH
async def test_worker_kill_9_mid_batch(fault_run: FaultRun, record_figures: list[Figures]) -> None:
    payloads, dead = _jobs(300, fail_every=25)
    await fault_run.publish(payloads, dead=dead)
    victim = fault_run.start_worker(concurrency=IN_FLIGHT)
    await fault_run.wait_for_effects(60)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    healed = time.time()
    fault_run.start_worker(concurrency=IN_FLIGHT)
    figures = await fault_run.settle(healed_at=healed)
    _report(figures, record_figures)
    check(figures, max_duplicate_dead_letters=IN_FLIGHT)
    assert figures.duplicate_executions <= 2 * IN_FLIGHT, figures.line()  # only what was in flight or unacked
    assert fault_run.stop_workers()[1:] == [0]


@BOTH
async def test_sigterm_with_jobs_in_flight_and_prefetched(fault_run: FaultRun, record_figures: list[Figures]) -> None:
    payloads, _ = _jobs(120, seconds=0.3)
    await fault_run.publish(payloads)
    first = fault_run.start_worker(concurrency=4, prefetch=40, grace=20)
    await fault_run.wait_for_effects(8)
    began = time.monotonic()
    first.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(first.wait, 40)
    drain_seconds = time.monotonic() - began
    assert code == 0, fault_run.worker_log(first)[-3000:]
    done_by_first = len((await fault_run.ledger.effects())[0])
    fault_run.start_worker(concurrency=8)
    figures = await fault_run.settle()
    figures.notes.update(drain_seconds=round(drain_seconds, 1), done_before_exit=done_by_first)
    _report(figures, record_figures)
    check(figures)
    # In-flight jobs finished inside the grace period; prefetched ones went back unstarted.
    assert figures.duplicate_executions == 0, figures.line()
    assert drain_seconds < 20, "the drain took the whole grace period: prefetched jobs were started"


@BOTH
async def test_broker_crash_while_publishing_and_consuming(
    fault_run: FaultRun, broker: str, record_figures: list[Figures]
) -> None:
    control = BrokerControl(broker)
    worker = fault_run.start_worker(concurrency=IN_FLIGHT)
    payloads, dead = _jobs(300, fail_every=30, seconds=0.05)
    publishing = asyncio.create_task(fault_run.publish(payloads, dead=dead, deadline=180))
    try:
        await fault_run.wait_for_effects(40, timeout=120)
        killed = time.time()  # recovery counts from the crash: restart time included
        await control.crash()
        await asyncio.sleep(2)
        await control.restart()
        await publishing
    finally:
        if not publishing.done():
            publishing.cancel()
    figures = await fault_run.settle(timeout=300, healed_at=killed)
    _report(figures, record_figures)
    assert worker.poll() is None, "the worker must survive the broker's death and reconnect"
    check(figures, max_duplicate_dead_letters=IN_FLIGHT)
    assert figures.published == 300
    assert fault_run.stop_workers() == [0]


@RABBITMQ
async def test_tcp_connection_cut_between_worker_and_broker(
    fault_run: FaultRun, record_figures: list[Figures]
) -> None:
    payloads, dead = _jobs(300, fail_every=30, seconds=0.05)
    await fault_run.publish(payloads, dead=dead)
    host, port = _host_port(fault_run.url)
    async with FaultProxy(host, port) as proxy:
        fault_run.start_worker(concurrency=IN_FLIGHT, url=proxy.rewrite_url(fault_run.url))
        await fault_run.wait_for_effects(50)
        first_cut = proxy.cut()
        healed = time.time()
        await fault_run.wait_for_effects(150)
        second_cut = proxy.cut()
        figures = await fault_run.settle(healed_at=healed)
        figures.notes.update(connections_cut=first_cut + second_cut)
        _report(figures, record_figures)
        check(figures, max_duplicate_dead_letters=IN_FLIGHT)
        assert first_cut >= 2 and second_cut >= 2, "both worker connections (publish, consume) go through the proxy"
        assert fault_run.stop_workers() == [0]


@RABBITMQ
async def test_tcp_black_hole_for_30_seconds(fault_run: FaultRun, record_figures: list[Figures]) -> None:
    payloads, dead = _jobs(200, fail_every=40, seconds=0.05)
    await fault_run.publish(payloads, dead=dead)
    host, port = _host_port(fault_run.url)
    async with FaultProxy(host, port) as proxy:
        # A short heartbeat is how AMQP notices a silent path; the default (60 s) outlives the hole.
        url = proxy.rewrite_url(fault_run.url) + "?heartbeat=5"
        fault_run.start_worker(concurrency=IN_FLIGHT, url=url)
        await fault_run.wait_for_effects(40)
        proxy.blackhole(30.0)
        during = len((await fault_run.ledger.effects())[0])
        await asyncio.sleep(30.0)
        healed = time.time()
        figures = await fault_run.settle(timeout=240, healed_at=healed)
        figures.notes.update(black_hole_seconds=30)
        _report(figures, record_figures)
        check(figures, max_duplicate_dead_letters=IN_FLIGHT)
        assert during < 200, "the black hole started before the work was done"
        assert fault_run.stop_workers() == [0]


@BOTH
async def test_downstream_outage_opens_the_breaker(fault_run: FaultRun, record_figures: list[Figures]) -> None:
    outage = 15.0
    fault_run.outage_flag.touch()
    payloads, _ = _jobs(80, mode="depends")
    await fault_run.publish(payloads)
    fault_run.start_worker(concurrency=IN_FLIGHT, extra_env={
        "CONVEYOR_BREAKER_CONSECUTIVE_FAILURES": "5", "CONVEYOR_BREAKER_RESET_TIMEOUT": "2",
    })
    await asyncio.sleep(outage)
    attempts_during_outage = len(fault_run.ledger.executions())
    fault_run.outage_flag.unlink()
    healed = time.time()
    figures = await fault_run.settle(timeout=120, healed_at=healed)
    figures.notes.update(outage_seconds=outage, attempts_during_outage=attempts_during_outage,
                         attempts_per_second=round(attempts_during_outage / outage, 2))
    _report(figures, record_figures)
    check(figures)
    assert figures.dead_lettered == 0, "an outage must not dead-letter jobs"
    # Without a breaker 8 slots would spin through retries; with it: the first failures, then
    # one half-open probe per reset timeout (2 s).
    assert attempts_during_outage <= 2 * IN_FLIGHT + outage / 2 + 4, figures.line()
    assert figures.recover_seconds is not None and figures.recover_seconds < 30, figures.line()
    assert fault_run.stop_workers() == [0]


@BOTH
async def test_handler_that_hangs_is_cut_by_its_timeout(fault_run: FaultRun, record_figures: list[Figures]) -> None:
    payloads, _ = _jobs(40)
    for n in (3, 13, 23, 33):
        payloads[n]["mode"] = "hang_once"
    await fault_run.publish(payloads)
    fault_run.start_worker(concurrency=IN_FLIGHT, extra_env={"FAULT_TIMEOUT": "1"})
    figures = await fault_run.settle(timeout=120)
    _report(figures, record_figures)
    check(figures)
    assert figures.dead_lettered == 0 and figures.duplicate_executions == 4, figures.line()
    assert fault_run.stop_workers() == [0]


@BOTH
async def test_handler_that_blocks_the_event_loop_trips_the_watchdog(
    fault_run: FaultRun, record_figures: list[Figures]
) -> None:
    payloads, _ = _jobs(40, seconds=0.05)
    payloads[10]["mode"] = "block_once"
    await fault_run.publish(payloads)
    env = {"CONVEYOR_STALL_WARN_AFTER": "1", "CONVEYOR_STALL_EXIT_AFTER": "3", "FAULT_BLOCK_SECONDS": "60"}
    blocked = fault_run.start_worker(concurrency=4, extra_env=env)
    code = await asyncio.to_thread(blocked.wait, 60)
    log = fault_run.worker_log(blocked)
    assert code == 70, log[-3000:]
    assert "event loop blocked" in log, log[-3000:]
    assert "time.sleep" in log and "tests/faults/app.py" in log, "the log names the blocking call"
    healed = time.time()
    fault_run.start_worker(concurrency=4, extra_env=env)  # the supervisor's restart
    figures = await fault_run.settle(timeout=120, healed_at=healed)
    figures.notes.update(exit_code=code)
    _report(figures, record_figures)
    check(figures)
    assert figures.dead_lettered == 0, figures.line()


@BOTH
async def test_poison_mix_interleaved_with_valid_jobs(fault_run: FaultRun, record_figures: list[Figures]) -> None:
    worker = fault_run.start_worker(concurrency=IN_FLIGHT)
    payloads, _ = _jobs(60)
    valid = iter(payloads)
    async with (
        fault_run.producer() as producer,
        transport_from_url(fault_run.url) as transport,
    ):
        sample = orjson.loads(producer.build_envelope(app.JOB_TYPE, {"n": 0}).model_dump_json())

        def envelope_with(**changes: object) -> bytes:
            return orjson.dumps({**sample, "job_id": f"forged-{len(fault_run.ledger.poison)}", **changes})

        poison = {
            "malformed-json": b"{not json",
            "binary": b"\xff\xfe\x00\x01",
            "duplicate-keys": b'{"job_id": "a", "job_id": "b"}',
            "nan": b'{"attempt": NaN}',
            "wrong-type": envelope_with(payload={"kind": "inline", "data": {"n": "not a number"}}),
            "unknown-job-type": envelope_with(job_type="fault.nobody-handles-this"),
            "unknown-field": envelope_with(surprise=True),
            "oversize": b'{"pad": "' + b"x" * (1024 * 1024 + 10) + b'"}',
            "huge-int": envelope_with(attempt=1).replace(b'"attempt":1', b'"attempt":' + str(2**70).encode()),
        }
        for marker, body in poison.items():
            await fault_run.publish(list(itertools.islice(valid, 5)))
            await fault_run.publish_raw(marker, body)
        # Valid jobs with forged broker/retry headers: never trusted for limits, they just run.
        forged = {"x-death": '[{"count": 9999, "reason": "expired"}]', "x-delivery-count": "999",
                  "x-first-death-reason": "rejected", "conveyor-attempt": "99", "x-conveyor-due-at": "1"}
        for n in range(5):
            envelope = producer.build_envelope(app.JOB_TYPE, {"n": 1000 + n})
            await transport.publish(fault_run.queue, OutgoingMessage(
                body=envelope.model_dump_json().encode(), message_id=envelope.job_id, headers=forged))
            fault_run.ledger.expect(envelope.job_id)
        # A publisher that claims the job is on attempt 999 of 10 gets a run, not a free pass
        # to the DLQ and not an endless loop.
        liar = producer.build_envelope(app.JOB_TYPE, {"n": 2000}).model_copy(update={"attempt": 999})
        await transport.publish(fault_run.queue, OutgoingMessage(
            body=liar.model_dump_json().encode(), message_id=liar.job_id))
        fault_run.ledger.expect(liar.job_id)
    await fault_run.publish(list(valid))
    figures = await fault_run.settle(timeout=120)
    _report(figures, record_figures)
    check(figures)
    assert figures.poison == len(poison), figures.line()
    assert worker.poll() is None, "bad input must never take a worker down"
    reasons = {r.original_headers.get(POISON_HEADER): r.reason for r in (await fault_run.ledger.dead_letters())}
    assert reasons["oversize"] == "oversize" and reasons["unknown-job-type"] == "unknown_job_type"
    assert reasons["wrong-type"] == "invalid_payload" and reasons["malformed-json"] == "malformed"
    assert figures.duplicate_executions == 0, "poison never loops; valid jobs ran once"
    assert fault_run.stop_workers() == [0]


@BOTH
async def test_dlq_replay_killed_half_way(fault_run: FaultRun, record_figures: list[Figures]) -> None:
    fault_run.outage_flag.touch()  # the bug is live: every job fails permanently
    payloads, _ = _jobs(60, mode="broken")
    await fault_run.publish(payloads, dead=set(range(60)))
    fault_run.start_worker(concurrency=IN_FLIGHT)
    await fault_run.settle(timeout=120)
    fault_run.outage_flag.unlink()  # the fix is deployed; now replay
    for job_id in fault_run.ledger.expected:
        fault_run.ledger.expect(job_id, dead=False)
    replay = [sys.executable, "-m", "conveyor", "dlq", "replay", "--queue", fault_run.queue, "--rate", "20"]
    first = subprocess.Popen(replay, cwd=ROOT, env=fault_run.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await fault_run.wait_for_effects(20, timeout=60)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    second = await asyncio.to_thread(
        subprocess.run, replay, cwd=ROOT, env=fault_run.env(), capture_output=True, timeout=120, check=False
    )
    assert second.returncode == 0, second.stderr.decode()[-2000:]
    await fault_run.wait_for_effects(60, timeout=120)
    figures = await fault_run.settle(timeout=60)
    _report(figures, record_figures)
    check(figures)
    assert figures.succeeded == 60 and figures.dead_lettered == 0, "the DLQ is empty after the replay"
    assert fault_run.stop_workers() == [0]


def _host_port(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5672


@BOTH
async def test_job_that_kills_its_worker_every_time_is_dead_lettered_as_crash_loop(
    fault_run: FaultRun, record_figures: list[Figures]
) -> None:
    """Every run of one job kills its worker; five ordinary jobs were published beside it and
    share its deliveries. The crash journal (CONVEYOR_STATE_DIR) counts the deaths it was
    running in, suspects run alone, so the killer is dead-lettered after the limit (3) and the
    five others succeed, unpunished."""
    payloads = [{"n": 0, "mode": "crash_always"}, *({"n": n, "seconds": 0.3} for n in range(1, 6))]
    ids = await fault_run.publish(payloads, dead={0})
    codes = await _restart_until_settled(fault_run)
    deaths = len(codes)
    assert set(codes) == {-signal.SIGKILL}, codes
    figures = await fault_run.settle(timeout=120)
    figures.notes.update(worker_deaths=deaths)
    _report(figures, record_figures)
    check(figures)
    [record] = [r for r in await fault_run.ledger.dead_letters() if r.job_id == ids[0]]
    assert record.reason == "crash_loop", record
    assert (record.error_message or "").count("(run started") == 3, "the dead letter names the runs it killed"
    assert deaths == 3, f"{deaths} worker deaths; the limit is 3"
    assert fault_run.stop_workers()[-1] == 0


@BOTH
async def test_sync_handler_that_hangs_every_time_is_dead_lettered_as_crash_loop(
    fault_run: FaultRun, record_figures: list[Figures]
) -> None:
    """A sync handler's thread never returns, on every run. No thread can be stopped: past its
    time limit by CONVEYOR_STALL_EXIT_AFTER the watchdog ends the worker (exit 70), the crash
    journal counts those deaths, so the job is dead-lettered after 3 and the others succeed.
    It used to hold its slot and message for good (on Pulsar, and on RabbitMQ for 30 minutes
    a time, until the broker's consumer_timeout closed the channel)."""
    payloads, _ = _jobs(20, seconds=0.05)
    env = {"FAULT_TIMEOUT": "0.5", "CONVEYOR_STALL_WARN_AFTER": "0.5", "CONVEYOR_STALL_EXIT_AFTER": "1"}
    await _watchdog_ends_three_workers_then_crash_loop(fault_run, record_figures, payloads, env,
                                                       job_types={5: app.SYNC_HANG_JOB_TYPE})


async def _watchdog_ends_three_workers_then_crash_loop(
    fault_run: FaultRun, record_figures: list[Figures], payloads: list[dict[str, object]], env: dict[str, str],
    job_types: dict[int, str] | None = None,
) -> None:
    """Job 5 makes the watchdog end every worker that runs it: three exits 70, then it is
    dead-lettered as crash_loop and every other job succeeds."""
    ids = await fault_run.publish(payloads, dead={5}, job_types=job_types)
    codes = await _restart_until_settled(fault_run, env)
    figures = await fault_run.settle(timeout=120)
    figures.notes.update(worker_deaths=len(codes))
    _report(figures, record_figures)
    check(figures)
    assert codes == [70, 70, 70], codes
    [record] = [r for r in await fault_run.ledger.dead_letters() if r.job_id == ids[5]]
    assert record.reason == "crash_loop", record


async def _restart_until_settled(
    fault_run: FaultRun, env: dict[str, str] | None = None, max_deaths: int = 4
) -> list[int]:
    """Run one worker at a time, restarting it when it dies (a supervisor's job), until every
    job is accounted for; the exit codes of the workers that died."""
    codes: list[int] = []
    give_up = time.monotonic() + 300  # a job held for good must fail the scenario, not hang CI
    while True:
        worker = fault_run.start_worker(concurrency=8, extra_env=env)
        while worker.poll() is None and not fault_run.ledger.settled(await fault_run.ledger.snapshot()):
            assert time.monotonic() < give_up, f"not every job ended in 300 s (worker deaths: {codes})"
            await asyncio.sleep(0.2)
        if worker.poll() is None:
            return codes
        codes.append(worker.returncode)
        assert len(codes) <= max_deaths, f"the loop was not stopped after {len(codes)} worker deaths: {codes}"


@BOTH
async def test_handler_that_blocks_the_event_loop_every_time_is_dead_lettered_as_crash_loop(
    fault_run: FaultRun, record_figures: list[Figures]
) -> None:
    """The watchdog ends each worker the job blocks (exit 70); the crash journal counts those
    deaths like any other, so the job is dead-lettered after 3 and the others all succeed."""
    payloads, _ = _jobs(20, seconds=0.05)
    payloads[5]["mode"] = "block_always"
    env = {"CONVEYOR_STALL_WARN_AFTER": "1", "CONVEYOR_STALL_EXIT_AFTER": "2", "FAULT_BLOCK_SECONDS": "60"}
    await _watchdog_ends_three_workers_then_crash_loop(fault_run, record_figures, payloads, env)


@BOTH
async def test_handler_that_hangs_every_time_is_dead_lettered_after_its_retries(
    fault_run: FaultRun, record_figures: list[Figures]
) -> None:
    """Each run hangs until its time limit cuts it: retried with backoff until the attempts
    are spent, then dead-lettered as exhausted; the worker never dies and the rest succeed."""
    payloads, _ = _jobs(20)
    payloads[7]["mode"] = "hang_always"
    ids = await fault_run.publish(payloads, dead={7})
    # Its timeouts are failures of its breaker too (five in a row open it): a short reset
    # keeps the open/half-open cycles that follow from dominating the run time.
    env = {"FAULT_TIMEOUT": "0.3", "CONVEYOR_BREAKER_RESET_TIMEOUT": "1"}
    fault_run.start_worker(concurrency=4, extra_env=env)
    figures = await fault_run.settle(timeout=120)
    _report(figures, record_figures)
    check(figures)
    [record] = [r for r in await fault_run.ledger.dead_letters() if r.job_id == ids[7]]
    assert record.reason == "exhausted", record
    assert len(record.history) == 10 and {a.outcome for a in record.history} == {"timeout"}, record.history
    assert fault_run.stop_workers() == [0]


@BOTH
async def test_dlq_replay_while_the_bug_is_still_live_ends_and_loses_nothing(
    fault_run: FaultRun, record_figures: list[Figures]
) -> None:
    """An operator replays the DLQ before the fix is deployed: the replay ends, each entry runs
    once more and lands back in the DLQ; after the fix a second replay empties it."""
    fault_run.outage_flag.touch()  # the bug is live: every job fails permanently
    payloads, _ = _jobs(30, mode="broken")
    await fault_run.publish(payloads, dead=set(range(30)))
    fault_run.start_worker(concurrency=IN_FLIGHT)
    await fault_run.settle(timeout=120)
    replay = [sys.executable, "-m", "conveyor", "dlq", "replay", "--queue", fault_run.queue]
    began = time.monotonic()
    live = await asyncio.to_thread(
        subprocess.run, replay, cwd=ROOT, env=fault_run.env(), capture_output=True, timeout=120, check=False
    )
    assert live.returncode == 0, live.stderr.decode()[-2000:]
    replay_seconds = time.monotonic() - began
    figures = await fault_run.settle(timeout=120)
    runs = collections.Counter(line.split()[0] for line in fault_run.ledger.executions())
    assert set(runs.values()) == {2}, f"each job runs once more, no replay loop: {sorted(runs.values())}"
    assert figures.dead_lettered == 30, figures.line()
    fault_run.outage_flag.unlink()  # the fix is deployed
    for job_id in fault_run.ledger.expected:
        fault_run.ledger.expect(job_id, dead=False)
    fixed = await asyncio.to_thread(
        subprocess.run, replay, cwd=ROOT, env=fault_run.env(), capture_output=True, timeout=120, check=False
    )
    assert fixed.returncode == 0, fixed.stderr.decode()[-2000:]
    await fault_run.wait_for_effects(30, timeout=120)
    figures = await fault_run.settle(timeout=60)
    figures.notes.update(live_replay_seconds=round(replay_seconds, 1))
    _report(figures, record_figures)
    check(figures)
    assert figures.succeeded == 30 and figures.dead_lettered == 0, figures.line()
    assert fault_run.stop_workers() == [0]


@BOTH
async def test_outage_longer_than_twenty_breaker_cycles_dead_letters_nothing(
    fault_run: FaultRun, record_figures: list[Figures]
) -> None:
    """A dependency down for 12 s with a 0.3 s reset timeout: some 30 open → half-open → open
    cycles. Quorum queues drop a message after 20 returns: no cycle may give one back."""
    fault_run.outage_flag.touch()
    payloads, _ = _jobs(40, mode="depends")
    await fault_run.publish(payloads)
    fault_run.start_worker(concurrency=IN_FLIGHT, extra_env={
        "CONVEYOR_BREAKER_CONSECUTIVE_FAILURES": "3", "CONVEYOR_BREAKER_RESET_TIMEOUT": "0.3",
    })
    await asyncio.sleep(12)
    probes = len(fault_run.ledger.executions())
    fault_run.outage_flag.unlink()
    healed = time.time()
    figures = await fault_run.settle(timeout=120, healed_at=healed)
    figures.notes.update(attempts_during_outage=probes)
    _report(figures, record_figures)
    check(figures)
    assert figures.dead_lettered == 0 and figures.succeeded == 40, figures.line()
    # At most IN_FLIGHT failures before the breaker first opens, then one failed probe a cycle.
    assert probes >= 20 + IN_FLIGHT, f"fewer than 20 breaker cycles ({probes} attempts): the test proves nothing"
    assert fault_run.stop_workers() == [0]

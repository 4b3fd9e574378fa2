"""``conveyor worker --processes N``: a supervisor and its worker processes, as a user runs them.

Real brokers, real signals, real ``kill -9``. The handler (``tests.e2e.processes_app``) writes
``start|done <job id> <attempt> <pid>`` lines: the ledger of who ran what.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conveyor.common.transport.factory import transport_from_url
from conveyor.consumer.ops.dead_letters import DeadLetters
from conveyor.producer.producer import Producer
from tests.e2e.processes_app import registry_for
from tests.e2e.test_cli import ROOT, conveyor
from tests.e2e.test_cli_errors import assert_one_line_error
from tests.support.backends import require_env
from tests.support.ports import free_port

APP = "tests.e2e.processes_app:jobs"


@pytest.fixture(params=["rabbitmq", "pulsar"])
def broker_url(request: pytest.FixtureRequest) -> str:
    return require_env({"rabbitmq": "CONVEYOR_AMQP_URL", "pulsar": "CONVEYOR_PULSAR_URL"}[request.param])


@pytest.fixture
def amqp() -> str:
    return require_env("CONVEYOR_AMQP_URL")


async def _delete(broker_url: str, queue: str) -> None:
    async with transport_from_url(broker_url) as transport:
        await transport.delete(queue)


@pytest.fixture
async def queue(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    name = f"e2e.procs.{uuid.uuid4().hex[:10]}"
    yield name
    url = request.getfixturevalue("broker_url") if "broker_url" in request.fixturenames else require_env(
        "CONVEYOR_AMQP_URL")
    await _delete(url, name)


@dataclass
class Run:
    """A ``conveyor worker --processes …`` subprocess and its ledger file."""

    process: subprocess.Popen[str]
    port: int
    out: Path
    seen: set[int] = field(default_factory=set)  # worker process pids seen in /healthz

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def processes(self) -> list[dict[str, Any]]:
        status, body = self.get("/healthz")
        processes: list[dict[str, Any]] = json.loads(body)["processes"] if status == 200 else []
        self.seen.update(p["pid"] for p in processes if p["pid"])
        return processes

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.process.poll() is not None:
                pytest.fail(f"the supervisor exited ({self.process.returncode}) waiting for {what}: "
                            f"{self.process.communicate()[1][-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.1)

    def wait_ready(self, count: int) -> list[int]:
        self.wait(lambda: self.get("/readyz")[0] == 200 and len(self.processes()) == count, f"{count} ready workers")
        return [p["pid"] for p in self.processes()]

    def wait_and_get_processes(self) -> list[dict[str, Any]]:
        """/healthz's processes once every one is back and ready."""
        self.wait(lambda: self.get("/readyz")[0] == 200, "every worker process ready")
        return self.processes()

    def lines(self, event: str) -> list[tuple[str, int, int]]:
        """(job id, attempt, pid) of every ``event`` line."""
        if not self.out.exists():
            return []
        return [(job, int(attempt), int(pid)) for kind, job, attempt, pid in
                (line.split() for line in self.out.read_text().splitlines() if line.strip()) if kind == event]

    def done_ids(self) -> set[str]:
        return {job for job, _, _ in self.lines("done")}

    def metric(self, name: str) -> float:
        """The value of one series of /metrics (the line ``name value``), 0 when absent."""
        _, body = self.get("/metrics")
        values = [float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(name + " ")]
        assert len(values) <= 1, body
        return values[0] if values else 0.0

    def stop(self, timeout: float = 60.0, sig: signal.Signals = signal.SIGTERM) -> tuple[str, str]:
        self.process.send_signal(sig)
        return self.process.communicate(timeout=timeout)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def _start(broker_url: str, queue: str, *args: str, out: Path | None = None) -> Run:
        port = free_port()
        env = {**os.environ, "CONVEYOR_BROKER_URL": broker_url, "E2E_QUEUE": queue, "PYTHONPATH": str(ROOT),
               "E2E_OUT": str(out or tmp_path / "ledger.txt"), "CONVEYOR_STATE_DIR": str(tmp_path / "state"),
               "TMPDIR": str(tmp_path / "tmp")}  # where the supervisor makes its run directory
        (tmp_path / "tmp").mkdir(exist_ok=True)
        process = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "worker", APP, "--http-port", str(port), "--grace-period", "20", *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        run = Run(process, port, out or tmp_path / "ledger.txt")
        runs.append(run)
        return run

    yield _start
    leftovers = []
    for run in runs:  # a failed test leaves nothing running
        if run.process.poll() is None:
            run.process.kill()
            run.process.communicate(timeout=30)
        for pid in run.seen:
            if _alive(pid):
                leftovers.append(pid)
                os.kill(pid, signal.SIGKILL)
    assert not leftovers, "worker processes outlived their supervisor"


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in found.stdout.split()]


async def publish(broker_url: str, queue: str, count: int, seconds: float) -> list[str]:
    async with Producer.for_registry(transport_from_url(broker_url), registry_for(queue)) as producer:
        receipts = await asyncio.gather(*(producer.publish("e2e.work", {"seconds": seconds}) for _ in range(count)))
    return [receipt.job_id for receipt in receipts]


async def dead_letters(broker_url: str, queue: str) -> int:
    async with transport_from_url(broker_url) as transport:
        return len(await DeadLetters(transport, queue).list(limit=1000))


async def test_two_processes_share_the_jobs_one_metrics_endpoint_sums_them_and_sigterm_drains_both(
    broker_url: str, queue: str, start: Callable[..., Run]
) -> None:
    run = start(broker_url, queue, "--processes", "2", "--concurrency", "2")
    pids = run.wait_ready(2)
    assert len(set(pids)) == 2 and run.process.pid not in pids
    first = await publish(broker_url, queue, 16, 0.3)
    run.wait(lambda: run.done_ids() >= set(first), "16 jobs done")
    workers = {pid for _, _, pid in run.lines("done")}
    assert workers == set(pids), "both worker processes ran jobs, and nothing else did"

    # One endpoint, the sum of both processes: counters, histograms and live-summed gauges.
    run.wait(lambda: run.metric('conveyor_jobs_succeeded_total{job_type="e2e.work"}') == 16, "the summed counter")
    assert run.metric('conveyor_job_duration_seconds_count{job_type="e2e.work"}') == 16
    assert run.metric(f'conveyor_queue_consumers{{queue="{queue}"}}') == 2
    assert run.metric("conveyor_worker_processes") == 2
    body = run.get("/metrics")[1]
    assert 'pid="' not in body, "no per-process series: every gauge has a multiprocess mode"
    names = {family.name for family in text_string_to_metric_families(body)}  # valid exposition text
    assert {"conveyor_jobs_succeeded", "conveyor_worker_restarts", "conveyor_jobs_in_flight"} <= names

    # SIGTERM while both are busy: what started finishes, the rest stays in the broker unspent.
    second = await publish(broker_url, queue, 8, 3.0)
    # In flight is read from a function at scrape time: the processes copy it to their files.
    run.wait(lambda: run.metric(f'conveyor_jobs_in_flight{{queue="{queue}"}}') == 4, "4 jobs in flight in all",
             timeout=3.0)
    assert sum(p["in_flight"] for p in run.processes()) == 4
    stdout, stderr = run.stop()
    assert run.process.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert stdout.count("draining…") == 2 and "stopped" in stdout
    assert list((run.out.parent / "tmp").iterdir()) == [], "the run directory (metrics files) is removed"
    started = {job for job, _, _ in run.lines("start")}
    assert started <= run.done_ids(), "every job a worker started was finished within the grace period"

    rest = start(broker_url, queue, "--concurrency", "4")  # today's single worker takes the rest
    rest.wait(lambda: rest.done_ids() >= set(first + second), "the released jobs done")
    assert _children(rest.process.pid) == [], "--processes 1 is one process: no supervisor"
    assert rest.stop()[0] and rest.process.returncode == 0
    done = rest.lines("done")
    assert sorted(job for job, _, _ in done) == sorted(first + second), "each job done exactly once"
    assert {attempt for _, attempt, _ in done} == {1}, "a drain spends no attempt"
    assert await dead_letters(broker_url, queue) == 0


async def test_a_killed_worker_process_is_restarted_and_its_jobs_are_redelivered_and_done(
    broker_url: str, queue: str, start: Callable[..., Run]
) -> None:
    run = start(broker_url, queue, "--processes", "2", "--concurrency", "2")
    pids = run.wait_ready(2)
    ids = await publish(broker_url, queue, 8, 2.0)
    run.wait(lambda: len({pid for _, _, pid in run.lines("start")}) == 2, "both processes holding jobs")
    victim = pids[0]
    os.kill(victim, signal.SIGKILL)
    run.wait(lambda: run.get("/readyz")[0] == 503, "not ready while a worker process is down", timeout=5.0)
    held = {job for job, _, pid in run.lines("start") if pid == victim} - {
        job for job, _, pid in run.lines("done") if pid == victim}
    assert held, "the killed process held jobs"

    run.wait(lambda: run.done_ids() >= set(ids), "every job done after the kill")
    assert held <= {job for job, _, pid in run.lines("done") if pid != victim}, \
        "the jobs the killed process held were redelivered and done by the others"
    run.wait(lambda: run.get("/readyz")[0] == 200, "the restarted process ready")
    processes = run.processes()
    assert [p["restarts"] for p in processes] == [1, 0]
    assert processes[0]["pid"] not in pids, "slot 0 runs a new process"
    assert run.metric("conveyor_worker_restarts_total") == 1
    # The dead process's live gauges are gone (mark_process_dead): two consumers, not three.
    assert run.metric(f'conveyor_queue_consumers{{queue="{queue}"}}') == 2
    _, stderr = run.stop()
    assert run.process.returncode == 0, stderr
    assert re.search(r"worker process 0 \(pid \d+\) was killed by SIGKILL; restarting it in 0\.5s", stderr), stderr
    # The restarted process claimed the dead one's crash journal: the held jobs are suspects, as
    # when any worker on the host dies (consumer.middleware.crash_guard).
    claims = re.findall(r'"msg":"jobs were running when a worker died here[^\n]*"suspects":(\d+)', stderr)
    assert claims == [str(len(held))], stderr
    assert await dead_letters(broker_url, queue) == 0, "one crash is no crash loop"


async def test_a_job_that_blocks_the_loop_every_time_ends_each_process_by_its_watchdog_then_in_the_dlq(
    amqp: str, queue: str, start: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_STALL_WARN_AFTER", "0.5")
    monkeypatch.setenv("CONVEYOR_STALL_EXIT_AFTER", "1")
    run = start(amqp, queue, "--processes", "2", "--concurrency", "2")
    run.wait_ready(2)
    async with Producer.for_registry(transport_from_url(amqp), registry_for(queue)) as producer:
        blocker = (await producer.publish("e2e.work", {"seconds": 30, "block": True})).job_id
    others = await publish(amqp, queue, 10, 0.1)

    async def dead() -> list[str]:
        async with transport_from_url(amqp) as transport:
            records = await DeadLetters(transport, queue).list(limit=10)
        assert {r.reason for r in records} <= {"crash_loop"}, records
        return [r.job_id or "" for r in records]

    deadline = time.monotonic() + 90
    while blocker not in await dead():
        assert run.process.poll() is None, run.process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the blocking job never reached the DLQ"
        await asyncio.sleep(0.5)
    run.wait(lambda: run.done_ids() >= set(others), "the other jobs done")
    starts = [pid for job, _, pid in run.lines("start") if job == blocker]
    restarts = sum(p["restarts"] for p in run.wait_and_get_processes())
    assert len(starts) == restarts, "each run of the blocker ended its process; each process came back"
    # A redelivered job makes a process claim the journals of siblings that died meanwhile, so
    # the deaths add up to one count: 3 (the limit) in 9 of 9 runs, where it was 4 in 3 of 3
    # before; one more when two deaths race (the count then sits in a live sibling's journal).
    assert restarts in (3, 4), f"{restarts} deaths"
    assert await dead() == [blocker], "only the blocker is dead-lettered"
    _, stderr = run.stop()
    assert run.process.returncode == 0, stderr
    assert stderr.count("exited with code 70; restarting") == restarts


def test_a_worker_process_that_dies_at_every_start_ends_in_one_line_and_exit_1(
    amqp: str, start: Callable[..., Run]
) -> None:
    refused = re.sub(r"@[^/]+/", "@127.0.0.1:1/", amqp)  # nothing listens on port 1: every start fails
    run = start(refused, "e2e.procs.never", "--processes", "2")
    stdout, stderr = run.process.communicate(timeout=90)
    assert run.process.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"Error: worker process [01] exited with code 1 5 times in a row, each within 10s of its "
                        r"start; giving up \(see its errors above\)", last), last
    assert stderr.count("restarting it in 4s") >= 1 and "restarting it in 8s" not in stderr, "backoff doubles, bounded"
    assert _children(run.process.pid) == []


async def test_processes_auto_starts_one_worker_process_per_core(amqp: str, queue: str,
                                                                  start: Callable[..., Run]) -> None:
    run = start(amqp, queue, "--processes", "auto")
    assert len(run.wait_ready(os.cpu_count() or 1)) == os.cpu_count()
    stdout, stderr = run.stop(sig=signal.SIGINT)  # Ctrl-C drains as SIGTERM does
    assert run.process.returncode == 0, stderr
    assert stdout.count("draining…") == os.cpu_count(), stdout


async def test_worker_processes_of_a_supervisor_killed_with_sigkill_drain_and_exit(
    amqp: str, queue: str, start: Callable[..., Run]
) -> None:
    run = start(amqp, queue, "--processes", "2")
    pids = run.wait_ready(2)
    run.process.kill()
    run.process.communicate(timeout=30)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, "orphaned worker processes kept running"
        time.sleep(0.1)


@pytest.mark.parametrize("processes", ["1", "2"])
async def test_sighup_drains_like_sigterm_and_the_jobs_in_flight_finish(amqp: str, queue: str, processes: str,
                                                                        start: Callable[..., Run]) -> None:
    # SIGHUP (a closed terminal or ssh session) killed the worker mid-job: the job came back,
    # but the crash journal counted the death against it (crash_loop after a few hang-ups).
    ids = await publish(amqp, queue, 2, 1.5)
    run = start(amqp, queue, "--processes", processes, "--concurrency", "2")
    run.wait(lambda: len(run.lines("start")) == 2, "both jobs in flight")
    stdout, stderr = run.stop(sig=signal.SIGHUP)
    assert run.process.returncode == 0, stderr
    assert "draining" in stdout
    assert sorted(run.done_ids()) == sorted(ids), "the jobs in flight finished before the exit"
    assert "worker died" not in stderr


def _alive(pid: int) -> bool:
    """Still running (a zombie waiting for init to reap it counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_metrics_port_in_use_is_a_one_line_error(amqp: str, processes: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = conveyor("worker", APP, "--processes", processes, "--http-port", str(port),
                          env={"CONVEYOR_BROKER_URL": amqp, "E2E_QUEUE": f"e2e.procs.port.{uuid.uuid4().hex[:8]}"})
    line = assert_one_line_error(result, 1, "ConfigurationError", f"127.0.0.1:{port}", "--http-port")
    assert "address already in use" in line.lower(), line


# 99999999999999999999 hung the supervisor building that many slots, its memory growing.
@pytest.mark.parametrize("value", ["0", "-1", "abc", "1.5", "", "1025", "99999999999999999999"])
def test_a_bad_process_count_is_a_one_line_usage_error(value: str) -> None:
    result = conveyor("worker", APP, "--processes", value, env={"CONVEYOR_BROKER_URL": "memory://", "E2E_QUEUE": "q"},
                      timeout=30)
    assert_one_line_error(result, 2, "--processes", repr(value))


def test_a_bad_process_count_in_the_environment_names_the_variable_and_the_flag_wins() -> None:
    env = {"CONVEYOR_BROKER_URL": "memory://", "E2E_QUEUE": "q", "CONVEYOR_PROCESSES": "-1"}
    assert_one_line_error(conveyor("worker", APP, env=env, timeout=30), 2, "--processes", "CONVEYOR_PROCESSES")
    # A flag wins over the variable: --processes 2 is refused for memory://, not for its -1.
    assert_one_line_error(conveyor("worker", APP, "--processes", "2", env=env, timeout=30), 2, "memory://")


def test_several_processes_on_the_in_memory_broker_is_a_one_line_usage_error() -> None:
    result = conveyor("worker", APP, "--processes", "2", env={"CONVEYOR_BROKER_URL": "memory://", "E2E_QUEUE": "q"})
    assert_one_line_error(result, 2, "--processes", "memory://")

"""The ``conveyor`` CLI as a user runs it: a subprocess, real signals, a real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.support.backends import require_env
from tests.support.e2e_worker import ROOT, start_e2e_worker, stop_after_first_job


def conveyor(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout,
    )


def test_demo_accounts_for_every_job() -> None:
    result = conveyor("demo", "--jobs", "120")
    assert result.returncode == 0, result.stderr
    assert "Final accounting" in result.stdout
    assert "120/120 ✓" in result.stdout
    assert "MISMATCH" not in result.stdout


@pytest.fixture
def amqp() -> str:
    return require_env("CONVEYOR_AMQP_URL")


@pytest.fixture
async def queue(amqp: str):
    name = f"e2e.{uuid.uuid4().hex[:10]}"
    yield name
    from conveyor.common.transport.rabbitmq import RabbitMQTransport

    async with RabbitMQTransport(amqp) as transport:
        await transport.delete(name)


def test_worker_drains_on_sigterm_and_exits_zero(amqp: str, queue: str, tmp_path: Path) -> None:
    out = tmp_path / "done.txt"
    env = {"E2E_QUEUE": queue, "E2E_OUT": str(out), "CONVEYOR_BROKER_URL": amqp, "PYTHONPATH": str(ROOT)}
    ids = []
    for _ in range(6):
        published = conveyor("publish", "e2e.nap", "--payload", '{"seconds": 1.0}', "--app", "tests.e2e.app:jobs",
                             env=env)
        assert published.returncode == 0, published.stderr
        ids.append(json.loads(published.stdout)["job_id"])
    worker = start_e2e_worker(env, "--concurrency", "2", "--http-port", "0", "--grace-period", "10")
    stdout, stderr = stop_after_first_job(worker, out)
    assert worker.returncode == 0, stderr
    assert "draining" in stdout
    done = [line.split() for line in out.read_text().splitlines()]
    assert all(attempt == "1" for _, attempt in done)
    # Whatever did not finish is back in the queue, unspent: a second worker finishes it.
    second = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "tests.e2e.app:jobs", "--concurrency", "4", "--http-port", "0"],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while len(out.read_text().splitlines()) < 6:
            assert time.monotonic() < deadline, f"only {len(out.read_text().splitlines())} of 6 jobs finished"
            time.sleep(0.1)
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=30)
    finally:
        if second.poll() is None:
            second.kill()
    finished = [line.split() for line in out.read_text().splitlines()]
    assert sorted(job for job, _ in finished) == sorted(ids), "every job ran exactly once"
    assert all(attempt == "1" for _, attempt in finished), "drained jobs must not spend an attempt"


def test_a_sync_job_past_the_grace_period_goes_back_and_its_thread_ends_with_the_worker(amqp: str, queue: str,
                                                                                       tmp_path: Path) -> None:
    # The interpreter's exit joined the handler's thread: the worker lived on past "stopped"
    # until the handler ended, so the job ran to its end while its message, given back at
    # the grace period, ran again elsewhere: two runs of one job at once.
    out = tmp_path / "ledger.txt"
    env = {"E2E_QUEUE": queue, "E2E_OUT": str(out), "CONVEYOR_BROKER_URL": amqp, "PYTHONPATH": str(ROOT)}
    app = "tests.e2e.sync_app:jobs"
    published = conveyor("publish", "e2e.sync_nap", "--payload", '{"seconds": 3}', "--app", app, env=env)
    assert published.returncode == 0, published.stderr
    job_id = json.loads(published.stdout)["job_id"]
    command = [sys.executable, "-m", "conveyor", "worker", app, "--http-port", "0"]
    worker = subprocess.Popen([*command, "--grace-period", "0.2"], cwd=ROOT, env={**os.environ, **env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not out.exists() or "start" not in out.read_text():
            assert worker.poll() is None and time.monotonic() < deadline, worker.communicate()[1]
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        stdout, stderr = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert out.read_text().split("\n")[:-1] == [f"start {job_id} 1"], "the handler ended with its process"
    assert worker.returncode == 0, stderr
    assert "stopped" in stdout and "went back to the broker" in stderr
    # Its message went back unspent: the next worker runs it to the end, as attempt 1.
    second = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        while f"done {job_id} 1" not in out.read_text():
            assert second.poll() is None and time.monotonic() < deadline + 30, second.communicate()[1]
            time.sleep(0.1)
    finally:
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=30)


def test_dlq_replay_dry_run_changes_nothing(amqp: str, queue: str) -> None:
    env = {"CONVEYOR_BROKER_URL": amqp}
    planted = conveyor("publish", "e2e.nap", "--payload", '{"seconds": "not a number"}', "--queue", queue, env=env)
    assert planted.returncode == 0, planted.stderr
    worker = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "tests.e2e.app:jobs", "--http-port", "0"],
        cwd=ROOT, env={**os.environ, **env, "E2E_QUEUE": queue, "E2E_OUT": "/dev/null"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            listed = conveyor("dlq", "list", "--queue", queue, "--json", env=env)
            if listed.stdout.strip():
                break
            assert time.monotonic() < deadline, "job never reached the DLQ"
            time.sleep(0.3)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)
    entry = json.loads(listed.stdout.splitlines()[0])
    assert entry["reason"] == "invalid_payload"
    dry = conveyor("dlq", "replay", "--queue", queue, "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "would replay 1 of 1" in dry.stdout
    again = conveyor("dlq", "list", "--queue", queue, "--json", env=env)
    assert len(again.stdout.splitlines()) == 1
    shown = conveyor("dlq", "show", entry["dead_letter_id"], "--queue", queue, env=env)
    assert shown.returncode == 0 and '"not a number"' in shown.stdout
    assert "conveyor:" not in shown.stdout or "***" in shown.stdout


def test_a_bad_setting_is_a_one_line_error_that_names_it_but_not_its_value() -> None:
    result = conveyor("worker", "tests.e2e.app:jobs", env={"CONVEYOR_CONCURRENCY": "0",
                                                           "CONVEYOR_HTTP_PORT": "canary-7f3a"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "CONVEYOR_CONCURRENCY" in result.stderr and "CONVEYOR_HTTP_PORT" in result.stderr
    assert "canary-7f3a" not in result.stderr + result.stdout, "a setting's value may be a secret"

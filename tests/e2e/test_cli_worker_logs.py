"""What ``conveyor worker`` tells an operator at its default log level, on RabbitMQ."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.test_cli import ROOT, conveyor
from tests.support.backends import require_env


@pytest.fixture
async def queue() -> AsyncIterator[str]:
    name = f"e2e.logs.{uuid.uuid4().hex[:10]}"
    yield name
    from conveyor.common.transport.rabbitmq import RabbitMQTransport

    async with RabbitMQTransport(require_env("CONVEYOR_AMQP_URL")) as transport:
        await transport.delete(name)


def test_a_failed_attempt_with_a_retry_ahead_shows_at_the_default_log_level(queue: str, tmp_path: Path) -> None:
    amqp = require_env("CONVEYOR_AMQP_URL")
    inherited = {k: v for k, v in os.environ.items() if k not in ("CONVEYOR_LOG_LEVEL", "CONVEYOR_LOG_FORMAT")}
    env = {**inherited, "CONVEYOR_BROKER_URL": amqp, "E2E_QUEUE": queue, "E2E_OUT": str(tmp_path / "runs.txt"),
           "E2E_BROKEN_ATTEMPTS": "5", "PYTHONPATH": str(ROOT)}
    published = conveyor("publish", "e2e.broken", "--payload", '{"seconds": 0}', "--app", "tests.e2e.app:jobs",
                         env=env)
    assert published.returncode == 0, published.stderr
    job_id = json.loads(published.stdout)["job_id"]
    stderr = tmp_path / "worker.err"
    with stderr.open("w") as err:
        worker = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "worker", "tests.e2e.app:jobs", "--http-port", "0"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True,
        )
    try:
        deadline = time.monotonic() + 30
        while '"job attempt failed"' not in stderr.read_text():
            assert worker.poll() is None, stderr.read_text()[-2000:]
            assert time.monotonic() < deadline, f"no failed attempt logged: {stderr.read_text()[-2000:]}"
            time.sleep(0.1)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    logged = [json.loads(line) for line in stderr.read_text().splitlines() if line.startswith("{")]
    failed = [line for line in logged if line["msg"] == "job attempt failed"]
    assert failed[0]["level"] == "warning"
    assert (failed[0]["job_id"], failed[0]["attempt"], failed[0]["error_type"]) == (job_id, 1, "RuntimeError")
    assert not any(line["msg"] == "job dead-lettered" for line in logged), "a retry was ahead, not the DLQ"

"""The ``conveyor`` CLI on Pulsar: publish, worker, dlq list | show | replay, as a user runs them."""

from __future__ import annotations

import asyncio
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

from conveyor.common.transport.pulsar import PulsarTransport

pytestmark = pytest.mark.pulsar

ROOT = Path(__file__).resolve().parents[2]


def conveyor(*args: str, env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env}, capture_output=True, text=True,
        timeout=timeout,
    )


@pytest.fixture
async def queue(pulsar_url: str) -> AsyncIterator[str]:
    name = f"cli.{uuid.uuid4().hex[:12]}"
    yield name
    async with PulsarTransport(pulsar_url) as transport:
        await transport.delete(name)


async def test_publish_worker_and_dlq_replay_through_the_cli(pulsar_url: str, queue: str, tmp_path: Path) -> None:
    env = {"CONVEYOR_BROKER_URL": pulsar_url, "E2E_QUEUE": queue, "E2E_OUT": str(tmp_path / "done.txt")}
    planted = conveyor("publish", "e2e.nap", "--payload", '{"seconds": "not a number"}', "--queue", queue, env=env)
    assert planted.returncode == 0, planted.stderr
    job_id = json.loads(planted.stdout)["job_id"]
    worker = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "tests.e2e.app:jobs", "--http-port", "0"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            listed = conveyor("dlq", "list", "--queue", queue, "--json", env=env)
            assert listed.returncode == 0, listed.stderr
            if listed.stdout.strip():
                break
            assert worker.poll() is None, worker.communicate()[1]
            assert time.monotonic() < deadline, "the invalid job never reached the DLQ"
            await asyncio.sleep(0.3)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    [entry] = [json.loads(line) for line in listed.stdout.splitlines()]  # stdout is clean JSON lines
    assert (entry["reason"], entry["job_id"]) == ("invalid_payload", job_id)

    shown = conveyor("dlq", "show", entry["dead_letter_id"], "--queue", queue, env=env)
    assert shown.returncode == 0 and '"not a number"' in shown.stdout, shown.stderr
    dry = conveyor("dlq", "replay", "--queue", queue, "--dry-run", env=env)
    assert dry.returncode == 0 and "would replay 1 of 1" in dry.stdout, dry.stderr
    assert len(conveyor("dlq", "list", "--queue", queue, "--json", env=env).stdout.splitlines()) == 1
    replayed = conveyor("dlq", "replay", "--queue", queue, env=env)
    assert replayed.returncode == 0 and "replayed 1 of 1" in replayed.stdout, replayed.stderr
    assert conveyor("dlq", "list", "--queue", queue, "--json", env=env).stdout.strip() == ""
    async with PulsarTransport(pulsar_url) as transport:
        assert await transport.depth(queue) == 1, "the replayed job is back in its queue"

"""``conveyor dlq show | replay`` on RabbitMQ and Pulsar, as an operator runs them: a subprocess each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from conveyor.common.codec import encode_model
from conveyor.common.errors import QueueNotFound
from conveyor.common.transport.base import OutgoingMessage
from conveyor.common.transport.factory import transport_from_url
from conveyor.schemas.dead_letter import DeadLetterRecord
from tests.e2e.test_cli import ROOT, conveyor
from tests.support.backends import require_env


@pytest.fixture(params=["rabbitmq", "pulsar"])
def broker_url(request: pytest.FixtureRequest) -> str:
    return require_env({"rabbitmq": "CONVEYOR_AMQP_URL", "pulsar": "CONVEYOR_PULSAR_URL"}[request.param])


@pytest.fixture
async def queue(broker_url: str) -> AsyncIterator[str]:
    name = f"e2e.dlq.{uuid.uuid4().hex[:10]}"
    yield name
    async with transport_from_url(broker_url) as transport:
        await transport.delete(name)


async def plant_dead_letters(broker_url: str, queue: str, count: int, *,
                             error_message: str = "boom") -> list[DeadLetterRecord]:
    """Dead letters written straight into ``queue``'s DLQ, each with its own dead-letter and job id."""
    records = [
        DeadLetterRecord(
            dead_letter_id=f"dl-{uuid.uuid4()}", queue=queue, reason="permanent", error_type="ValueError",
            error_message=error_message, dead_lettered_at=datetime.now(UTC), worker_id="e2e", job_id=str(uuid.uuid4()),
            job_type="e2e.nap", attempt=1, original_body_b64=DeadLetterRecord.encode_body(b'{"n": %d}' % n),
        )
        for n in range(count)
    ]
    async with transport_from_url(broker_url) as transport:
        await transport.declare(queue)
        for record in records:
            await transport.publish(
                transport.dead_letter_queue(queue),
                OutgoingMessage(body=encode_model(record), message_id=record.dead_letter_id, kind="dead_letter"),
            )
    return records


async def test_dlq_list_prints_an_error_with_brackets_as_it_is(broker_url: str, queue: str) -> None:
    # A job's error text went to rich as markup: "[/x]" was a MarkupError traceback, "[bold]" vanished.
    await plant_dead_letters(broker_url, queue, 1, error_message="bad [/tmp/x] and [bold]y[/]")
    listed = conveyor("dlq", "list", "--queue", queue, env={"CONVEYOR_BROKER_URL": broker_url, "COLUMNS": "250"})
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr[-800:]
    assert "bad [/tmp/x] and [bold]y[/]" in listed.stdout, listed.stdout


async def test_dlq_show_finds_an_entry_by_dead_letter_id_and_by_job_id(broker_url: str, queue: str) -> None:
    records = await plant_dead_letters(broker_url, queue, 3)
    target = records[1]
    env = {"CONVEYOR_BROKER_URL": broker_url}
    for entry_id in (target.dead_letter_id, target.job_id):
        assert entry_id is not None
        shown = conveyor("dlq", "show", entry_id, "--queue", queue, env=env)
        assert shown.returncode == 0, shown.stderr
        data = json.loads(shown.stdout)
        assert (data["dead_letter_id"], data["job_id"]) == (target.dead_letter_id, target.job_id)
        assert data["original_body"] == {"n": 1}
    missing = conveyor("dlq", "show", "no-such-entry", "--queue", queue, env=env)
    assert missing.returncode == 1 and "no dead letter 'no-such-entry'" in missing.stderr
    assert missing.stderr.strip().endswith("(reason: not_found)"), "one line with its reason code, as the console's"
    unconfirmed = conveyor("dlq", "purge", "--queue", queue, env=env)
    assert unconfirmed.returncode == 1 and unconfirmed.stderr.strip().endswith("(reason: not_confirmed)")
    listed = conveyor("dlq", "list", "--queue", queue, "--json", env=env)
    assert len(listed.stdout.splitlines()) == 3, "showing removes nothing"


def shipped_replay_args(queue: str) -> list[str]:
    """The arguments of deploy/kubernetes/jobs/dlq-replay.yaml, as shipped, on ``queue``."""
    manifest = yaml.safe_load((ROOT / "deploy/kubernetes/jobs/dlq-replay.yaml").read_text())
    [container] = manifest["spec"]["template"]["spec"]["containers"]
    args = list(container["args"])
    args[args.index("--queue") + 1] = queue
    return args


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def broken_worker(broker_url: str, queue: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A worker whose ``e2e.broken`` handler fails every time (the bug is live); yields its env."""
    # Its circuit breaker opens on the failures: a short reset lets the half-open probes run the
    # replayed jobs soon.
    env = {"CONVEYOR_BROKER_URL": broker_url, "E2E_QUEUE": queue, "E2E_OUT": str(tmp_path / "runs.txt"),
           "PYTHONPATH": str(ROOT), "CONVEYOR_BREAKER_RESET_TIMEOUT": "0.3"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "tests.e2e.app:jobs", "--http-port", "0"],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        yield env
        assert worker.poll() is None, worker.communicate()[1][-2000:]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)


@pytest.mark.parametrize("how", ["shipped_kubernetes_job", "no_options"])
def test_replay_while_the_bug_is_live_ends_and_replays_each_entry_exactly_once(
    broken_worker: dict[str, str], queue: str, how: str
) -> None:
    env, runs = broken_worker, Path(broken_worker["E2E_OUT"])

    def handler_runs() -> list[str]:
        return runs.read_text().splitlines() if runs.exists() else []

    def dead_letters() -> list[dict[str, object]]:
        listed = conveyor("dlq", "list", "--queue", queue, "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        return [json.loads(line) for line in listed.stdout.splitlines()]

    ids = []
    for _ in range(3):
        published = conveyor("publish", "e2e.broken", "--payload", '{"seconds": 0}', "--app", "tests.e2e.app:jobs",
                             env=env)
        assert published.returncode == 0, published.stderr
        ids.append(json.loads(published.stdout)["job_id"])
    wait_for(lambda: len(dead_letters()) == 3, "3 dead letters")
    # No --limit either way: the Job in deploy/kubernetes as shipped, or the bare command.
    args = shipped_replay_args(queue) if how == "shipped_kubernetes_job" else ["dlq", "replay", "--queue", queue]
    try:
        replay = conveyor(*args, env=env, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"dlq replay never ended: the handler ran {len(handler_runs())} times")
    assert replay.returncode == 0, replay.stderr
    assert "replayed 3 of 3 matching entries" in replay.stdout
    # Each replayed job fails once more and is dead-lettered again; nothing runs after that.
    wait_for(lambda: len(handler_runs()) >= 6 and len(dead_letters()) == 3, "the replayed jobs to fail again")
    time.sleep(2)
    assert sorted(line.split()[0] for line in handler_runs()) == sorted(ids * 2), "each entry replayed once"
    entries = dead_letters()
    assert sorted(str(entry["job_id"]) for entry in entries) == sorted(ids)
    assert all(entry["reason"] == "exhausted" for entry in entries)


async def test_every_dlq_command_on_a_mistyped_queue_is_one_line_and_creates_nothing(broker_url: str) -> None:
    typo = f"e2e.dlq.typo.{uuid.uuid4().hex[:10]}"
    for command in (["list"], ["show", "dl-x"], ["replay"], ["purge", "--yes"]):
        result = conveyor("dlq", *command, "--queue", typo, env={"CONVEYOR_BROKER_URL": broker_url})
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        [line] = result.stderr.strip().splitlines()  # no traceback
        assert line.startswith("Error: QueueNotFound (queue_not_found): "), line
        assert f"no dead-letter queue '{typo}" in line, line  # its DLQ's name: "{typo}.dlq" or "{typo}-DLQ"
        assert result.stdout == "", "no empty table that says all is well"
    async with transport_from_url(broker_url) as transport:  # nothing was declared on the way
        for name in (typo, transport.dead_letter_queue(typo)):
            with pytest.raises(QueueNotFound):
                await transport.depth(name)


async def test_status_of_a_mistyped_queue_exits_1_with_queue_not_found_and_creates_nothing(broker_url: str) -> None:
    # Scripts read the exit code: a row that could not be read must not look like an empty queue.
    typo = f"e2e.status.typo.{uuid.uuid4().hex[:10]}"
    result = conveyor("status", "--queue", typo, "--interval", "0", env={"CONVEYOR_BROKER_URL": broker_url})
    assert result.returncode == 1, (result.stdout, result.stderr)
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: status (queue_not_found): "), line
    as_json = conveyor("status", "--queue", typo, "--interval", "0", "--json", env={"CONVEYOR_BROKER_URL": broker_url})
    assert as_json.returncode == 1, (as_json.stdout, as_json.stderr)
    [row] = json.loads(as_json.stdout)["queues"]
    assert (row["queue"], row["reason"], row["ready"]) == (typo, "queue_not_found", None), row
    async with transport_from_url(broker_url) as transport:
        with pytest.raises(QueueNotFound):
            await transport.depth(typo)


@pytest.mark.parametrize("name", ["é✓💥", "q" * 300])
async def test_a_queue_name_the_broker_cannot_hold_is_one_line_for_every_dlq_command_and_status(broker_url: str,
                                                                                                name: str) -> None:
    # On RabbitMQ each printed pamqp's traceback ("ValueError: Invalid value for queue", "Max
    # length exceeded for queue"): the name reached the AMQP frame unchecked.
    for command in (["dlq", "list"], ["dlq", "show", "dl-x"], ["dlq", "replay"], ["dlq", "purge", "--yes"], ["status"]):
        result = conveyor(*command, "--queue", name, env={"CONVEYOR_BROKER_URL": broker_url})
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, (command, result.stderr[-500:])
        [line] = [line for line in result.stderr.strip().splitlines() if line.startswith("Error: ")]
        assert len(result.stderr.strip().splitlines()) == 1, (command, result.stderr)
        assert "ConfigurationError" in line or "queue_not_found" in line, (command, line)

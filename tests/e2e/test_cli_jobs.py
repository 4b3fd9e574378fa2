"""``conveyor jobs show | list | cancel`` as an operator runs them, with ``--json``: a publish, a
worker and each command a subprocess, on RabbitMQ and Pulsar, sharing one SQLite job-state store
(the file every process of one machine can open)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conveyor.common.job_state import job_state_store_from_url
from tests.e2e import test_cli_dlq
from tests.e2e.test_cli import ROOT, conveyor
from tests.support.backends import require_env

# The same fixtures as the dlq commands': each broker, a queue of its own deleted after.
broker_url = test_cli_dlq.broker_url
queue = test_cli_dlq.queue


def _json(*args: str, env: dict[str, str]) -> Any:
    done = conveyor(*args, "--json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _until(check: Callable[[], bool], what: str, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _state(job_id: str, env: dict[str, str]) -> str:
    return str(_json("jobs", "show", job_id, env=env)["state"])


def test_jobs_show_list_and_cancel_follow_jobs_through_the_cli(broker_url: str, queue: str, tmp_path: Path) -> None:
    env = {
        "CONVEYOR_BROKER_URL": broker_url, "CONVEYOR_JOB_STATE_URL": f"sqlite:///{tmp_path}/state.db",
        "E2E_QUEUE": queue, "E2E_OUT": str(tmp_path / "out.txt"), "CONVEYOR_CODE_VERSION": "e2e-7",
        "PYTHONPATH": str(ROOT),
    }

    def publish(job_type: str, seconds: float, *extra: str) -> str:
        done = conveyor("publish", job_type, "--payload", json.dumps({"seconds": seconds}), "--app",
                        "tests.e2e.app:jobs", *extra, env=env)
        assert done.returncode == 0, done.stderr
        return str(json.loads(done.stdout)["job_id"])

    quick, broken, later, slow = (publish("e2e.nap", 0.1, "--idempotency-key", "order-9"), publish("e2e.broken", 0),
                                  publish("e2e.nap", 0.1, "--delay", "3600"),
                                  publish("e2e.nap", 60, "--idempotency-key", "order-9"))
    shown = _json("jobs", "show", later, env=env)
    assert shown["state"] == "scheduled" and shown["scheduled_for"] and shown["queue"] == queue
    first = _json("jobs", "cancel", later, env=env)
    assert (first["previous"], first["state"], first["changed"]) == ("scheduled", "cancelled", True)
    again = _json("jobs", "cancel", later, env=env)
    assert (again["state"], again["changed"]) == ("cancelled", False)

    worker = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "tests.e2e.app:jobs", "--http-port", "0"],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _until(lambda: _state(quick, env) == "succeeded" and _state(broken, env) == "dead_lettered",
               "the quick job to succeed and the broken one to be dead-lettered")
        _until(lambda: _state(slow, env) == "running", "the slow job to start")
        cancelled = _json("jobs", "cancel", slow, "--broker", broker_url, env=env)
        assert cancelled["previous"] == "running" and cancelled["broadcast"] is True
        _until(lambda: _state(slow, env) == "cancelled", "the running job to be cancelled", timeout=20)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr

    done = _json("jobs", "show", quick, env=env)
    assert done["attempts"][0]["code_version"] == "e2e-7" and done["attempts"][0]["outcome"] == "succeeded"
    assert done["queued_at"] and done["started_at"] and done["finished_at"]
    dead = _json("jobs", "show", broken, env=env)
    assert dead["reason"] == "exhausted" and dead["dead_letter_id"]
    entry = conveyor("dlq", "show", dead["dead_letter_id"], "--queue", queue, env=env)  # the link, followed
    assert entry.returncode == 0, entry.stderr
    assert json.loads(entry.stdout)["job_id"] == broken
    assert "conveyor dlq show" in conveyor("jobs", "show", broken, env=env).stdout
    by_version = conveyor("dlq", "list", "--queue", queue, "--worker-version", "e2e-7", "--json", env=env)
    entries = [json.loads(line) for line in by_version.stdout.splitlines()]
    assert [e["job_id"] for e in entries] == [broken] and entries[0]["worker_version"] == "e2e-7"
    assert entries[0]["config_hash"] and entries[0]["config_hash"] == dead["attempts"][0]["config_hash"]
    other = conveyor("dlq", "list", "--queue", queue, "--worker-version", "e2e-6", "--json", env=env)
    assert other.returncode == 0 and other.stdout.strip() == ""
    assert done["producer_version"] == "e2e-7"  # the publish command's code version, in the envelope

    def listed(*args: str) -> list[str]:
        done = conveyor("jobs", "list", *args, "--json", env=env)
        assert done.returncode == 0, done.stderr
        return [json.loads(line)["job_id"] for line in done.stdout.splitlines()]

    assert listed("--state", "succeeded") == [quick]
    assert listed("--type", "e2e.broken") == [broken]
    assert set(listed("--since", "1h")) == {quick, broken, later, slow}
    assert listed("--state", "cancelled", "--limit", "1") == [slow]  # newest first
    assert listed("--since", "2999-01-01T00:00") == []
    assert listed("--idempotency-key", "order-9") == [slow, quick]  # both jobs with the key, newest first
    assert listed("--idempotency-key", "order-9", "--state", "succeeded") == [quick]
    assert listed("--idempotency-key", broken) == [broken]  # publish's default key is the job id
    assert listed("--idempotency-key", "order-10") == []
    assert "order-9" in conveyor("jobs", "show", quick, env=env).stdout
    assert later not in (tmp_path / "out.txt").read_text()  # the cancelled delayed job never ran


def sqlite_store(path: Path) -> str:
    """The URL of a SQLite job-state store at ``path``, created as a worker creates it."""
    url = f"sqlite:///{path}"

    async def create() -> None:
        async with job_state_store_from_url(url):
            pass

    asyncio.run(create())
    return url


def test_jobs_commands_fail_in_one_line_with_a_reason(tmp_path: Path) -> None:
    env = {"CONVEYOR_JOB_STATE_URL": sqlite_store(tmp_path / "state.db")}
    for args in (("jobs", "show", "nope"), ("jobs", "cancel", "nope")):
        done = conveyor(*args, env=env)
        assert done.returncode == 1 and "(unknown_job)" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    bad = conveyor("jobs", "list", "--since", "yesterday", env=env)
    assert bad.returncode == 2 and "--since" in bad.stderr and "Traceback" not in bad.stderr
    unset = conveyor("jobs", "list", env={"CONVEYOR_JOB_STATE_URL": ""})
    assert unset.returncode == 2 and "CONVEYOR_JOB_STATE_URL" in unset.stderr


def test_a_job_state_url_of_no_known_kind_and_a_duration_past_year_one_are_not_tracebacks(tmp_path: Path) -> None:
    # Both printed a traceback: the store was built before the command's error handling, and
    # `--since 99999999999d` overflowed timedelta.
    for args in (("jobs", "show", "x"), ("publish", "e2e.nap", "--payload", "{}", "--broker", "memory://")):
        done = conveyor(*args, env={"CONVEYOR_JOB_STATE_URL": "bogus://x"})
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert "CONVEYOR_JOB_STATE_URL" in done.stderr and "unsupported job-state store scheme" in done.stderr
    env = {"CONVEYOR_JOB_STATE_URL": sqlite_store(tmp_path / "state.db")}
    done = conveyor("jobs", "list", "--since", "99999999999d", "--json", env=env)
    assert done.returncode == 0 and done.stderr == "" and done.stdout == "", done.stderr  # every job: none yet


def test_a_sqlite_store_that_is_not_there_is_one_line_and_is_not_created(tmp_path: Path) -> None:
    # A mistyped path: each command created an empty store there (and its directories), then
    # said the job was unknown, while it was in the real store.
    typo = tmp_path / "no-such-dir" / "state.db"
    for args in (("jobs", "show", "x"), ("jobs", "list"), ("jobs", "cancel", "x")):
        done = conveyor(*args, env={"CONVEYOR_JOB_STATE_URL": f"sqlite:///{typo}"})
        assert done.returncode == 1, (args, done.stderr)
        [line] = done.stderr.strip().splitlines()
        assert "(reason: store_not_found)" in line and str(typo) in line, line
    assert not typo.parent.exists(), "nothing was created"


def test_a_postgresql_url_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    # A stray byte (0xff, pasted) in the URL: asyncpg failed mid-connect with an AttributeError,
    # an 80-line traceback.
    dsn = require_env("CONVEYOR_DATABASE_URL")
    bad = "postgresql://\udcff" + dsn.split("://", 1)[1].split("@", 1)[-1]  # the byte as the user name
    done = conveyor("jobs", "show", "x", env={"CONVEYOR_JOB_STATE_URL": bad})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-1500:]
    assert "is not UTF-8 text" in done.stderr and "CONVEYOR_JOB_STATE_URL" in done.stderr


def test_cancel_of_a_job_that_ended_fails_in_one_line_and_changes_nothing(tmp_path: Path) -> None:
    # "job X is succeeded: nothing to cancel" with exit 0: a script took the cancel for done.
    from datetime import UTC, datetime

    from conveyor.common.job_state import JobState, Transition

    url = sqlite_store(tmp_path / "state.db")
    now = datetime.now(UTC)

    async def seed() -> None:
        async with job_state_store_from_url(url) as store:
            await store.apply([Transition("ok-1", JobState.SUCCEEDED, now, 1, created_at=now),
                               Transition("dl-1", JobState.DEAD_LETTERED, now, 1, created_at=now, reason="exhausted",
                                          dead_letter_id="d-1"),
                               Transition("q-1", JobState.QUEUED, now, 1, created_at=now)])

    asyncio.run(seed())
    env = {"CONVEYOR_JOB_STATE_URL": url}
    for job_id, state in (("ok-1", "succeeded"), ("dl-1", "dead_lettered")):
        before = _json("jobs", "show", job_id, env=env)
        for json_flag in ((), ("--json",)):
            done = conveyor("jobs", "cancel", job_id, *json_flag, env=env)
            assert done.returncode == 1 and done.stdout == "", done.stdout
            [line] = done.stderr.strip().splitlines()
            assert "(job_ended)" in line and f"already ended {state}" in line, line
        assert _json("jobs", "show", job_id, env=env) == before  # its record as it ended
    assert _json("jobs", "cancel", "q-1", env=env)["changed"] is True
    again = conveyor("jobs", "cancel", "q-1", env=env)  # a cancel twice is still idempotent
    assert again.returncode == 0 and "nothing to cancel" in again.stdout, again.stderr


def test_show_and_list_print_what_jobs_wrote_with_brackets_as_it_is(tmp_path: Path) -> None:
    # A job's error, result or worker id went to rich as markup: "[/x]" was a MarkupError
    # traceback, and "[bold]" vanished from what the operator read.
    from datetime import UTC, datetime

    from conveyor.common.job_state import JobState, Transition

    url = sqlite_store(tmp_path / "state.db")
    now = datetime.now(UTC)
    error = "ValueError: no [/tmp/x] and [bold]y[/]"

    async def seed() -> None:
        async with job_state_store_from_url(url) as store:
            await store.apply([Transition("j-[/]", JobState.DEAD_LETTERED, now, 1, created_at=now, reason="permanent",
                                          error=error, worker_id="w[/]", attempt_outcome="failed", job_type="t.x"),
                               Transition("ok-1", JobState.SUCCEEDED, now, 1, created_at=now, result='{"a": "[/]"}')])

    asyncio.run(seed())
    env = {"CONVEYOR_JOB_STATE_URL": url, "COLUMNS": "250"}
    for args, expected in ((("jobs", "show", "j-[/]"), (error, "w[/]")), (("jobs", "show", "ok-1"), ('"[/]"',)),
                           (("jobs", "list"), ("j-[/]",))):
        done = conveyor(*args, env=env)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-800:]
        assert all(text in done.stdout for text in expected), done.stdout

"""``conveyor outbox migrate | check | relay`` as subprocesses, against the real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from conveyor.common.transport.factory import transport_from_url
from conveyor.producer.outbox import Outbox
from tests.e2e.test_cli import ROOT
from tests.e2e.test_cli_errors import assert_one_line_error
from tests.integration.conftest import amqp_url  # noqa: F401 - the shared fixture
from tests.support.ports import free_port
from tests.unit.producer.test_producer import jobs


@pytest.fixture(scope="module")
def database_url() -> str:
    url = os.environ.get("CONVEYOR_DATABASE_URL", "").strip()
    if not url:
        pytest.fail("CONVEYOR_DATABASE_URL is not set (scripts/services/postgres.sh up)", pytrace=False)
    return url


@pytest.fixture
def table(database_url: str) -> Iterator[str]:
    name = f"outbox_cli_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(f"DROP TABLE IF EXISTS {name}")
        connection.execute(f"DROP FUNCTION IF EXISTS {name}_notify()")


def conveyor(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


def test_check_migrate_check_and_migrate_again(database_url: str, table: str) -> None:
    missing = conveyor("outbox", "check", "--table", table, CONVEYOR_OUTBOX_DATABASE_URL=database_url)
    assert_one_line_error(missing, 1, "ConfigurationError", f"'{table}' does not exist", "outbox migrate")
    for _ in range(2):
        migrated = conveyor("outbox", "migrate", "--database-url", database_url, "--table", table)
        assert migrated.returncode == 0 and f"outbox table {table} is ready" in migrated.stdout, migrated.stderr
    checked = conveyor("outbox", "check", "--database-url", database_url, "--table", table)
    assert checked.returncode == 0 and "complete" in checked.stdout, checked.stderr
    assert "--database-url carries a credential" in checked.stderr and "CONVEYOR_OUTBOX_DATABASE_URL_FILE" in checked.stderr


def test_the_database_url_can_come_from_a_mounted_secret_file(database_url: str, table: str, tmp_path: Path) -> None:
    secret = tmp_path / "database-url"
    secret.write_text(database_url + "\n")
    secret.chmod(0o600)
    env = {"CONVEYOR_OUTBOX_DATABASE_URL_FILE": str(secret), "CONVEYOR_OUTBOX_DATABASE_URL": ""}
    migrated = conveyor("outbox", "migrate", "--table", table, **env)
    assert migrated.returncode == 0 and "ready" in migrated.stdout, migrated.stderr
    assert "credential" not in migrated.stderr
    both = conveyor("outbox", "check", "--table", table, **{**env, "CONVEYOR_OUTBOX_DATABASE_URL": database_url})
    assert_one_line_error(both, 2, "not both")


def test_an_unreachable_database_is_one_line_with_its_password_masked() -> None:
    url = "postgresql://app:db-canary-8c1f@127.0.0.1:1/app"
    result = conveyor("outbox", "check", CONVEYOR_OUTBOX_DATABASE_URL=url)
    line = assert_one_line_error(result, 1, "database error", "ConnectionRefusedError")
    assert "db-canary-8c1f" not in result.stderr + result.stdout, line
    no_url = conveyor("outbox", "migrate", CONVEYOR_OUTBOX_DATABASE_URL="")
    assert_one_line_error(no_url, 2, "no database")


def test_the_relay_publishes_serves_metrics_and_stops_on_sigterm(database_url: str, table: str,
                                                                 amqp_url: str) -> None:  # noqa: F811
    refused = conveyor("outbox", "relay", "--table", table, "--http-port", "0",
                       CONVEYOR_BROKER_URL=amqp_url, CONVEYOR_OUTBOX_DATABASE_URL=database_url)
    assert_one_line_error(refused, 1, "does not exist", "outbox migrate")  # the schema check at start
    assert conveyor("outbox", "migrate", "--database-url", database_url, "--table", table).returncode == 0
    queue = f"e2e.outbox.{uuid.uuid4().hex[:8]}"
    outbox = Outbox(jobs=jobs(), table=table)
    with psycopg.connect(database_url) as connection, connection.transaction():
        ids = [outbox.add(connection, "email.send", {"to": f"{n}@example.com"}, queue=queue) for n in range(20)]
    port = free_port()
    relay = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "outbox", "relay", "--table", table, "--http-port", str(port)],
        cwd=ROOT, env={**os.environ, "CONVEYOR_OUTBOX_DATABASE_URL": database_url, "CONVEYOR_BROKER_URL": amqp_url},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        sent = 0
        with psycopg.connect(database_url, autocommit=True) as connection:
            while sent < len(ids) and time.monotonic() < deadline:
                time.sleep(0.1)
                row = connection.execute(f"SELECT count(*) FROM {table} WHERE sent_at IS NOT NULL").fetchone()
                sent = row[0] if row else 0
        assert sent == len(ids), f"the relay sent {sent} of {len(ids)}"
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert "conveyor_outbox_published_total 20.0" in metrics
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as ready:
            assert ready.status == 200 and '"failures": 0' in ready.read().decode()
        relay.send_signal(signal.SIGTERM)
        _, err = relay.communicate(timeout=30)
        assert relay.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.wait()
        asyncio.run(_delete(amqp_url, queue))


async def _delete(url: str, queue: str) -> None:
    async with transport_from_url(url) as transport:
        await transport.delete(queue)


@pytest.mark.parametrize("flags, words", [
    (("--batch-size", "0"), ("ConfigurationError", "batch_size")),
    (("--retention-hours", "-1"), ("ConfigurationError", "retention")),
    (("--table", "Bad-Name"), ("ConfigurationError", "'Bad-Name'", "SQL identifier")),
])
def test_a_bad_relay_setting_is_one_line_not_a_traceback(database_url: str, flags: tuple[str, ...],
                                                         words: tuple[str, ...]) -> None:
    result = conveyor("outbox", "relay", *flags, "--http-port", "0", CONVEYOR_BROKER_URL="memory://",
                      CONVEYOR_OUTBOX_DATABASE_URL=database_url)
    assert_one_line_error(result, 1, *words)


def test_a_relay_http_port_in_use_is_one_line_naming_the_port_not_the_database(database_url: str,
                                                                               table: str) -> None:
    assert conveyor("outbox", "migrate", "--database-url", database_url, "--table", table).returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = conveyor("outbox", "relay", "--table", table, "--http-port", str(port),
                          CONVEYOR_BROKER_URL="memory://", CONVEYOR_OUTBOX_DATABASE_URL=database_url)
    line = assert_one_line_error(result, 1, "ConfigurationError", f"127.0.0.1:{port}", "--http-port")
    assert "database" not in line, line


def test_a_database_port_out_of_range_is_one_line_with_its_password_masked() -> None:
    result = conveyor("outbox", "check", CONVEYOR_OUTBOX_DATABASE_URL="postgresql://app:db-canary-3e7a@127.0.0.1:99999/app")
    line = assert_one_line_error(result, 1, "database error", "port")
    assert "db-canary-3e7a" not in result.stderr + result.stdout, line


def test_failed_lists_refused_rows_and_requeue_gives_them_back_once(database_url: str, table: str) -> None:
    assert conveyor("outbox", "migrate", "--table", table, CONVEYOR_OUTBOX_DATABASE_URL=database_url).returncode == 0
    outbox = Outbox(jobs=jobs(), table=table)
    with psycopg.connect(database_url) as connection:
        ids = [outbox.add(connection, "email.send", {"to": f"{n}@example.com"}) for n in range(3)]
        # As the relay marks a row the broker refused.
        connection.execute(f"UPDATE {table} SET failed_at = now(), last_error = 'PublishNotConfirmed: no queue'")
    env = {"CONVEYOR_OUTBOX_DATABASE_URL": database_url}
    listed = conveyor("outbox", "failed", "--table", table, "--json", **env)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted(r["job_id"] for r in rows) == sorted(ids)
    assert {r["last_error"] for r in rows} == {"PublishNotConfirmed: no queue"}
    one = conveyor("outbox", "requeue", "--table", table, "--id", str(rows[0]["id"]), **env)
    assert one.returncode == 0 and "requeued 1 failed row(s)" in one.stdout, one.stderr
    rest = conveyor("outbox", "requeue", "--table", table, **env)
    assert "requeued 2 failed row(s)" in rest.stdout, rest.stderr
    again = conveyor("outbox", "requeue", "--table", table, **env)
    assert "requeued 0 failed row(s)" in again.stdout, again.stderr
    assert conveyor("outbox", "failed", "--table", table, **env).stdout == ""


def test_relay_with_a_broker_url_of_no_known_kind_exits_in_one_line_instead_of_retrying(
    database_url: str, table: str
) -> None:
    # It logged "unsupported broker URL … (attempt N; retrying)" forever: a typo passed for an outage.
    assert conveyor("outbox", "migrate", "--table", table, CONVEYOR_OUTBOX_DATABASE_URL=database_url).returncode == 0
    relayed = conveyor("outbox", "relay", "--table", table, "--http-port", "0", "--broker", "bogus://host/",
                       CONVEYOR_OUTBOX_DATABASE_URL=database_url)
    assert_one_line_error(relayed, 1, "ConfigurationError", "unsupported broker URL")


def test_the_relay_sends_a_job_up_to_the_configured_message_limit(database_url: str, table: str,
                                                                   amqp_url: str) -> None:  # noqa: F811
    # The relay's producer kept the 1 MiB default: a 2 MB row the outbox took under a raised
    # CONVEYOR_MAX_MESSAGE_BYTES was refused and marked failed at every relay.
    limit = 4 * 1024 * 1024
    assert conveyor("outbox", "migrate", "--table", table, CONVEYOR_OUTBOX_DATABASE_URL=database_url).returncode == 0
    queue = f"e2e.outbox.{uuid.uuid4().hex[:8]}"
    outbox = Outbox(jobs=jobs(), table=table, max_message_bytes=limit)
    with psycopg.connect(database_url) as connection, connection.transaction():
        outbox.add(connection, "email.send", {"to": "x" * 2_000_000}, queue=queue)
    relay = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "outbox", "relay", "--table", table, "--http-port", "0"],
        cwd=ROOT, env={**os.environ, "CONVEYOR_OUTBOX_DATABASE_URL": database_url, "CONVEYOR_BROKER_URL": amqp_url,
                       "CONVEYOR_MAX_MESSAGE_BYTES": str(limit)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        with psycopg.connect(database_url, autocommit=True) as connection:
            while True:
                sent, failed = connection.execute(
                    f"SELECT count(sent_at), count(failed_at) FROM {table}").fetchone() or (0, 0)
                if sent or failed or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        assert (sent, failed) == (1, 0)
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.communicate(timeout=30)
        asyncio.run(_delete(amqp_url, queue))

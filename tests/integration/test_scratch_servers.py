"""The servers ``scripts/test`` starts are the run's scratch (README, Tests): RabbitMQ's quorum
log and PostgreSQL do not fsync, so a CI machine's slow disk cannot stall every confirm and
commit. ``CONVEYOR_SCRATCH_STARTED`` names the ones this run started; a server that was running
already is the developer's and is left as it is. Under CI the run starts both."""

from __future__ import annotations

import os

from tests.support.rabbitmq_admin import rabbitmqctl

STARTED = os.environ.get("CONVEYOR_SCRATCH_STARTED", "").split()


def test_under_ci_this_run_started_rabbitmq_and_postgres_as_scratch() -> None:
    if os.environ.get("CI") == "true":
        assert {"rabbitmq", "postgres"} <= set(STARTED), STARTED
    assert set(STARTED) <= {"rabbitmq", "postgres"}, STARTED


async def test_a_scratch_rabbitmq_writes_its_quorum_log_without_fsync() -> None:
    expected = "none" if "rabbitmq" in STARTED else {"none", "datasync", "sync"}
    said = (await rabbitmqctl("eval", "maps:get(wal_sync_method, ra_system:fetch(quorum_queues)).")).strip()
    assert said == expected if isinstance(expected, str) else said in expected, said


async def test_a_scratch_postgresql_does_not_fsync(database_url: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(database_url, timeout=10)
    try:
        fsync = await connection.fetchval("SHOW fsync")
    finally:
        await connection.close()
    if "postgres" in STARTED:
        assert fsync == "off"
    else:
        assert fsync in {"on", "off"}

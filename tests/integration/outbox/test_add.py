"""outbox.add in the application's transaction, through every driver: committed rows stay,
rolled-back rows vanish, and the row holds the envelope the producer would have sent."""

from __future__ import annotations

from typing import Any

import asyncpg
import psycopg
import pytest
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from conveyor.common.errors import ConfigurationError, InvalidPayload, UnknownJobType
from conveyor.producer.outbox import Outbox
from conveyor.schemas.envelope import Envelope
from tests.unit.producer.test_producer import jobs


class Rollback(Exception):
    pass


async def _rows(db: asyncpg.Connection, table: str) -> dict[str, asyncpg.Record]:
    return {r["job_id"]: r for r in await db.fetch(f"SELECT * FROM {table}")}


async def test_psycopg_commit_keeps_the_row_and_rollback_drops_it(database_url: str, table: str,
                                                                   db: asyncpg.Connection) -> None:
    outbox = Outbox(jobs=jobs(), table=table)
    with psycopg.connect(database_url) as connection:
        with connection.transaction():
            kept = outbox.add(connection, "email.send", {"to": "kept@example.com"}, delay=30, ordering_key="user-1")
        with pytest.raises(Rollback), connection.transaction():
            dropped = outbox.add(connection, "email.send", {"to": "dropped@example.com"})
            raise Rollback
        with connection.cursor() as cursor, connection.transaction():
            via_cursor = outbox.add(cursor, "email.send", {"to": "cursor@example.com"})
    rows = await _rows(db, table)
    assert set(rows) == {kept, via_cursor} and dropped not in rows
    row = rows[kept]
    envelope = Envelope.model_validate_json(row["envelope"])
    assert envelope.job_id == kept and envelope.payload.data == {"to": "kept@example.com"}  # type: ignore[union-attr]
    assert (row["queue"], row["delay_seconds"], row["ordering_key"], row["sent_at"]) == (
        "conveyor.default", 30.0, "user-1", None)


async def test_sqlalchemy_sync_session_commit_and_rollback(database_url: str, table: str, db: asyncpg.Connection) -> None:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    outbox = Outbox(jobs=jobs(), table=table)
    try:
        with Session(engine) as session, session.begin():
            kept = outbox.add(session, "email.send", {"to": "a@example.com"})
        with Session(engine) as session:
            dropped = outbox.add(session, "email.send", {"to": "b@example.com"})
            session.rollback()
        with engine.begin() as connection:
            on_connection = outbox.add(connection, "email.send", {"to": "c@example.com"})
    finally:
        engine.dispose()
    assert set(await _rows(db, table)) == {kept, on_connection} and dropped


async def _commit_one_roll_back_one(outbox: Outbox, connection: Any) -> str:
    """add_async in a committed transaction (its job id returned), then in one rolled back."""
    async with connection.transaction():
        kept = await outbox.add_async(connection, "email.send", {"to": "a@example.com"})
    with pytest.raises(Rollback):
        async with connection.transaction():
            await outbox.add_async(connection, "email.send", {"to": "b@example.com"})
            raise Rollback
    return kept


async def test_asyncpg_and_sqlalchemy_async_commit_and_rollback(database_url: str, table: str,
                                                                db: asyncpg.Connection) -> None:
    outbox = Outbox(jobs=jobs(), table=table)
    connection = await asyncpg.connect(database_url)
    try:
        kept = await _commit_one_roll_back_one(outbox, connection)
    finally:
        await connection.close()
    engine = create_async_engine(database_url.replace("postgresql://", "postgresql+asyncpg://"))
    try:
        async with AsyncSession(engine) as session, session.begin():
            via_session = await outbox.add_async(session, "email.send", {"to": "c@example.com"})
        async with AsyncSession(engine) as session:
            await outbox.add_async(session, "email.send", {"to": "d@example.com"})
            await session.rollback()
    finally:
        await engine.dispose()
    assert set(await _rows(db, table)) == {kept, via_session}


async def test_bad_jobs_raise_inside_the_transaction_and_write_nothing(database_url: str, table: str,
                                                                      db: asyncpg.Connection) -> None:
    outbox = Outbox(jobs=jobs(), table=table)
    with psycopg.connect(database_url) as connection:
        with pytest.raises(InvalidPayload), connection.transaction():
            outbox.add(connection, "email.send", {"too": "x"})
        with pytest.raises(UnknownJobType), connection.transaction():
            outbox.add(connection, "email.nope", {"to": "x"})
        raw = await asyncpg.connect(database_url)
        try:
            with pytest.raises(ConfigurationError, match="add_async"):
                outbox.add(raw, "email.send", {"to": "x"})
        finally:
            await raw.close()
        with pytest.raises(ConfigurationError, match="outbox.add"):
            await outbox.add_async(connection, "email.send", {"to": "x"})
    assert await _rows(db, table) == {}


async def test_psycopg_async_connection_and_cursor_commit_and_rollback(database_url: str, table: str,
                                                                       db: asyncpg.Connection) -> None:
    outbox = Outbox(jobs=jobs(), table=table)
    async with await psycopg.AsyncConnection.connect(database_url) as connection:
        kept = await _commit_one_roll_back_one(outbox, connection)
        async with connection.transaction(), connection.cursor() as cursor:
            via_cursor = await outbox.add_async(cursor, "email.send", {"to": "c@example.com"})
        with pytest.raises(ConfigurationError, match="add_async"):
            outbox.add(connection, "email.send", {"to": "d@example.com"})  # a sync call on an async connection
    assert set(await _rows(db, table)) == {kept, via_cursor}

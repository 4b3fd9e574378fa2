"""The Django recipes against the real PostgreSQL (Django's psycopg 3 backend) and RabbitMQ:
on_commit publishes only committed sign-ups; the outbox commits and rolls back with them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import django
import pytest
from django.conf import settings
from django.db import connection

from conveyor.common.transport.factory import transport_from_url
from conveyor.producer.outbox import Outbox, OutboxRelay, RelayConfig
from conveyor.producer.producer import Producer
from conveyor.producer.sync_producer import SyncProducer
from tests.integration.recipes import django_recipe
from tests.integration.recipes.jobs import make_jobs
from tests.support.drain import drain_ids


class Boom(Exception):
    pass


@pytest.fixture
def users(database_url: str) -> Iterator[str]:
    """Django configured on the test database (once per process), and a users table of this test."""
    if not settings.configured:
        url = urlsplit(database_url)
        settings.configure(DATABASES={"default": {
            "ENGINE": "django.db.backends.postgresql", "NAME": url.path.lstrip("/"), "USER": url.username,
            "PASSWORD": url.password, "HOST": url.hostname, "PORT": url.port,
        }}, INSTALLED_APPS=[], USE_TZ=True)
        django.setup()
    table = f"recipe_users_{uuid.uuid4().hex[:10]}"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {table} (email text PRIMARY KEY)")
    yield table
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {table}")
    connection.close()


def _emails(table: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT email FROM {table}")
        return {row[0] for row in cursor.fetchall()}


def test_on_commit_publishes_committed_sign_ups_only(users: str, amqp_url: str, queue_name: str) -> None:
    with SyncProducer.from_url(amqp_url, jobs=make_jobs(queue_name)) as producer:
        django_recipe.sign_up_then_publish(producer, users, "kept@example.com")
        with pytest.raises(Boom):
            with django.db.transaction.atomic():
                django_recipe.sign_up_then_publish(producer, users, "nested@example.com")  # a savepoint
                raise Boom  # the outer transaction rolls back: no on_commit callback runs
    assert _emails(users) == {"kept@example.com"}
    assert len(asyncio.run(drain_ids(amqp_url, queue_name, 1))) == 1


def test_the_outbox_commits_and_rolls_back_with_djangos_transaction(users: str, table: str, database_url: str,
                                                                    amqp_url: str, queue_name: str) -> None:
    outbox = Outbox(jobs=make_jobs(queue_name), table=table)
    kept = [django_recipe.sign_up_with_outbox(outbox, users, f"{n}@example.com") for n in range(3)]
    with pytest.raises(Boom):
        with django.db.transaction.atomic():
            django_recipe.sign_up_with_outbox(outbox, users, "gone@example.com")
            raise Boom
    assert _emails(users) == {f"{n}@example.com" for n in range(3)}

    async def relay() -> int:
        async with OutboxRelay(database_url, lambda: Producer(transport_from_url(amqp_url), allow_unregistered=True),
                               config=RelayConfig(table=table)) as relay:
            return await relay.relay_once()

    assert asyncio.run(relay()) == 3
    assert sorted(asyncio.run(drain_ids(amqp_url, queue_name, 3))) == sorted(kept)

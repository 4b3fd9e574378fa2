"""Django: publish after commit (``transaction.on_commit`` + ``SyncProducer``), or write the job
into the outbox with Django's own connection, in the same transaction as the user's row."""

from __future__ import annotations

from django.db import connection, transaction

from conveyor.producer.outbox import Outbox
from conveyor.producer.sync_producer import SyncProducer


def sign_up_then_publish(producer: SyncProducer, table: str, email: str) -> None:
    """Published only if the transaction commits; a crash right after the commit loses the job."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(f"INSERT INTO {table} (email) VALUES (%s)", [email])
        transaction.on_commit(lambda: producer.publish("email.welcome", {"email": email}))


def sign_up_with_outbox(outbox: Outbox, table: str, email: str) -> str:
    """The job commits (or rolls back) with the user's row; ``conveyor outbox relay`` publishes it."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(f"INSERT INTO {table} (email) VALUES (%s)", [email])
        return outbox.add(connection, "email.welcome", {"email": email})

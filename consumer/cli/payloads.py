"""``conveyor payloads sweep``: delete orphaned claim-check payloads."""

from __future__ import annotations

import sys
from typing import Any

import click

from conveyor.consumer.cli.support import (
    payload_store_for,
    payload_store_option,
    run,
    settings_from,
)

__all__ = ["payloads"]


@click.group()
def payloads() -> None:
    """Maintain the claim-check payload store."""


@payloads.command("sweep")
@click.option("--older-than", required=True,
              help="Age of orphans: 90m, 12h, 7d, 2w (must exceed max job age + DLQ retention)")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing")
@payload_store_option
def payloads_sweep(older_than: str, dry_run: bool, payload_store: str | None) -> None:
    """Delete stored payloads older than --older-than (orphans: see the README's rule)."""
    from datetime import UTC, datetime

    from conveyor.consumer.ops.payload_sweep import parse_age, sweep

    settings = settings_from(**({"payload_store": payload_store} if payload_store else {}))

    async def go() -> Any:
        age = parse_age(older_than)
        store = payload_store_for(settings)
        if store is None:
            raise click.ClickException("no payload store configured: set CONVEYOR_PAYLOAD_STORE or --payload-store")
        try:
            return await sweep(store, age, now=datetime.now(UTC), dry_run=dry_run)
        finally:
            await store.close()

    report = run(go(), settings)
    verb = "would delete" if dry_run else "deleted"
    count = report.orphans if dry_run else report.deleted
    click.echo(f"scanned {report.scanned} objects; {verb} {count} older than {older_than} "
               f"({report.orphan_bytes} bytes)" + (f"; {report.failed} deletes failed" if report.failed else ""))
    if report.failed:
        sys.exit(1)

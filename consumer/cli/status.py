"""``conveyor status``: queues, dead letters by reason, and workers' breakers."""

from __future__ import annotations

from typing import Any

import click
import orjson

from conveyor.common.jobs.registry import DEFAULT_QUEUE
from conveyor.common.secrets import mask_url
from conveyor.consumer.cli.support import (
    broker_option,
    console,
    finite,
    queue_names,
    require_broker,
    run,
    settings_from,
    transport_for,
)

__all__ = ["status"]


@click.command()
@broker_option
@click.option("--queue", "queues", multiple=True, default=[DEFAULT_QUEUE], show_default=True, callback=queue_names,
              help="Work queue, repeatable")
@click.option("--worker", "workers", multiple=True, metavar="URL",
              help="A worker's metrics endpoint (http://host:9464), repeatable: breakers, in flight, jobs/s")
@click.option("--interval", type=click.FloatRange(0, 3600), default=2.0, show_default=True, callback=finite,
              help="Seconds between the two samples rates are computed from (0: one sample, no rates)")
@click.option("--dlq-scan-limit", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Dead letters browsed per queue to group them by reason")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of tables")
def status(broker: str | None, queues: tuple[str, ...], workers: tuple[str, ...], interval: float, dlq_scan_limit: int,
           as_json: bool) -> None:
    """Queues (depth, rate, oldest age, consumers, dead letters by reason) and workers (breakers)."""
    from conveyor.consumer.ops.status import collect_status, render_tables

    settings = settings_from()
    url = require_broker(broker)

    async def go() -> Any:
        transport = transport_for(url, settings)
        async with transport:
            return await collect_status(transport, list(queues), interval=interval, workers=list(workers),
                                        dlq_scan_limit=dlq_scan_limit)

    report = run(go(), settings)
    if as_json:
        click.echo(orjson.dumps({"broker": mask_url(url), **report.to_dict()}).decode())
    else:
        for table in render_tables(report, mask_url(url)):
            console.print(table)
    # The report is printed whole either way; a script still has to learn that a row is missing.
    failed = [(q.queue, q.error, q.reason) for q in report.queues if q.error] + [
        (w.url, w.error, None) for w in report.workers if w.error]
    if failed:
        name, error, reason = failed[0]
        kind = f" ({reason})" if reason else ""
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise click.ClickException(f"status{kind}: {name!r} could not be read: {error}{more}")

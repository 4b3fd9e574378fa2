"""``conveyor console``: serve the operator console (see ``conveyor.consumer.ops.console``).

Listens on 127.0.0.1 by default; any other address needs ``--token-file`` or
``--basic-auth-file`` (secret files, never a flag: ``ps`` shows flags), or the command refuses
to start with one line and the reason code ``unauthenticated_bind``. Give it the broker user
with the least rights it needs (read the queues, get and republish dead letters).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import click
from pydantic import SecretStr

from conveyor.common.errors import ConveyorError
from conveyor.common.extras import require
from conveyor.common.jobs.registry import DEFAULT_QUEUE
from conveyor.common.secrets import Redactor, mask_url, secret_fields, url_credentials
from conveyor.common.settings import Settings
from conveyor.consumer.cli.support import (
    broker_option,
    finite,
    job_state_option,
    job_state_store_for,
    load_registry,
    payload_store_for,
    payload_store_option,
    queue_names,
    require_broker,
    run,
    settings_from,
    transport_for,
)

__all__ = ["console", "demo_console"]


@click.command()
@broker_option
@click.option("--queue", "queues", multiple=True, callback=queue_names,
              help=f"Work queue to watch, repeatable [default: {DEFAULT_QUEUE}, "
              "or the queues of --app]")
@click.option("--worker", "workers", multiple=True, metavar="URL",
              help="A worker's metrics endpoint (http://host:9464), repeatable: rates and breakers")
@click.option("--app", "app_target", default=None, metavar="MODULE[:ATTR]",
              help="The job registry: its queues, and the JSON Schemas edited payloads are checked against")
@click.option("--schemas", "schemas_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A directory written by python -m conveyor.schemas.export (index.json): the JSON Schemas")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on; not loopback needs auth")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option("--read-only", is_flag=True, help="Show everything, change nothing (no replay, edit or purge)")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A file holding the access token (16+ characters) asked for at sign-in or as a Bearer header")
@click.option("--basic-auth-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A file holding user:password for HTTP basic authentication")
@click.option("--refresh", type=click.FloatRange(0.2, 3600), default=2.0, show_default=True, callback=finite,
              help="Seconds between samples of the overview")
@payload_store_option
@job_state_option
def console(broker: str | None, queues: tuple[str, ...], workers: tuple[str, ...], app_target: str | None,
            schemas_dir: Path | None, host: str, port: int, read_only: bool, token_file: Path | None,
            basic_auth_file: Path | None, refresh: float, payload_store: str | None,
            job_state_url: str | None) -> None:
    """Serve the operator console: queues, rates, breakers, dead letters (replay, edit, purge)."""
    try:
        require("console", "conveyor console")
        from conveyor.consumer.ops.console import ConsoleConfig, check_bind, load_auth

        auth = load_auth(token_file, basic_auth_file)
        check_bind(host, auth)
    except ConveyorError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    settings = settings_from(**({"payload_store": payload_store} if payload_store else {}),
                             **({"job_state_url": job_state_url} if job_state_url else {}))
    url = require_broker(broker)
    registry = load_registry(app_target, "--app") if app_target else None
    watched = queues or tuple(registry.queues() if registry else ()) or (DEFAULT_QUEUE,)
    config = ConsoleConfig(host=host, port=port, queues=tuple(dict.fromkeys(watched)), workers=workers,
                           read_only=read_only, auth=auth, refresh=refresh, broker_label=mask_url(url))
    redact = _page_redactor(settings, url, auth.secrets if auth else ())
    run(_serve(config, url, settings, registry, schemas_dir, redact), settings, serving=True)


def _page_redactor(settings: Settings, url: str, auth_secrets: tuple[str, ...]) -> Redactor:
    """Every secret the console knows, but of a URL only its credentials: the header names the
    broker by its masked URL, as ``conveyor status`` does."""
    values = [getattr(settings, name) for name in secret_fields(Settings)]
    plain = [v.get_secret_value() if isinstance(v, SecretStr) else v for v in (*values, url)]
    return Redactor([form for value in plain if value for form in url_credentials(value)] + list(auth_secrets))


async def _serve(config: Any, url: str, settings: Any, registry: Any, schemas_dir: Path | None,
                 redact: Redactor) -> None:
    from conveyor.consumer.ops.console import ConsoleState, OverviewHistory, SchemaCatalog, serve
    from conveyor.consumer.payloads import PayloadResolver

    catalog = SchemaCatalog.from_registry(registry.schemas) if registry else SchemaCatalog()
    if schemas_dir is not None:
        catalog = catalog.merged(SchemaCatalog.from_directory(schemas_dir))
    store = payload_store_for(settings)
    job_states = job_state_store_for(settings)
    transport = transport_for(url, settings)
    try:
        async with transport, (job_states or contextlib.nullcontext()):
            state = ConsoleState(config=config, transport=transport, history=OverviewHistory(config.history),
                                 schemas=catalog, redact=redact, max_message_bytes=settings.max_message_bytes,
                                 payloads=PayloadResolver.for_store(store), job_states=job_states)
            try:
                await serve(state)
            except OSError as exc:
                raise click.ClickException(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc} "
                                           "(reason: bind_failed)") from None
    finally:
        if store is not None:
            await store.close()


def demo_console(port: int) -> Any:
    """``conveyor demo --console``: the demo's hook that serves the console until Ctrl-C."""
    try:
        require("console", "conveyor demo --console")
    except ConveyorError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    from conveyor.consumer.ops.console.demo import keep_demo_up

    async def keep_up(demo_run: Any) -> None:
        try:
            await keep_demo_up(demo_run, port=port)
        except OSError as exc:
            raise click.ClickException(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc} "
                                       "(reason: bind_failed)") from None

    return keep_up

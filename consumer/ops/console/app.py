"""The console's aiohttp application, and serving it until cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from conveyor.common.errors import ConveyorError, QueueNotFound
from conveyor.consumer.ops.console.history import sample_forever
from conveyor.consumer.ops.console.render import STATIC, highlight_css, page
from conveyor.consumer.ops.console.security import NEW_SESSION, REASON_HEADER, form_of, middlewares
from conveyor.consumer.ops.console.state import STATE, ConsoleState, QueueBusy
from conveyor.consumer.ops.console.views_dead_letters import routes as dead_letter_routes
from conveyor.consumer.ops.console.views_jobs import routes as job_routes
from conveyor.consumer.ops.console.views_overview import routes as overview_routes
from conveyor.consumer.ops.console.views_replays import routes as replay_routes

__all__ = ["SERVER_LIMITS", "build_app", "serve"]

log = logging.getLogger(__name__)
login_routes = web.RouteTableDef()
# aiohttp's parser refuses a request line over 8 KiB (a 400 naming no reason) before any route:
# 32 KiB lets a 10 KB id reach the pages, which answer it with their reason code.
SERVER_LIMITS: dict[str, Any] = {"max_line_size": 32 * 1024}


class _RefusedRequestsInOneLine(logging.Filter):
    """aiohttp logs a request its parser refused (a request line over the limit, broken framing)
    as an error with its traceback: a stranger's malformed request, not a console fault, and one
    that would fill the log. One warning line instead, without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = f"{record.getMessage()}: refused ({exc.code}, {type(exc).__name__}: {str(exc.message)[:120]})"
            record.args = ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _quiet_refusals() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _RefusedRequestsInOneLine) for f in server_log.filters):
        server_log.addFilter(_RefusedRequestsInOneLine())


@login_routes.get("/login")
async def login_form(request: web.Request) -> web.Response:
    return page(request, "login.html", next=_next(request.query.get("next", "/")), failed=False)


@login_routes.post("/login")
async def login(request: web.Request) -> web.Response:
    state = request.app[STATE]
    form = await form_of(request)
    given, target = str(form.get("token", "")), _next(str(form.get("next", "/")))
    token = state.config.auth.token if state.config.auth else None
    if token is None or not hmac.compare_digest(given.encode(), token.encode()):
        return page(request, "login.html", status=401, next=target, failed=True)
    # A new session id once signed in: an id planted before sign-in is worth nothing after.
    fresh = secrets.token_urlsafe(32)
    state.sign_in(fresh)
    request[NEW_SESSION] = fresh
    raise web.HTTPSeeOther(target)


def _next(target: str) -> str:
    """Only a path of this console: never an open redirect."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


@web.middleware
async def broker_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """A broker error is one line on the page (masked like everything else), never a traceback;
    a queue held by a background replay is the busy page, which follows the replay."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except QueueBusy as busy:
        if request.path.startswith("/api/"):
            raise
        answer = page(request, "busy.html", status=409, run=busy.run, refresh_ms=1000)
        answer.headers[REASON_HEADER] = "busy"
        return answer
    except ConveyorError as exc:
        reason = exc.reason
        # A queue the broker does not have is a wrong address, not the broker being down.
        status = 404 if isinstance(exc, QueueNotFound) else 503
        message = f"{type(exc).__name__}: {exc}"
        if request.path.startswith("/api/"):  # a script gets JSON, as from every other API answer
            answer = web.json_response({"error": message, "reason": reason}, status=status)
        else:
            answer = page(request, "error.html", status=status, message=message, reason=reason)
        answer.headers[REASON_HEADER] = reason
        return answer


async def _highlight_css(_: web.Request) -> web.Response:
    return web.Response(text=highlight_css(), content_type="text/css")


def build_app(state: ConsoleState, *, sample: bool = True) -> web.Application:
    """``sample``: run the overview's sampling task while the app runs (tests may add samples)."""
    app = web.Application(middlewares=[*middlewares(), broker_errors], client_max_size=4 * 1024 * 1024)
    app[STATE] = state
    app.router.add_get("/static/highlight.css", _highlight_css)
    app.router.add_static("/static/", STATIC, append_version=False)
    app.add_routes(login_routes)
    app.add_routes(overview_routes)
    app.add_routes(dead_letter_routes)
    app.add_routes(replay_routes)
    app.add_routes(job_routes)
    if sample:
        app.cleanup_ctx.append(_sampling)
    app.on_cleanup.append(_stop_replays)
    return app


async def _stop_replays(app: web.Application) -> None:
    await app[STATE].replays.cancel_all()


async def _sampling(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    first = asyncio.Event()
    task = asyncio.create_task(sample_forever(state.transport, list(state.config.queues), list(state.config.workers),
                                              state.history, state.config.refresh, first))
    with contextlib.suppress(TimeoutError):  # the first page shows numbers, not an empty table
        await asyncio.wait_for(first.wait(), timeout=10)
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def serve(state: ConsoleState, *, started: asyncio.Event | None = None) -> None:
    """Listen on the configured address until cancelled; ``state.config.port`` 0 picks a port
    (printed, like the real one, on the ``listening on`` line)."""
    _quiet_refusals()
    runner = web.AppRunner(build_app(state), access_log=None, **SERVER_LIMITS)
    await runner.setup()
    try:
        site = web.TCPSite(runner, state.config.host, state.config.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        port = sockets[0].getsockname()[1] if sockets else state.config.port
        host = f"[{state.config.host}]" if ":" in state.config.host else state.config.host
        print(f"conveyor console listening on http://{host}:{port}/", flush=True)
        if started is not None:
            started.set()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()

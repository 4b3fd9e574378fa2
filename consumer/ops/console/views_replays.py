"""A background replay's page: its progress, live, then its outcome (``/api/replays/{id}`` as JSON)."""

from __future__ import annotations

from dataclasses import asdict

from aiohttp import web

from conveyor.consumer.ops.console.render import page
from conveyor.consumer.ops.console.replays import ReplayRun
from conveyor.consumer.ops.console.state import STATE

__all__ = ["routes"]

routes = web.RouteTableDef()


def _run(request: web.Request) -> ReplayRun:
    run = request.app[STATE].replays.get(request.match_info["run"])
    if run is None:
        raise web.HTTPNotFound(text="no such replay (reason: not_found): the console keeps the last 50")
    return run


@routes.get("/replays/{run}")
async def replay_page(request: web.Request) -> web.Response:
    return page(request, "replay.html", run=_run(request), refresh_ms=1000)


@routes.get("/replays/{run}/live")
async def replay_live(request: web.Request) -> web.Response:
    return page(request, "replay_live.html", run=_run(request))


@routes.get("/api/replays/{run}")
async def replay_json(request: web.Request) -> web.Response:
    run = _run(request)
    report = asdict(run.report)
    report["by_reason"] = dict(run.report.by_reason)
    return web.json_response({"id": run.id, "queue": run.queue, "rate": run.rate, "done": run.done,
                              "error": run.error, "started": run.started.isoformat(),
                              "finished": run.finished.isoformat() if run.finished else None, "report": report})

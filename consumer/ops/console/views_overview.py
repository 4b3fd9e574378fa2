"""The overview: every queue's depths and consumers, the rates, the workers' breakers; live.

The page is rendered whole once; ``/static/console.js`` then fetches ``/overview/live`` (the
same template's live part) every refresh and swaps it in, so nothing reloads. ``/api/overview``
is the same data as JSON, for scripts.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from conveyor.consumer.ops.console.chart import line_chart
from conveyor.consumer.ops.console.history import RATE_WINDOW, Sample
from conveyor.consumer.ops.console.render import page
from conveyor.consumer.ops.console.state import STATE, ConsoleState

__all__ = ["routes"]

routes = web.RouteTableDef()


def _latest_rates(state: ConsoleState) -> dict[str, float | None]:
    return {name: (points[-1][1] if points else None) for name, points in state.history.rates().items()}


def _view(state: ConsoleState) -> dict[str, Any]:
    history = state.history
    sample: Sample | None = history.latest
    span = history.span
    queues = sample.report.queues if sample else []
    return {
        "sample": sample,
        "queues": queues,
        "workers": sample.report.workers if sample else [],
        "rates_chart": line_chart(history.rates(), span=span, title="Jobs per second"),
        "rates_now": _latest_rates(state),
        "depth_charts": {q.queue: line_chart(history.depths(q.queue), span=span, title=f"{q.queue} depth",
                                             width=220, height=48, unit="") for q in queues},
        "refresh_ms": int(state.config.refresh * 1000),
        "rate_window": RATE_WINDOW,
    }


@routes.get("/")
async def overview(request: web.Request) -> web.Response:
    return page(request, "overview.html", **_view(request.app[STATE]))


@routes.get("/overview/live")
async def overview_live(request: web.Request) -> web.Response:
    return page(request, "overview_live.html", **_view(request.app[STATE]))


@routes.get("/api/overview")
async def overview_json(request: web.Request) -> web.Response:
    state = request.app[STATE]
    sample = state.history.latest
    body: dict[str, Any] = {
        "broker": state.config.broker_label,
        "sampled_at": sample.wall.isoformat() if sample else None,
        "rates_per_second": _latest_rates(state),
        **(sample.report.to_dict() if sample else {"queues": [], "workers": []}),
    }
    return web.json_response(body)

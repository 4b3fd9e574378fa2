"""The overview: depths from the broker, rates from workers' counters, the live fragment, the chart."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer

from conveyor.common.jobs.registry import DEFAULT_QUEUE
from conveyor.consumer.ops.console import ConsoleConfig, ConsoleState, OverviewHistory, build_app
from conveyor.consumer.ops.console.chart import line_chart
from conveyor.consumer.ops.console.state import STATE
from conveyor.consumer.ops.status import QueueStatus, StatusReport, WorkerStatus
from tests.unit.consumer.ops.console.conftest import World


def report(succeeded: float, failed: float, *, breaker: str = "closed", up: bool = True) -> StatusReport:
    worker = WorkerStatus(url="http://w1", up=up, breakers={"payments-api": breaker},
                          totals={"published": 0.0, "succeeded": succeeded, "failed": failed, "dead_lettered": 0.0})
    return StatusReport(interval=0, queues=[QueueStatus(queue="q", ready=5, delayed=2, dead_letters=1, consumers=3)],
                        workers=[worker])


def test_rates_are_taken_over_ten_seconds_and_a_restarted_worker_counts_zero() -> None:
    now = [0.0]
    history = OverviewHistory(keep=60, clock=lambda: now[0])
    for at, succeeded, failed in ((0, 0, 0), (5, 50, 5), (10, 100, 5), (15, 110, 5), (20, 4, 0)):
        now[0] = at
        history.add(report(succeeded, failed))
    rates = history.rates()
    assert [round(v, 2) for _, v in rates["completed"]] == [10.0, 10.0, 6.0, 0.0]
    assert [round(v, 2) for _, v in rates["failed"]] == [1.0, 0.5, 0.0, 0.0]
    assert [ago for ago, _ in rates["completed"]] == [15.0, 10.0, 5.0, 0.0]
    assert history.depths("q")["ready"][-1] == (0.0, 5.0)
    now[0] = 100
    history.add(report(0, 0))
    assert len(history.depths("q")["ready"]) == 1  # older than a minute: dropped


def test_a_worker_that_did_not_answer_a_sample_adds_no_spike() -> None:
    now = [0.0]
    history = OverviewHistory(keep=60, clock=lambda: now[0])
    for at, succeeded, up in ((0, 0, False), (1, 500, True), (2, 502, True), (3, 504, True)):
        now[0] = at
        history.add(report(succeeded, 0, up=up))
    assert [v for _, v in history.rates()["completed"]] == [0.0, 2.0, 2.0]


def test_the_chart_is_labelled_svg_with_one_line_per_series() -> None:
    svg = str(line_chart({"completed": [(60.0, 1.0), (0.0, 4.0)], "failed": [(0.0, 0.5)]}, span=120, title="Jobs"))
    assert svg.startswith('<svg class="chart" role="img"') and "aria-label=\"Jobs: last 2 min, peak 4.00/s" in svg
    assert svg.count("<polyline") == 2 and "series-completed" in svg and "<script" not in svg


async def test_the_overview_shows_real_depths_and_breakers_live(make_client, world: World) -> None:
    client = await make_client()
    client.server.app[STATE].history.add(StatusReport(0, [QueueStatus(queue=DEFAULT_QUEUE, ready=0, delayed=0, dead_letters=4,
                                                           consumers=0)], report(1, 0, breaker="open").workers))
    html = await (await client.get("/")).text()
    assert 'data-queue="conveyor.default"' in html and 'data-col="dead"><a href="/dead-letters?queue=conveyor.default">4<' in html
    assert 'data-breaker="payments-api">payments-api: open<' in html
    assert 'data-live-url="/overview/live"' in html and 'src="/static/console.js"' in html
    fragment = await (await client.get("/overview/live")).text()
    assert "<html" not in fragment and 'id="queues"' in fragment
    data = await (await client.get("/api/overview")).json()
    assert data["queues"][0]["dead_letters"] == 4 and data["workers"][0]["breakers"] == {"payments-api": "open"}


async def test_the_sampling_task_reads_the_broker_before_the_first_page(world: World) -> None:
    config = ConsoleConfig(queues=(DEFAULT_QUEUE,), refresh=0.2)
    state = ConsoleState(config=config, transport=world.transport, history=OverviewHistory(60))
    async with TestClient(TestServer(build_app(state))) as client:
        data = await (await client.get("/api/overview")).json()
    assert data["queues"][0]["dead_letters"] == 4 and data["queues"][0]["ready"] == 0
    assert data["sampled_at"] is not None

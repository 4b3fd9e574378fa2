"""Dead-letter pages over the in-memory broker: browse, group, filter, show, edit-and-replay,
replay (previewed) and purge (confirmed); browsing changes nothing however often it runs."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from conveyor.common.errors import QueueNotFound
from conveyor.common.jobs.registry import DEFAULT_QUEUE
from conveyor.common.transport.memory import MemoryTransport
from conveyor.consumer.ops.console.state import STATE
from conveyor.consumer.worker import Worker, WorkerConfig, default_worker_id
from conveyor.producer.producer import Producer
from tests.unit.consumer.ops.console.conftest import World, csrf_of, origin

DLQ = "/dead-letters/conveyor.default"


async def finished(client, location: str) -> dict:  # type: ignore[no-untyped-def]
    """The outcome of the background replay a confirmed replay redirected to."""
    assert location.startswith("/replays/")
    run = client.server.app[STATE].replays.get(location.rsplit("/", 1)[1])
    await run.task
    return await (await client.get(f"/api{location}")).json()


async def entries(world: World) -> list[str]:
    return [r.dead_letter_id for r in await (await world.dead_letters()).list()]


async def run_worker(world: World) -> None:
    transport = MemoryTransport(world.broker)
    await transport.connect()
    async with Worker(transport, world.jobs):
        await world.broker.join(DEFAULT_QUEUE)


async def test_browsing_a_hundred_times_leaves_every_entry_in_place_in_order(make_client, world: World) -> None:
    client = await make_client()
    before = await entries(world)
    first = (await (await world.dead_letters()).list())[0]
    for _ in range(25):
        for path in ("/dead-letters", "/api/dead-letters?reason=permanent", f"{DLQ}/{first.dead_letter_id}", "/"):
            assert (await client.get(path)).status == 200
    assert await entries(world) == before and len(before) == 4


async def test_the_list_groups_by_reason_and_by_exception(make_client) -> None:
    client = await make_client()
    html = await (await client.get("/dead-letters")).text()
    by_reason = html[html.index('id="by-reason"'):html.index('id="by-error-h"')]
    assert re.search(r">permanent</a></td><td class=\"num\">3<", by_reason)
    assert re.search(r">malformed</a></td><td class=\"num\">1<", by_reason)
    by_error = html[html.index('id="by-error"'):]
    assert re.search(r">PermanentError</a></td><td class=\"num\">3<", by_error)
    assert html.count('class="row-link"') == 4


async def test_filters_narrow_the_list(make_client) -> None:
    client = await make_client()

    async def matching(query: str) -> int:
        data = await (await client.get(f"/api/dead-letters?{query}")).json()
        return len(data["entries"])

    assert await matching("") == 4
    assert await matching("reason=permanent") == 3
    assert await matching("error_type=PermanentError&job_type=images.resize") == 3
    assert await matching("reason=malformed") == 1
    assert await matching("since=2999-01-01T00:00") == 0
    assert await matching("until=2000-01-01T00:00") == 0
    assert await matching("worker=no-such-worker") == 0
    bad = await client.get("/dead-letters?since=yesterday")
    assert bad.status == 400 and "bad_filter" in await bad.text()
    unknown = await client.get("/dead-letters?queue=someone.elses")
    assert unknown.status == 404


async def test_one_entry_in_full(make_client, world: World) -> None:
    client = await make_client()
    record = next(r for r in await (await world.dead_letters()).list() if r.job_id)
    html = await (await client.get(f"{DLQ}/{record.dead_letter_id}")).text()
    assert record.job_id and record.job_id in html
    assert 'id="payload"' in html and "hl-" in html and "image_id" in html  # highlighted JSON
    assert 'id="traceback"' in html and "PermanentError" in html
    assert 'id="history"' in html and "failed" in html
    assert 'id="headers"' in html and 'id="edit-payload"' in html
    poison = next(r for r in await (await world.dead_letters()).list() if r.job_id is None)
    shown = await (await client.get(f"{DLQ}/{poison.dead_letter_id}")).text()
    assert "never decoded" in shown and "<textarea" not in shown and "{not json" in shown
    missing = await client.get(f"{DLQ}/no-such-entry")
    assert missing.status == 404


async def test_an_edit_that_breaks_the_schema_is_refused_and_changes_nothing(make_client, world: World) -> None:
    client = await make_client()
    record = next(r for r in await (await world.dead_letters()).list() if r.job_id)
    page = await (await client.get(f"{DLQ}/{record.dead_letter_id}")).text()
    before = await entries(world)
    for payload, expected in (('{"image_id": 1, "width": "wide"}', "width: 'wide' is not of type 'integer'"),
                              ('{"image_id": 1}', "'width' is a required property"),
                              ("[1, 2]", "must be a JSON object"), ("{nope", "not JSON")):
        refused = await client.post(f"{DLQ}/{record.dead_letter_id}/replay-edited",
                                    data={"csrf_token": csrf_of(page), "payload": payload},
                                    headers={"Origin": origin(client)})
        assert refused.status == 422
        assert expected in (await refused.text()).replace("&#39;", "'")
    assert await entries(world) == before
    assert world.broker.depth(DEFAULT_QUEUE) == 0


async def test_an_edit_that_fits_the_schema_is_replayed_and_the_job_succeeds(make_client, world: World) -> None:
    client = await make_client()
    record = next(r for r in await (await world.dead_letters()).list() if r.job_id)
    page = await (await client.get(f"{DLQ}/{record.dead_letter_id}")).text()
    original = json.loads(record.original_body)["payload"]["data"]
    done = await client.post(f"{DLQ}/{record.dead_letter_id}/replay-edited",
                             data={"csrf_token": csrf_of(page), "payload": json.dumps({**original, "width": 640})},
                             headers={"Origin": origin(client)}, allow_redirects=False)
    assert done.status == 303 and "notice=replayed" in done.headers["Location"]
    assert record.dead_letter_id not in await entries(world) and len(await entries(world)) == 3
    await run_worker(world)
    assert world.done == [original["image_id"]]
    assert len(await entries(world)) == 3  # it succeeded: nothing new in the DLQ


async def test_without_a_schema_there_is_no_edit(make_client, world: World) -> None:
    client = await make_client(schemas=False)
    record = next(r for r in await (await world.dead_letters()).list() if r.job_id)
    page = await (await client.get(f"{DLQ}/{record.dead_letter_id}")).text()
    assert "<textarea" not in page and "No JSON Schema" in page
    refused = await client.post(f"{DLQ}/{record.dead_letter_id}/replay-edited",
                                data={"csrf_token": csrf_of(page), "payload": '{"image_id": 1, "width": 5}'},
                                headers={"Origin": origin(client)})
    assert refused.status == 422 and "no JSON Schema" in await refused.text()
    assert len(await entries(world)) == 4


async def test_replay_of_a_selection_is_previewed_first(make_client, world: World) -> None:
    client = await make_client()
    page = await (await client.get("/dead-letters")).text()
    chosen = [r.dead_letter_id for r in await (await world.dead_letters()).list() if r.job_id][:2]
    form = [("csrf_token", csrf_of(page)), *(("ids", i) for i in chosen), ("rate", "50")]
    preview = await client.post(f"{DLQ}/replay", data=form, headers={"Origin": origin(client)})
    text = await preview.text()
    assert preview.status == 200 and 'id="would-replay">2<' in text and "at most 50 per second" in text
    assert len(await entries(world)) == 4 and world.broker.depth(DEFAULT_QUEUE) == 0
    done = await client.post(f"{DLQ}/replay", data=[*form, ("confirm", "replay")], headers={"Origin": origin(client)},
                             allow_redirects=False)
    assert done.status == 303
    outcome = await finished(client, done.headers["Location"])
    assert outcome["done"] and (outcome["report"]["matched"], outcome["report"]["replayed"]) == (2, 2)
    assert outcome["rate"] == 50
    page = await (await client.get(done.headers["Location"])).text()
    assert 'id="replay-status">Replayed 2 of 2 matching entries' in page and "data-final" in page
    assert set(await entries(world)).isdisjoint(chosen) and world.broker.depth(DEFAULT_QUEUE) == 2
    bad = await client.post(f"{DLQ}/replay", data=[*form[:1], ("rate", "-1")], headers={"Origin": origin(client)})
    assert bad.status == 400


@pytest.mark.parametrize("rate", ["nan", "NaN", "inf", "-inf", "0", "1e-300"])
async def test_a_replay_rate_that_is_no_rate_is_refused_before_anything_starts(make_client, world: World,
                                                                               rate: str) -> None:
    # rate=nan passed `rate <= 0`, and the background replay slept forever after its first entry:
    # the queue's pages answered "busy" until the console restarted.
    client = await make_client()
    page = await (await client.get("/dead-letters")).text()
    form = {"csrf_token": csrf_of(page), "reason": "permanent", "rate": rate, "confirm": "replay"}
    refused = await client.post(f"{DLQ}/replay", data=form, headers={"Origin": origin(client)}, allow_redirects=False)
    assert refused.status == 400 and "bad_rate" in await refused.text()
    assert len(await entries(world)) == 4 and world.broker.depth(DEFAULT_QUEUE) == 0


async def test_replay_of_a_whole_filter(make_client, world: World) -> None:
    client = await make_client()
    page = await (await client.get("/dead-letters?reason=permanent")).text()
    form = {"csrf_token": csrf_of(page), "reason": "permanent", "confirm": "replay"}
    done = await client.post(f"{DLQ}/replay", data=form, headers={"Origin": origin(client)}, allow_redirects=False)
    assert (await finished(client, done.headers["Location"]))["report"]["replayed"] == 3
    assert len(await entries(world)) == 1  # the poison message stays


async def test_purge_asks_for_the_word_and_deletes_only_then(make_client, world: World) -> None:
    client = await make_client()
    page = await (await client.get("/dead-letters")).text()
    form = {"csrf_token": csrf_of(page), "reason": "permanent"}
    asked = await client.post(f"{DLQ}/purge", data=form, headers={"Origin": origin(client)})
    text = await asked.text()
    assert asked.status == 200 and 'id="purge-count">3<' in text and 'id="purge-confirm"' in text
    wrong = await client.post(f"{DLQ}/purge", data={**form, "confirm": "yes"}, headers={"Origin": origin(client)})
    assert 'id="purge-wrong"' in await wrong.text()
    assert len(await entries(world)) == 4
    done = await client.post(f"{DLQ}/purge", data={**form, "confirm": "purge"}, headers={"Origin": origin(client)},
                             allow_redirects=False)
    assert done.status == 303 and "purged+3+entries" in done.headers["Location"]
    assert len(await entries(world)) == 1


async def test_while_a_slow_replay_runs_the_queue_answers_busy_and_stopping_it_loses_nothing(
        make_client, world: World) -> None:
    client = await make_client()
    page = await (await client.get("/dead-letters")).text()
    token = csrf_of(page)
    form = {"csrf_token": token, "reason": "permanent", "rate": "0.01", "confirm": "replay"}  # 100 s apart
    started = await client.post(f"{DLQ}/replay", data=form, headers={"Origin": origin(client)}, allow_redirects=False)
    location = started.headers["Location"]
    run = client.server.app[STATE].replays.get(location.rsplit("/", 1)[1])
    while world.broker.depth(DEFAULT_QUEUE) < 1:  # the first entry is republished, then it waits
        await asyncio.sleep(0)
    busy = await client.get("/dead-letters")
    text = await busy.text()
    assert busy.status == 409 and 'id="busy"' in text and f'data-live-url="{location}/live"' in text
    assert (await client.get("/api/dead-letters")).status == 409
    purge = await client.post(f"{DLQ}/purge", data={"csrf_token": token, "confirm": "purge"},
                              headers={"Origin": origin(client)})
    assert purge.status == 409
    again = await client.post(f"{DLQ}/replay", data=form, headers={"Origin": origin(client)}, allow_redirects=False)
    assert again.status == 409
    live = await (await client.get(f"{location}/live")).text()
    assert "Replaying at most 0.01 per second" in live and "data-final" not in live
    await client.close()  # the console stops: the replay is cancelled
    assert run.done and run.task.cancelled()
    assert world.broker.depth(DEFAULT_QUEUE) == 1
    assert len(await entries(world)) == 3  # the others are back in the DLQ: nothing lost


async def test_dead_letters_filter_by_the_code_version_that_ran_them(make_client, world: World) -> None:
    transport = MemoryTransport(world.broker)
    await transport.connect()
    async with Producer.for_registry(MemoryTransport(world.broker), world.jobs) as producer:
        await producer.publish("images.resize", {"image_id": 9, "width": 0})
        async with Worker(transport, world.jobs, config=WorkerConfig(worker_id=default_worker_id("v2.0.1"))):
            await world.broker.join(DEFAULT_QUEUE)
    client = await make_client()
    data = await (await client.get("/api/dead-letters?worker=@v2.0.1")).json()
    assert [entry["worker_id"].rsplit("@", 1)[1] for entry in data["entries"]] == ["v2.0.1"]
    assert len((await (await client.get("/api/dead-letters?worker=@v1")).json())["entries"]) == 0


async def test_a_watched_queue_the_broker_lacks_is_a_404_naming_it_as_a_page_and_as_json(make_client, world: World) -> None:
    client = await make_client(queues=(DEFAULT_QUEUE, "never.declared"))
    page = await client.get("/dead-letters?queue=never.declared")
    assert page.status == 404, "a wrong queue name is not the broker being down (503)"
    assert "never.declared.dlq" in await page.text() and "queue_not_found" in await page.text()
    answer = await client.get("/api/dead-letters?queue=never.declared")
    assert (answer.status, answer.content_type) == (404, "application/json"), "a script gets JSON, not a page"
    error = await answer.json()
    assert error["reason"] == "queue_not_found" and "never.declared.dlq" in error["error"]
    with pytest.raises(QueueNotFound):  # looking created nothing
        await world.transport.depth("never.declared.dlq")
    assert (await client.get(f"/api/dead-letters?queue={DEFAULT_QUEUE}")).status == 200

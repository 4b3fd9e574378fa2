"""The console's HTTP surface under requests no browser sends: bodies that are no form, routes and
methods it does not have, bodies over its limit, and ids a link must carry whole. Every refusal
is one line with a reason code (text and ``X-Conveyor-Reason``), never a 500."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from urllib.parse import unquote

import pytest

from conveyor.common.job_state import JobState, MemoryJobStateStore
from conveyor.common.job_state.states import Transition, generation_of
from tests.unit.consumer.ops.console.conftest import World, csrf_of, origin

DLQ = "/dead-letters/conveyor.default"
T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def one_line_with_reason(text: str, reason: str) -> bool:
    return len(text.strip().splitlines()) == 1 and f"(reason: {reason})" in text and "Traceback" not in text


@pytest.mark.parametrize(("content_type", "body"), [
    ("application/x-www-form-urlencoded", b"\xff\xfe%zz=%%"),  # not UTF-8
    ("multipart/form-data", b"garbage"),  # no boundary
    ("multipart/form-data; boundary=zz", b"garbage"),  # a boundary the body never has
])
@pytest.mark.parametrize("path", [f"{DLQ}/replay", f"{DLQ}/purge", f"{DLQ}/some-entry/replay-edited", "/jobs/x/cancel",
                                  "/login"])
async def test_a_body_that_is_no_form_is_a_400_with_a_reason_not_a_500(make_client, world: World, path: str,
                                                                       content_type: str, body: bytes) -> None:
    # Each was a 500 (aiohttp's form parser raised UnicodeDecodeError or ValueError), with a
    # traceback in the log: the CSRF check reads the form first, so even a stranger's did.
    client = await make_client()
    token = csrf_of(await (await client.get("/dead-letters")).text())
    # Read by the CSRF check (no token header), then by the page itself (/jobs/x/cancel reads none).
    tries = [{}] if path.startswith("/jobs/") else [{}, {"X-CSRF-Token": token}]
    for more in tries:
        headers = {"Origin": origin(client), **more}
        answer = await client.post(path, data=body, headers={**headers, "Content-Type": content_type})
        assert answer.status == 400, (path, await answer.text())
        assert one_line_with_reason(await answer.text(), "bad_form")
        assert answer.headers["X-Conveyor-Reason"] == "bad_form"
    assert await (await world.dead_letters()).depth() == 4


async def test_what_the_console_does_not_have_is_refused_with_a_reason(make_client, world: World) -> None:
    client = await make_client()
    token = csrf_of(await (await client.get("/dead-letters")).text())
    headers = {"Origin": origin(client), "X-CSRF-Token": token}
    cases = [
        (await client.get("/no-such-page"), 404, "not_found"),
        (await client.get("/dead-letters?queue=someone.elses"), 404, "unknown_queue"),
        (await client.post("/dead-letters/someone.elses/purge", data={"confirm": "purge"}, headers=headers), 404,
         "unknown_queue"),
        (await client.put(f"{DLQ}/replay", headers=headers), 405, "method_not_allowed"),
        (await client.delete(f"{DLQ}/purge", headers=headers), 405, "method_not_allowed"),
        (await client.post("/api/dead-letters", headers=headers), 405, "method_not_allowed"),
        (await client.post(f"{DLQ}/purge", data={"confirm": "purge", "reason": "x" * (5 * 1024 * 1024)},
                           headers=headers), 413, "too_large"),
    ]
    for answer, status, reason in cases:
        text = await answer.text()
        assert (answer.status, answer.headers.get("X-Conveyor-Reason")) == (status, reason), (answer.url, text[:200])
        assert one_line_with_reason(text, reason), text[:300]
    assert await (await world.dead_letters()).depth() == 4, "nothing was purged on the way"


async def test_a_job_id_with_a_slash_is_linked_found_and_cancelled(make_client) -> None:
    # Job ids may hold "/" (orders/42); the links and the cancel form put it in the path as it
    # was, so the job's page and its cancel were a 404.
    store = MemoryJobStateStore()
    await store.open()
    await store.apply([Transition(job_id="orders/42", state=JobState.QUEUED, at=T0,
                                  generation=generation_of(T0, None), job_type="x", queue="conveyor.default",
                                  created_at=T0)])
    client = await make_client(job_states=store)
    [link] = re.findall(r'href="(/jobs/[^"?]+)"', await (await client.get("/jobs")).text())
    job_page = await client.get(link)
    assert job_page.status == 200, link
    html = await job_page.text()
    [action] = re.findall(r'action="(/jobs/[^"]+/cancel)"', html)
    done = await client.post(action, data={"csrf_token": csrf_of(html)}, headers={"Origin": origin(client)},
                             allow_redirects=False)
    assert done.status == 303, action
    record = await store.get("orders/42")
    assert record is not None and record.state is JobState.CANCELLED
    assert (await client.get(done.headers["Location"])).status == 200, done.headers["Location"]


async def test_after_an_edit_or_a_purge_the_console_goes_back_to_the_same_queue(make_client, world: World) -> None:
    # The redirect put the queue's name in the query as it was: a name with "#", "&" or "+"
    # (RabbitMQ allows them) came back as another queue, a 404.
    queue = "jobs #1 & co+"  # RabbitMQ takes it (another app's queue); Conveyor's own names are portable
    world.broker.declare(queue)
    world.broker.declare(world.transport.dead_letter_queue(queue))
    client = await make_client(queues=("conveyor.default", queue))
    page = await (await client.get(f"/dead-letters?queue={queue.replace('#', '%23').replace('&', '%26').replace('+', '%2B')}")).text()
    done = await client.post(f"/dead-letters/{queue.replace('#', '%23')}/purge",
                             data={"csrf_token": csrf_of(page), "confirm": "purge"},
                             headers={"Origin": origin(client)}, allow_redirects=False)
    assert done.status == 303
    location = done.headers["Location"]
    assert "#" not in location
    query = dict(part.split("=", 1) for part in location.split("?", 1)[1].split("&"))
    assert unquote(query["queue"].replace("+", " ")) == queue, location
    assert (await client.get(location)).status == 200

"""The jobs page over the in-memory job-state store: search, list by state, a job's timeline
across attempts and workers, cancel (the code ``conveyor jobs cancel`` runs), and without a store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from conveyor.common.job_state import JobState, MemoryJobStateStore
from conveyor.common.job_state.states import Transition, generation_of
from tests.unit.consumer.ops.console.conftest import csrf_of, origin

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.fixture
async def store() -> MemoryJobStateStore:
    """``done``: failed once on w1 (code v1), succeeded on w2 (code v2); ``waiting``: queued."""
    states = MemoryJobStateStore()
    await states.open()
    first, second = generation_of(T0, None), generation_of(T0, T0 + timedelta(seconds=2), 1)

    def step(job: str, state: JobState, seconds: float, generation: int, **more: object) -> Transition:
        return Transition(job_id=job, state=state, at=T0 + timedelta(seconds=seconds), generation=generation,
                          job_type="images.resize", queue="conveyor.default", created_at=T0, **more)  # type: ignore[arg-type]

    await states.apply([
        step("done", JobState.QUEUED, 0, first),
        step("done", JobState.RUNNING, 1, first, worker_id="w1", code_version="v1"),
        step("done", JobState.RETRYING, 2, first, worker_id="w1", attempt_outcome="failed",
             error="RetryableError: image service busy", code_version="v1"),
        step("done", JobState.RUNNING, 3, second, attempt=2, worker_id="w2", code_version="v2"),
        step("done", JobState.SUCCEEDED, 4, second, attempt=2, worker_id="w2", attempt_outcome="succeeded",
             result='{"ok": true}', code_version="v2"),
        step("waiting", JobState.QUEUED, 5, first),
    ])
    return states


async def _keyed(store: MemoryJobStateStore) -> MemoryJobStateStore:
    """Two jobs published with the key ``order-7`` (the same order, published twice), and one
    whose key is ``done``, the id of another job."""
    for n, job in enumerate(("order-7-a", "order-7-b")):
        created = T0 + timedelta(minutes=n + 1)
        await store.apply([Transition(job_id=job, state=JobState.QUEUED, at=created,
                                      generation=generation_of(created, None), created_at=created,
                                      job_type="orders.pay", idempotency_key="order-7")])
    created = T0 + timedelta(minutes=5)
    await store.apply([Transition(job_id="other", state=JobState.QUEUED, at=created,
                                  generation=generation_of(created, None), created_at=created,
                                  idempotency_key="done")])  # a key equal to another job's id
    return store


async def test_jobs_are_listed_by_state_and_found_by_id(make_client, store: MemoryJobStateStore) -> None:
    client = await make_client(job_states=store)
    html = await (await client.get("/jobs")).text()
    assert 'data-job="done"' in html and 'data-job="waiting"' in html
    only = await (await client.get("/jobs?state=succeeded")).text()
    assert 'data-job="done"' in only and 'data-job="waiting"' not in only
    found = await client.get("/jobs?q=done", allow_redirects=False)
    assert found.status == 303 and found.headers["Location"] == "/jobs/done"
    missing = await (await client.get("/jobs?q=nope")).text()
    assert 'id="job-missing"' in missing
    assert (await client.get("/jobs?state=lost")).status == 400


async def test_the_search_box_takes_an_idempotency_key_when_no_job_has_that_id(
    make_client, store: MemoryJobStateStore
) -> None:
    await _keyed(store)
    client = await make_client(job_states=store)
    html = await (await client.get("/jobs?q=order-7")).text()
    assert 'id="job-missing"' not in html and "2 jobs with idempotency key order-7" in html
    assert html.index('data-job="order-7-b"') < html.index('data-job="order-7-a"')  # newest first
    assert 'data-job="done"' not in html and 'data-job="waiting"' not in html
    by_id = await client.get("/jobs?q=done", allow_redirects=False)  # an id wins over a key of that text
    assert by_id.status == 303 and by_id.headers["Location"] == "/jobs/done"
    page = await (await client.get("/jobs/order-7-a")).text()
    assert 'id="job-idempotency-key"' in page and "/jobs?q=order-7" in page
    missing = await (await client.get("/jobs?q=order-8")).text()
    assert 'id="job-missing"' in missing and "No job with id or idempotency key order-8" in missing


async def test_a_jobs_timeline_follows_it_across_attempts_and_workers(make_client, store: MemoryJobStateStore) -> None:
    client = await make_client(job_states=store)
    html = await (await client.get("/jobs/done")).text()
    timeline = html[html.index('id="timeline"'):]
    order = ["<strong>created</strong>", "<strong>queued</strong>", "<strong>attempt 1 started</strong> — on w1, code v1",
             "<strong>attempt 1 failed</strong> — RetryableError: image service busy",
             "<strong>attempt 2 started</strong> — on w2, code v2", "<strong>attempt 2 succeeded</strong>",
             "<strong>succeeded</strong>"]
    positions = [timeline.index(item) for item in order]
    assert positions == sorted(positions)
    assert 'id="cancel-job"' not in html  # finished: nothing to cancel
    data = await (await client.get("/api/jobs/done")).json()
    assert data["state"] == "succeeded" and len(data["attempts"]) == 2
    assert (await client.get("/jobs/nope")).status == 404


async def test_cancel_a_waiting_job_then_again(make_client, store: MemoryJobStateStore) -> None:
    client = await make_client(job_states=store)
    page = await (await client.get("/jobs/waiting")).text()
    assert 'id="cancel-job"' in page
    form = {"csrf_token": csrf_of(page)}
    done = await client.post("/jobs/waiting/cancel", data=form, headers={"Origin": origin(client)},
                             allow_redirects=False)
    assert done.status == 303 and "cancelled+(was+queued)" in done.headers["Location"]
    record = await store.get("waiting")
    assert record is not None and record.state is JobState.CANCELLED
    again = await client.post("/jobs/waiting/cancel", data=form, headers={"Origin": origin(client)},
                              allow_redirects=False)
    assert "nothing+to+cancel" in again.headers["Location"]
    forged = await client.post("/jobs/done/cancel", data=form, headers={"Origin": "http://evil.example"})
    assert forged.status == 403


async def test_read_only_shows_jobs_and_cancels_nothing(make_client, store: MemoryJobStateStore) -> None:
    client = await make_client(job_states=store, read_only=True)
    page = await (await client.get("/jobs/waiting")).text()
    assert 'id="cancel-job"' not in page and 'id="timeline"' in page
    refused = await client.post("/jobs/waiting/cancel", headers={"Origin": origin(client)})
    assert refused.status == 403 and refused.headers["X-Conveyor-Reason"] == "read_only"
    record = await store.get("waiting")
    assert record is not None and record.state is JobState.QUEUED


async def test_without_a_store_the_page_says_how_to_get_one(make_client) -> None:
    client = await make_client()
    html = await (await client.get("/jobs")).text()
    assert 'id="no-store"' in html and "--job-state-url" in html
    assert (await client.get("/jobs/anything")).status == 404

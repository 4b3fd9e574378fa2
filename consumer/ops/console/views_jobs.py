"""Jobs, when a job-state store is configured: search by id or idempotency key, list by state and type, one job's
timeline across attempts and workers, and cancel (``consumer.ops.jobs.cancel_job``, the code
``conveyor jobs cancel`` runs: recorded in the store, then broadcast to the workers)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote, urlencode

from aiohttp import web

from conveyor.common.job_state.base import JobStateStore
from conveyor.common.job_state.states import JobRecord, JobState
from conveyor.consumer.ops.console.render import page
from conveyor.consumer.ops.console.state import STATE
from conveyor.consumer.ops.jobs import cancel_job

__all__ = ["routes", "timeline"]

routes = web.RouteTableDef()
LIST_LIMIT = 200


@dataclass(frozen=True)
class Event:
    at: datetime
    what: str
    detail: str = ""


def timeline(record: JobRecord) -> list[Event]:
    """What happened to a job, oldest first: created, queued, each attempt's start and end
    (worker, code version, outcome, error), a cancel request, the end."""
    events = [Event(at, what, detail) for at, what, detail in (
        (record.created_at, "created", record.producer_version and f"producer {record.producer_version}" or ""),
        (record.queued_at, "queued" if record.scheduled_for is None else "scheduled",
         f"for {record.scheduled_for:%Y-%m-%d %H:%M:%S} UTC" if record.scheduled_for else ""),
        (record.cancel_requested_at, "cancel requested", ""),
    ) if at is not None]
    for attempt in record.attempts:
        version = f", code {attempt.code_version}" if attempt.code_version else ""
        if attempt.started_at is not None:
            events.append(Event(attempt.started_at, f"attempt {attempt.attempt} started",
                                f"on {attempt.worker_id}{version}"))
        if attempt.finished_at is not None:
            events.append(Event(attempt.finished_at, f"attempt {attempt.attempt} {attempt.outcome or 'ended'}",
                                attempt.error or ""))
    if record.finished_at is not None:
        events.append(Event(record.finished_at, str(record.state), record.reason or ""))
    return sorted(events, key=lambda e: e.at)


def _store(request: web.Request) -> JobStateStore | None:
    return request.app[STATE].job_states


@routes.get("/jobs")
async def jobs_page(request: web.Request) -> web.Response:
    store = _store(request)
    query = request.query.get("q", "").strip()
    state_name = request.query.get("state", "")
    job_type = request.query.get("type", "").strip()
    if store is None:
        return page(request, "jobs.html", store=None, records=[], query=query, state=state_name, job_type=job_type,
                    states=list(JobState), notice="")
    try:
        state = JobState(state_name) if state_name else None
    except ValueError:
        raise web.HTTPBadRequest(text=f"state: {state_name!r} is not a job state (reason: bad_filter)") from None
    if query:
        # An id first (one job: its page); else every job published with that idempotency key.
        found = await store.get(query)
        if found is not None:
            raise web.HTTPSeeOther(f"/jobs/{quote(found.job_id, safe='')}")
        records = await store.list_jobs(idempotency_key=query, limit=LIST_LIMIT)
    else:
        records = await store.list_jobs(state=state, job_type=job_type or None, limit=LIST_LIMIT)
    return page(request, "jobs.html", store=store, records=records, query=query, state=state_name,
                job_type=job_type, states=list(JobState), notice=request.query.get("notice", ""),
                missing=bool(query) and not records)


async def _record(request: web.Request) -> tuple[JobStateStore, JobRecord]:
    store = _store(request)
    if store is None:
        raise web.HTTPNotFound(text="no job-state store: start the console with --job-state-url (reason: no_store)")
    record = await store.get(request.match_info["job"])
    if record is None:
        raise web.HTTPNotFound(text=f"no job {request.match_info['job']!r} in the job-state store "
                                    "(reason: unknown_job)")
    return store, record


@routes.get("/jobs/{job}")
async def job_page(request: web.Request) -> web.Response:
    _, record = await _record(request)
    return page(request, "job.html", record=record, events=timeline(record), notice=request.query.get("notice", ""))


@routes.get("/api/jobs/{job}")
async def job_json(request: web.Request) -> web.Response:
    _, record = await _record(request)
    return web.json_response(record.to_dict())


@routes.post("/jobs/{job}/cancel")
async def cancel(request: web.Request) -> web.Response:
    store, record = await _record(request)
    result, broadcast = await cancel_job(store, record.job_id, control=request.app[STATE].transport)
    if not result.changed:
        notice = f"it is {result.state}: nothing to cancel"
    elif result.running:
        notice = "it is running: cancel requested" + ("; its worker was told" if broadcast else "")
    else:
        notice = f"cancelled (was {result.previous}); it will not run"
    # Quoted whole: a job id may hold "/" (orders/42), which would be another route.
    raise web.HTTPSeeOther(f"/jobs/{quote(record.job_id, safe='')}?{urlencode({'notice': notice})}")

"""Dead letters: filter, group, show one in full, replay (selected or a whole filter, previewed
first), edit-and-replay (validated against the job type's JSON Schema) and purge (confirmed).

Every action is a ``DeadLetters`` operation, the same code ``conveyor dlq`` runs; browsing takes
entries and gives every one back, so looking changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiMapping

from conveyor.common.codec import strict_json_loads
from conveyor.common.errors import ConfigurationError, ConveyorError, RejectedMessage
from conveyor.consumer.ops.console.render import highlight_json, highlight_traceback, page, pretty_json
from conveyor.consumer.ops.console.security import form_of
from conveyor.consumer.ops.console.state import STATE
from conveyor.consumer.ops.dead_letters import DeadLetterFilter, ReplayReport, check_replay_rate, group_counts
from conveyor.schemas.dead_letter import DeadLetterRecord
from conveyor.schemas.envelope import Envelope, InlinePayload

__all__ = ["routes"]

routes = web.RouteTableDef()
FILTER_FIELDS = ("reason", "job_type", "error_type", "worker", "since", "until")


def _when(value: str, name: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name}: {value!r} is not a date and time (YYYY-MM-DDTHH:MM, UTC) "
                                      "(reason: bad_filter)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_filter(params: MultiMapping[Any]) -> tuple[DeadLetterFilter, dict[str, str]]:
    """The filter a query string or form names, and its raw values (to fill the form again)."""
    raw = {name: str(params.get(name, "")).strip() for name in FILTER_FIELDS}
    ids = frozenset(str(v) for v in params.getall("ids", []) if str(v).strip())
    flt = DeadLetterFilter(
        reason=raw["reason"] or None, job_type=raw["job_type"] or None, error_type=raw["error_type"] or None,
        worker=raw["worker"] or None, since=_when(raw["since"], "since"), until=_when(raw["until"], "until"),
        dead_letter_ids=ids or None,
    )
    return flt, raw


@dataclass
class _Browse:
    queue: str
    filters: dict[str, str]
    everything: list[DeadLetterRecord]  # the first ``dlq_scan_limit`` entries, in queue order
    records: list[DeadLetterRecord]  # those the filter matches
    depth: int


async def _browse(request: web.Request) -> _Browse:
    """Browse the DLQ the query names (every entry given back) and filter what was read."""
    state = request.app[STATE]
    queue = state.check_queue(str(request.query.get("queue") or state.config.queues[0]))
    flt, raw = parse_filter(request.query)
    async with state.dead_letters(queue) as letters:
        depth = await letters.depth()  # first: a browse's given-back entries may not count again at once
        everything = await letters.list(limit=state.config.dlq_scan_limit)
    return _Browse(queue, raw, everything, [r for r in everything if flt.matches(r)], depth)


@routes.get("/dead-letters")
async def list_dead_letters(request: web.Request) -> web.Response:
    found = await _browse(request)
    return page(request, "dead_letters.html", queue=found.queue, filters=found.filters, records=found.records,
                depth=found.depth, scanned=len(found.everything), by_reason=group_counts(found.records, "reason"),
                by_error=group_counts(found.records, "error_type"),
                choices={name: [v for v, _ in group_counts(found.everything, name)]
                         for name in ("reason", "job_type", "error_type")},
                notice=request.query.get("notice", ""))


@routes.get("/api/dead-letters")
async def list_json(request: web.Request) -> web.Response:
    found = await _browse(request)
    return web.json_response({"queue": found.queue, "depth": found.depth, "entries": [
        r.model_dump(mode="json", exclude={"traceback", "original_body_b64"}) for r in found.records]})


def _original(record: DeadLetterRecord, envelope: Envelope | None) -> Any:
    if envelope is not None:
        return envelope.payload.model_dump(mode="json")
    try:
        return strict_json_loads(record.original_body, max_bytes=len(record.original_body) + 1)
    except ConveyorError:
        return record.original_body.decode("utf-8", "replace")


async def _show(request: web.Request, queue: str, entry: str, *, edited: str | None = None,
                errors: list[str] | None = None, status: int = 200) -> web.Response:
    state = request.app[STATE]
    async with state.dead_letters(queue) as letters:
        record = await letters.show(entry)
        if record is None:
            raise web.HTTPNotFound(text=f"no dead letter {entry!r} in {queue} (reason: not_found)")
        try:
            envelope: Envelope | None = letters.original_envelope(record)
            undecodable = None
        except RejectedMessage as exc:
            envelope, undecodable = None, f"{exc.reason}: {exc}"
    inline = envelope is not None and isinstance(envelope.payload, InlinePayload)
    schema_known = envelope is not None and state.schemas.knows(envelope.job_type, envelope.schema_version)
    payload = _original(record, envelope)
    return page(
        request, "dead_letter.html", status=status, queue=queue, record=record, envelope=envelope,
        undecodable=undecodable, payload_html=highlight_json(payload) if not isinstance(payload, str) else None,
        payload_text=payload if isinstance(payload, str) else None,
        traceback_html=highlight_traceback(record.traceback) if record.traceback else None,
        headers_html=highlight_json(record.original_headers),
        envelope_headers=envelope.headers if envelope else {},
        editable=inline and schema_known, inline=inline, schema_known=schema_known,
        edit_text=edited if edited is not None else (pretty_json(envelope.payload.data) if envelope and inline
                                                     and isinstance(envelope.payload, InlinePayload) else ""),
        errors=errors or [],
    )


@routes.get("/dead-letters/{queue}/{entry}")
async def show(request: web.Request) -> web.Response:
    return await _show(request, request.match_info["queue"], request.match_info["entry"])


@routes.post("/dead-letters/{queue}/{entry}/replay-edited")
async def replay_edited(request: web.Request) -> web.Response:
    state = request.app[STATE]
    queue, entry = state.check_queue(request.match_info["queue"]), request.match_info["entry"]
    form = await form_of(request)
    text = str(form.get("payload", ""))
    try:
        data = strict_json_loads(text.encode(), max_bytes=state.max_message_bytes)
    except ConveyorError as exc:
        return await _show(request, queue, entry, edited=text, errors=[f"not JSON: {exc}"], status=422)
    if not isinstance(data, dict):
        return await _show(request, queue, entry, edited=text, errors=["the payload must be a JSON object"],
                           status=422)
    async with state.dead_letters(queue) as letters:
        record = await letters.show(entry)
        if record is None:
            raise web.HTTPNotFound(text=f"no dead letter {entry!r} in {queue} (reason: not_found)")
        try:
            envelope = letters.original_envelope(record)
            problems = state.schemas.errors(envelope.job_type, envelope.schema_version, data)
        except (RejectedMessage, ConfigurationError) as exc:
            problems = [str(exc)]
        if not problems:
            try:
                replayed = await letters.replay_edited(entry, data)
            except RejectedMessage as exc:
                problems = [f"{exc.reason}: {exc}"]
            else:
                if replayed is None:
                    raise web.HTTPNotFound(text=f"no dead letter {entry!r} in {queue} (reason: not_found)")
    if problems:
        return await _show(request, queue, entry, edited=text, errors=problems, status=422)
    raise web.HTTPSeeOther(dead_letters_url(queue, f"replayed {record.job_id} with the edited payload"))


def dead_letters_url(queue: str, notice: str) -> str:
    """The list of ``queue``'s dead letters with a notice; both quoted (a RabbitMQ queue name may
    hold "#", "&", "+" or a space, which came back as another queue)."""
    return f"/dead-letters?{urlencode({'queue': queue, 'notice': notice})}"


def _rate(value: Any) -> float | None:
    try:
        rate = float(value) if value not in (None, "") else None
    except ValueError:
        raise web.HTTPBadRequest(text="rate: not a number (reason: bad_rate)") from None
    if rate is not None:
        try:
            check_replay_rate(rate)  # here too: refused before the background replay starts
        except ConfigurationError:
            raise web.HTTPBadRequest(text="rate: must be at least one entry an hour (reason: bad_rate)") from None
    return rate


async def _action(request: web.Request) -> tuple[str, MultiMapping[Any], DeadLetterFilter, dict[str, str]]:
    """The queue a state-changing request acts on, its form, and the filter or selection it names."""
    queue = request.app[STATE].check_queue(request.match_info["queue"])
    form = await form_of(request)
    flt, raw = parse_filter(form)
    return queue, form, flt, raw


@routes.post("/dead-letters/{queue}/replay")
async def replay(request: web.Request) -> web.Response:
    state = request.app[STATE]
    queue, form, flt, raw = await _action(request)
    rate = _rate(form.get("rate"))
    if form.get("confirm") != "replay":
        async with state.dead_letters(queue) as letters:
            report = await letters.replay(flt, rate=rate, dry_run=True)
        return page(request, "replay_preview.html", queue=queue, report=report, filters=raw,
                    ids=sorted(flt.dead_letter_ids or ()), rate=form.get("rate", ""))
    state.check_idle(queue)

    async def work(progress: Callable[[ReplayReport], None]) -> ReplayReport:
        async with state.dead_letters(queue, replay=True) as letters:
            return await letters.replay(flt, rate=rate, progress=progress)

    run = state.replays.start(queue, rate, work)
    raise web.HTTPSeeOther(f"/replays/{run.id}")


@routes.post("/dead-letters/{queue}/purge")
async def purge(request: web.Request) -> web.Response:
    state = request.app[STATE]
    queue, form, flt, raw = await _action(request)
    async with state.dead_letters(queue) as letters:
        if form.get("confirm") != "purge":
            matching = await letters.list(flt, limit=state.config.dlq_scan_limit)
            return page(request, "purge_confirm.html", queue=queue, matching=matching, filters=raw,
                        ids=sorted(flt.dead_letter_ids or ()), wrong=bool(form.get("confirm")))
        removed = await letters.purge(flt)
    raise web.HTTPSeeOther(dead_letters_url(queue, f"purged {removed} entries"))

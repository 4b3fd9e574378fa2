"""Job-state middleware: the worker records every job's transitions, and honours cancels.

- ``consume``: a job whose cancel is known here is not run (``JobCancelled``: acked, recorded
  ``cancelled``); otherwise ``running`` is recorded (with this worker's id, code version and
  configuration hash) and the handler runs. An operator's cancel while it runs cancels an
  async handler (asyncio cancellation) and sets ``ctx.cancelled`` for a sync one; either way
  the job ends ``cancelled``, never retried or dead-lettered.
- ``settled``: what settlement did becomes the job's next state (retrying, timed_out,
  dead_lettered with the dead letter's id, cancelled). ``succeeded`` (with its result) is
  recorded earlier, when the handler returns, so it is spilled before the ack: a ``kill -9``
  after the ack cannot leave the job running. Dead letters still have that window between
  the ack and this hook (the outcome is settlement's to decide).

Nothing here waits on the database: transitions go to a ``JobStateWriter`` (batched, bounded,
retried). Which jobs are cancelled is kept in memory: loaded from the store at start-up (so a
cancel survives worker restarts), refreshed every ``cancel_poll`` seconds, and pushed at once
by ``cancel(job_id)`` (the control channel's listener). While this worker runs a job it sends
the ``running`` transition again every ``heartbeat`` seconds; every ``reconcile_every`` seconds
it asks the store to mark attempts silent for ``lease`` seconds ``abandoned`` (their worker
died: the broker redelivers the job, and the redelivery's record wins).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from conveyor.common.clock import Clock, SystemClock
from conveyor.common.errors import ConfigurationError, JobCancelled
from conveyor.common.headers import PRODUCER_VERSION
from conveyor.common.job_state.base import MAX_RESULT_BYTES, JobStateStore
from conveyor.common.job_state.spill import SpillFile
from conveyor.common.job_state.states import JobState, Transition, generation_of_envelope
from conveyor.common.job_state.writer import JobStateWriter
from conveyor.common.jobs.outcome import OutcomeKind, SettleAction
from conveyor.common.middleware import ConsumeNext, Middleware
from conveyor.common.payload_store.base import PayloadStore
from conveyor.common.transport.base import CONTROL_CHANNEL, ConsumerHandle, Transport

if TYPE_CHECKING:
    from conveyor.common.jobs.context import JobContext
    from conveyor.common.jobs.outcome import Outcome
    from conveyor.schemas.envelope import Envelope

__all__ = ["JobStateConfig", "JobStateMiddleware", "cancel_message", "generation_of_envelope"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobStateConfig:
    flush_interval: float = 1.0  # longer batches fold a job's running and end into one row
    heartbeat: float = 10.0
    lease: float = 60.0  # an attempt silent this long is abandoned (keep it ≫ heartbeat)
    reconcile_every: float = 30.0
    cancel_poll: float = 5.0
    retention: timedelta | None = None  # finished jobs older than this are swept (None: kept)
    max_result_bytes: int = MAX_RESULT_BYTES
    control_channel: str = CONTROL_CHANNEL  # where operators' cancels are broadcast
    close_timeout: float = 5.0  # bounds each shutdown step: a dead link must not hold up the drain


def cancel_message(job_id: str) -> bytes:
    """The control-channel message that cancels ``job_id`` on every worker."""
    return orjson.dumps({"cancel": job_id})


@dataclass
class _Run:
    task: asyncio.Task[Any] | None
    ctx: JobContext
    running: Transition
    cancel_requested: bool = False
    result: Any = field(default=None)
    ended: bool = False  # its success is recorded already (before the ack)


class JobStateMiddleware(Middleware):
    def __init__(
        self,
        store: JobStateStore,
        *,
        worker_id: str,
        config: JobStateConfig | None = None,
        registry: CollectorRegistry | None = None,
        clock: Clock | None = None,
        payload_store: PayloadStore | None = None,
        close_store: bool = True,
        control: Transport | None = None,
        code_version: str | None = None,
        config_hash: str | None = None,
        state_dir: Path | None = None,
    ) -> None:
        """``control``: the transport whose broadcast channel carries cancels (None: the store's
        poll alone, every ``cancel_poll`` seconds). ``state_dir``: where unwritten transitions are
        spilled so a ``kill -9`` loses none (the worker's crash-journal directory)."""
        self.store = store
        self.worker_id = worker_id[:128]
        self.config = config or JobStateConfig()
        self.code_version = code_version
        self.config_hash = config_hash
        self.clock = clock or SystemClock()
        spill = SpillFile(state_dir / "job-state") if state_dir is not None else None
        self.writer = JobStateWriter(store, flush_interval=self.config.flush_interval, registry=registry, spill=spill)
        self._payload_store = payload_store
        self._close_store = close_store
        self._cancelled: set[str] = set()
        self._runs: dict[str, _Run] = {}
        self._finished: dict[str, _Run] = {}  # ran here, not settled yet
        self._loops: list[asyncio.Task[None]] = []
        self._pending_io: set[asyncio.Task[None]] = set()
        self._control = control
        self._subscription: ConsumerHandle | None = None

    # -- lifecycle -------------------------------------------------------------------
    async def startup(self) -> None:
        if self.writer.spill is not None:
            for transition in self.writer.spill.open():  # what dead workers here left unwritten
                self.writer.record(transition)
        try:
            await self.store.open()
            self._cancelled |= await self.store.pending_cancels()
        except Exception as exc:  # the store being down must not stop the worker: the writer retries
            log.warning("job-state store unavailable at start-up; states are kept and written later",
                        extra={"error_type": type(exc).__name__})
        self.writer.start()
        await self._subscribe()
        loop = asyncio.get_running_loop()
        for body, every in (
            (self._heartbeat, self.config.heartbeat),
            (self._reconcile, self.config.reconcile_every),
            (self._refresh_cancels, self.config.cancel_poll),
            (self._sweep, 3600.0 if self.config.retention else 0.0),
        ):
            if every > 0:
                self._loops.append(loop.create_task(self._every(every, body)))

    async def shutdown(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            # Bounded: after a connection cut, closing the subscription's channel can wait on a
            # reply that never comes (seen: a worker's SIGTERM drain hung until it was killed).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(subscription.cancel(), self.config.close_timeout)
        loops, self._loops = self._loops, []
        for task in loops:
            task.cancel()
        if loops:
            await asyncio.wait(loops, timeout=self.config.close_timeout)
        if self._pending_io:
            await asyncio.wait(self._pending_io, timeout=self.config.close_timeout)
        await self.writer.close()
        if self._close_store:
            await self.store.close()

    # -- cancellation ----------------------------------------------------------------
    def cancel(self, job_id: str) -> bool:
        """An operator cancelled ``job_id``: never start it here; stop it if it runs here.
        Returns True when its handler was running on this worker."""
        self._cancelled.add(job_id)
        run = self._runs.get(job_id)
        if run is None:
            return False
        run.cancel_requested = True
        run.ctx.cancelled = True
        if run.ctx.spec.is_async and run.task is not None:
            run.task.cancel()
        return True

    def is_cancelled(self, job_id: str) -> bool:
        return job_id in self._cancelled

    async def _subscribe(self) -> None:
        if self._control is None:
            return
        try:
            self._subscription = await self._control.subscribe(self.config.control_channel, self._on_control)
        except ConfigurationError:
            log.info("no broadcast channel on this transport: cancels arrive by the store's poll")
        except Exception as exc:  # the poll still brings cancels; the worker must start
            log.warning("control channel subscription failed; cancels arrive by the store's poll",
                        extra={"error_type": type(exc).__name__})

    async def _on_control(self, body: bytes) -> None:
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:
            log.warning("unreadable control message ignored")
            return
        job_id = message.get("cancel") if isinstance(message, dict) else None
        if isinstance(job_id, str) and 0 < len(job_id) <= 256:
            if self.cancel(job_id):
                log.info("running job cancelled by an operator", extra={"job_id": job_id})

    # -- hooks -----------------------------------------------------------------------
    async def consume(self, ctx: JobContext, call_next: ConsumeNext) -> Any:
        if ctx.job_id in self._cancelled:
            self._finished[ctx.job_id] = _Run(None, ctx, self._transition(ctx.envelope, JobState.RUNNING, ctx.queue))
            raise JobCancelled(f"job {ctx.job_id} was cancelled before it ran")
        running = self._transition(ctx.envelope, JobState.RUNNING, ctx.queue)
        self.writer.record(running)
        run = _Run(asyncio.current_task(), ctx, running)
        self._runs[ctx.job_id] = run
        try:
            result = await call_next(ctx)
        except asyncio.CancelledError:
            task = run.task
            if run.cancel_requested and task is not None and task.uncancel() == 0:
                raise JobCancelled(f"job {ctx.job_id} was cancelled while it ran") from None
            raise  # a shutdown's cancellation: the delivery goes back, the attempt is released
        except Exception as exc:
            if run.cancel_requested:
                raise JobCancelled(f"job {ctx.job_id} was cancelled while it ran") from exc
            raise
        finally:
            self._runs.pop(ctx.job_id, None)
            self._finished[ctx.job_id] = run
            if len(self._finished) > _MAX_UNSETTLED:  # settlements that failed never call settled()
                self._finished.pop(next(iter(self._finished)))
        if run.cancel_requested:
            if ctx.spec.is_async and run.task is not None and run.task.cancelling():
                run.task.uncancel()  # the handler swallowed our cancellation: it is ours to take back
            raise JobCancelled(f"job {ctx.job_id} was cancelled while it ran (its handler returned)")
        run.result = result
        # Recorded (and spilled) now, before settlement acks: a worker killed between its ack and
        # the settled hooks would otherwise leave the job ``running`` -- and, once reconciled,
        # ``retrying`` for ever, as the acked message never comes back. A success is always
        # acked (or, if the ack fails, redelivered and skipped by idempotency or run again).
        self._record_end(self._end(run.running, JobState.SUCCEEDED, "succeeded", worker=True), result)
        run.ended = True
        return result

    def settled(self, outcome: Outcome, action: SettleAction) -> None:
        envelope = outcome.envelope
        if envelope is None:
            return  # never decoded: no job id to record
        run = self._finished.pop(envelope.job_id, None)
        if action is SettleAction.RELEASED:
            if run is not None:  # ended without an outcome (shutdown): the attempt closes as released
                self.writer.record(self._attempt_end(run, JobState.QUEUED, "released", None))
            return
        state, attempt_outcome = _STATES.get(action, (None, None))
        if state is None:
            return  # deferred: the copy waits for a newer worker, nothing new to say
        if outcome.timed_out:  # retried (timed_out) or, its attempts spent, dead-lettered
            attempt_outcome = "timeout"
            if state is JobState.RETRYING:
                state = JobState.TIMED_OUT
        if outcome.kind is OutcomeKind.DEAD and outcome.error_type is None:
            attempt_outcome = "rejected"
        error = f"{outcome.error_type}: {outcome.error_message or ''}"[:1000] if outcome.error_type else None
        if state is JobState.CANCELLED:
            error = None
        if state.final:
            self._cancelled.discard(envelope.job_id)
        if run is not None and run.ended and state is JobState.SUCCEEDED:
            return  # recorded before the ack (``consume``)
        base = run.running if run is not None else self._transition(envelope, JobState.RUNNING, None)
        transition = self._end(base, state, attempt_outcome, worker=run is not None, reason=_reason(outcome, state),
                               error=error, dead_letter_id=outcome.dead_letter_id)
        self._record_end(transition, run.result if state is JobState.SUCCEEDED and run is not None else None)

    def _end(self, base: Transition, state: JobState, attempt_outcome: str | None, *, worker: bool,
             reason: str | None = None, error: str | None = None, dead_letter_id: str | None = None) -> Transition:
        return Transition(  # built field by field: this runs once per job
            job_id=base.job_id, state=state, at=self.clock.now(), generation=base.generation, attempt=base.attempt,
            job_type=base.job_type, queue=base.queue, created_at=base.created_at,
            worker_id=base.worker_id if worker else None, attempt_outcome=attempt_outcome,
            reason=reason, error=error, producer_version=base.producer_version,
            code_version=base.code_version, config_hash=base.config_hash, dead_letter_id=dead_letter_id,
            idempotency_key=base.idempotency_key,
        )

    def _record_end(self, transition: Transition, result: Any) -> None:
        if result is not None:
            self._with_result(transition, result)
        else:
            self.writer.record(transition)

    # -- helpers ---------------------------------------------------------------------
    def _transition(self, envelope: Envelope, state: JobState, queue: str | None) -> Transition:
        return Transition(
            job_id=envelope.job_id, state=state, at=self.clock.now(), generation=generation_of_envelope(envelope),
            attempt=envelope.attempt, job_type=envelope.job_type, queue=queue, created_at=envelope.created_at,
            worker_id=self.worker_id, code_version=self.code_version, config_hash=self.config_hash,
            producer_version=envelope.headers.get(PRODUCER_VERSION), idempotency_key=envelope.idempotency_key,
        )

    def _attempt_end(self, run: _Run, state: JobState, outcome: str, error: str | None) -> Transition:
        return replace(run.running, state=state, at=self.clock.now(), attempt_outcome=outcome, error=error)

    def _with_result(self, transition: Transition, result: Any) -> None:
        try:
            data = orjson.dumps(result, default=_model_data, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError:
            log.info("job result is not JSON; not kept", extra={"job_id": transition.job_id})
            self.writer.record(transition)
            return
        # orjson (and pydantic) write NaN and infinity as null: a result kept that way would read
        # back as a different value, so it is "not JSON" like any other. null is rare enough in
        # results that only those holding one pay for the walk.
        if b"null" in data and _holds_non_finite(result):
            log.info("job result holds NaN or infinity, which JSON cannot carry; not kept",
                     extra={"job_id": transition.job_id})
            self.writer.record(transition)
            return
        if len(data) <= self.config.max_result_bytes:
            self.writer.record(replace(transition, result=data.decode()))
            return
        if self._payload_store is None:
            log.warning("job result over the size cap and no payload store; not kept",
                        extra={"job_id": transition.job_id, "bytes": len(data)})
            self.writer.record(transition)
            return
        self._spawn_io(self._store_large_result(transition, data))

    async def _store_large_result(self, transition: Transition, data: bytes) -> None:
        assert self._payload_store is not None
        try:
            reference = await self._payload_store.put_payload(
                f"{transition.job_type}.result", transition.job_id, data, self.clock.now()
            )
        except Exception as exc:
            log.warning("could not store a large job result", extra={"error_type": type(exc).__name__})
            self.writer.record(transition)
            return
        self.writer.record(replace(transition, result_ref=reference.model_dump_json()))

    def _spawn_io(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._pending_io.add(task)
        task.add_done_callback(self._pending_io.discard)

    async def _every(self, seconds: float, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.store.open()  # a no-op once open
                await body()
            except Exception as exc:  # upkeep never takes the worker down
                log.warning("job-state upkeep failed", extra={"task": body.__name__, "error_type": type(exc).__name__})

    async def _heartbeat(self) -> None:
        now = self.clock.now()
        for run in list(self._runs.values()):
            self.writer.record(replace(run.running, at=now))

    async def _reconcile(self) -> None:
        abandoned = await self.store.reconcile(timedelta(seconds=self.config.lease))
        if abandoned:
            log.info("attempts of dead workers marked abandoned", extra={"count": abandoned})

    async def _refresh_cancels(self) -> None:
        known = set(self._cancelled)  # a cancel broadcast while the query runs is not in it: kept
        pending = await self.store.pending_cancels()
        for job_id in pending - known:
            self.cancel(job_id)
        # A job cancelled while queued is seen, acked and forgotten by the one worker it reaches;
        # every other worker would keep its id for good (a leak of one id per cancel per worker).
        # Ended jobs leave the store's pending set: forget them here too.
        self._cancelled -= known - pending - self._runs.keys()

    async def _sweep(self) -> None:
        if self.config.retention is not None:
            await self.store.expire(self.config.retention)


_MAX_UNSETTLED = 10_000

_STATES: dict[SettleAction, tuple[JobState | None, str | None]] = {
    SettleAction.SUCCEEDED: (JobState.SUCCEEDED, "succeeded"),
    SettleAction.RETRIED: (JobState.RETRYING, "failed"),
    SettleAction.DEAD_LETTERED: (JobState.DEAD_LETTERED, "failed"),
    SettleAction.CANCELLED: (JobState.CANCELLED, "cancelled"),
}


def _reason(outcome: Outcome, state: JobState) -> str | None:
    """The final outcome's reason code: the dead letter's (exhausted, permanent, …), else the outcome's."""
    if not state.final:
        return None
    return outcome.dead_letter_reason or outcome.reason


def _holds_non_finite(value: object) -> bool:
    """Whether a result orjson could write holds a float that is NaN or infinite (numpy's too).
    Its depth is bounded: orjson refused anything deeper than it nests."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_holds_non_finite(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_non_finite(item) for item in value)
    if isinstance(value, BaseModel):
        return _holds_non_finite(value.model_dump())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _holds_non_finite(dataclasses.asdict(value))
    dtype = getattr(value, "dtype", None)  # a numpy float32 or array (OPT_SERIALIZE_NUMPY)
    if getattr(dtype, "kind", None) == "f":
        tolist = getattr(value, "tolist", None)
        return tolist is not None and _holds_non_finite(tolist())
    return False


def _model_data(value: object) -> object:
    """orjson's ``default``: a pydantic model returned by a handler is kept as its JSON (orjson
    writes dataclasses itself; without this a model result was dropped as "not JSON")."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(type(value).__name__)

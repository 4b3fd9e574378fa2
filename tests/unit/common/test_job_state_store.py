"""The in-memory job-state store runs the shared store contract (SQLite and PostgreSQL run it in
tests/integration against real databases), plus the state machine's own rules."""

from __future__ import annotations

import pytest

from conveyor.common.clock import FakeClock
from conveyor.common.errors import ConfigurationError, JobStateStoreUnavailable
from conveyor.common.job_state import (
    JobState,
    MemoryJobStateStore,
    PostgresJobStateStore,
    SQLiteJobStateStore,
    job_state_store_from_url,
)
from conveyor.common.job_state.states import CANCEL_REQUESTED_RANK, FINAL_RANK, rank_of
from tests.support.job_state_contract import *  # noqa: F403 - the shared contract tests


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> MemoryJobStateStore:
    return MemoryJobStateStore(clock=clock)


def test_final_states_outrank_every_other_and_waiting_ranks_lowest() -> None:
    finals = {s for s in JobState if s.final}
    assert finals == {JobState.SUCCEEDED, JobState.DEAD_LETTERED, JobState.CANCELLED}
    assert all(rank_of(s) == FINAL_RANK for s in finals)
    others = [s for s in JobState if not s.final]
    assert max(rank_of(s) for s in others) < CANCEL_REQUESTED_RANK < FINAL_RANK
    assert rank_of(JobState.QUEUED) == rank_of(JobState.SCHEDULED) < rank_of(JobState.RUNNING)
    assert rank_of(JobState.RUNNING) < rank_of(JobState.RETRYING) == rank_of(JobState.TIMED_OUT)


def test_the_url_picks_the_store_and_a_bad_one_is_a_one_line_error(tmp_path: object) -> None:
    assert isinstance(job_state_store_from_url("memory://"), MemoryJobStateStore)
    assert isinstance(job_state_store_from_url("sqlite:///tmp/x/state.db"), SQLiteJobStateStore)
    assert isinstance(job_state_store_from_url("postgresql://u:p@h/db"), PostgresJobStateStore)
    with pytest.raises(ConfigurationError, match="unsupported job-state store scheme 'redis'") as caught:
        job_state_store_from_url("redis://u:hunter2@h")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigurationError, match="file path"):
        job_state_store_from_url("sqlite:")


async def test_an_outage_raises_the_stores_unavailable_error(store: MemoryJobStateStore) -> None:
    store.fail_with = OSError("down")
    with pytest.raises(JobStateStoreUnavailable):
        await store.get("x")
    with pytest.raises(JobStateStoreUnavailable):
        await store.apply([])


async def test_result_bounds_its_first_read_when_the_store_hangs(clock: FakeClock) -> None:
    # The first read is let finish past a zero timeout (a finished job is answered at timeout=0),
    # but not for ever: a store that hangs (a black-holed database) still ends in TimeoutError.
    import asyncio

    from conveyor.common.job_state.handle import JobHandle

    class Hanging(MemoryJobStateStore):
        async def get(self, job_id: str) -> None:
            await asyncio.Event().wait()

    handle = JobHandle(job_id="j", queue="q", confirmed_at=clock.now(), tries=1, store=Hanging(clock=clock))
    for timeout in (0, 0.01):
        waiting = asyncio.ensure_future(handle.result(timeout=timeout))
        done, _ = await asyncio.wait({waiting}, timeout=30)
        assert done, "result() waited on a hanging store past its timeout"
        assert isinstance(waiting.exception(), TimeoutError)

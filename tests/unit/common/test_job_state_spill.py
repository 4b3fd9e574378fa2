"""The spill file: transitions a killed worker had not written yet are written by the next one."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.common.clock import FakeClock
from conveyor.common.job_state import JobState, MemoryJobStateStore, Transition
from conveyor.common.job_state.spill import SpillFile, decode_transition, encode_transition
from conveyor.common.job_state.states import generation_of
from conveyor.common.job_state.writer import JobStateWriter


def _t(clock: FakeClock, job_id: str, state: JobState) -> Transition:
    return Transition(job_id=job_id, state=state, at=clock.now(), generation=generation_of(clock.now(), None),
                      created_at=clock.now(), worker_id="w1", job_type="t.job",
                      attempt_outcome=None if state is JobState.RUNNING else "succeeded")


def test_a_transition_survives_its_encoding_exactly() -> None:
    t = _t(FakeClock(), "j", JobState.SUCCEEDED)
    assert decode_transition(encode_transition(t).rstrip(b"\n")) == t


async def test_what_a_dead_worker_had_not_written_is_written_by_the_next_one(tmp_path: Path) -> None:
    clock, store = FakeClock(), MemoryJobStateStore()
    spill = SpillFile(tmp_path)
    assert spill.open() == []
    writer = JobStateWriter(store, spill=spill)
    writer.record(_t(clock, "a", JobState.RUNNING))
    await writer.flush()  # written: the file starts over
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) == 0
    store.fail_with = OSError("down")
    writer.record(_t(clock, "a", JobState.SUCCEEDED))
    writer.record(_t(clock, "b", JobState.RUNNING))
    with pytest.raises(Exception, match="failing on purpose"):
        await writer.flush()
    spill.close(keep=True)  # the process dies: its lock goes, its file stays
    store.fail_with = None
    assert (await store.get("a")).state is JobState.RUNNING  # type: ignore[union-attr]

    heir = SpillFile(tmp_path)
    claimed = heir.open()
    assert [(t.job_id, t.state) for t in claimed] == [("a", JobState.SUCCEEDED), ("b", JobState.RUNNING)]
    await store.apply(claimed)
    assert (await store.get("a")).state is JobState.SUCCEEDED  # type: ignore[union-attr]
    assert len(list(tmp_path.iterdir())) == 1, "the claimed file is gone; only the heir's own is left"
    assert SpillFile(tmp_path).open() == [], "a living worker's file is never claimed"
    heir.close(keep=False)


def test_a_line_cut_short_by_the_death_is_skipped(tmp_path: Path) -> None:
    good = encode_transition(_t(FakeClock(), "ok", JobState.RUNNING))
    (tmp_path / "1-dead.jobstate").write_bytes(good + good[: len(good) // 2])
    claimed = SpillFile(tmp_path).open()
    assert [t.job_id for t in claimed] == ["ok"]

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


class _BusyStore(MemoryJobStateStore):
    """Jobs keep finishing while each batch is written, so the buffer is never empty right
    after a write (for the first ``busy_writes``): the moment the file used to be emptied."""

    def __init__(self, writer_of: list[JobStateWriter], spill_dir: Path, busy_writes: int) -> None:
        super().__init__()
        self.writer_of, self.spill_dir, self.busy_writes = writer_of, spill_dir, busy_writes
        self.clock, self.arrived, self.largest_file = FakeClock(), 0, 0

    async def apply(self, batch: list[Transition]) -> None:
        await super().apply(batch)
        self.largest_file = max(self.largest_file, sum(p.stat().st_size for p in self.spill_dir.iterdir()))
        if self.busy_writes:
            self.busy_writes -= 1
            for _ in range(8):  # fewer than a batch: the writer keeps up
                self.writer_of[0].record(_t(self.clock, f"j{self.arrived}", JobState.SUCCEEDED))
                self.arrived += 1


async def test_the_file_stays_small_when_the_buffer_is_never_empty_after_a_write(tmp_path: Path) -> None:
    writers: list[JobStateWriter] = []
    store = _BusyStore(writers, tmp_path, busy_writes=3_000)
    spill = SpillFile(tmp_path)
    spill.open()
    writers.append(JobStateWriter(store, batch_size=10, capacity=100, spill=spill))
    writers[0].record(_t(store.clock, "first", JobState.RUNNING))
    await writers[0].flush()
    one_line = len(encode_transition(_t(store.clock, "j0", JobState.SUCCEEDED)))
    assert store.arrived == 24_000, "24,000 transitions went through the file"
    assert store.largest_file < 60 * one_line, f"{store.largest_file} bytes: it held lines already written"
    for job in ("first", "j0", "j23999"):
        assert await store.get(job) is not None
    spill.close(keep=False)


async def test_an_outage_longer_than_the_buffer_keeps_the_file_to_what_the_buffer_holds(tmp_path: Path) -> None:
    clock, store = FakeClock(), MemoryJobStateStore()
    spill = SpillFile(tmp_path)
    spill.open()
    writer = JobStateWriter(store, batch_size=100, capacity=1_000, spill=spill)
    store.fail_with = OSError("down")
    for n in range(20_000):
        writer.record(_t(clock, f"j{n:05d}", JobState.SUCCEEDED))
        if n % 100 == 99:
            with pytest.raises(Exception, match="failing on purpose"):
                await writer.flush()
            assert spill.lines <= 2 * 1_000 + 100
    assert writer.dropped == 19_000
    spill.close(keep=True)  # the process dies in the outage

    claimed = SpillFile(tmp_path).open()
    assert [t.job_id for t in claimed][-1_000:] == [f"j{n:05d}" for n in range(19_000, 20_000)], (
        "the heir gets every transition the buffer still held, in order"
    )
    assert len(claimed) <= 2 * 1_000 + 100


@pytest.mark.parametrize(("with_spill", "said"), [(True, "the next worker here writes them"),
                                                  (False, "they are lost (no state directory)")])
async def test_shutdown_with_the_store_down_says_whether_the_transitions_are_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, with_spill: bool, said: str
) -> None:
    # A producer has no state directory: its log said a worker would write what it had not.
    store = MemoryJobStateStore()
    store.fail_with = OSError("down")
    writer = JobStateWriter(store, spill=SpillFile(tmp_path) if with_spill else None)
    if with_spill:
        assert writer.spill is not None and writer.spill.open() == []
    writer.record(_t(FakeClock(), "a", JobState.QUEUED))
    await writer.close(timeout=0.5)
    [record] = [r for r in caplog.records if "not written at shutdown" in r.getMessage()]
    assert record.getMessage().endswith(said)

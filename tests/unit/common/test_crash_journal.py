"""The crash journal: what a dead worker was running is counted once per death, by whoever
starts next on the host; live workers' journals are never touched."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor.common.crash_journal import CrashJournal
from conveyor.common.errors import ConfigurationError


def _die_while_running(directory: Path, running: list[str], finished: tuple[str, ...] = ()) -> None:
    """A real process that opens a journal, starts jobs and dies without closing it."""
    code = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from conveyor.common.crash_journal import CrashJournal
        journal = CrashJournal(Path({str(directory)!r}))
        journal.open()
        for job in {finished!r}:
            journal.started(job)
            journal.finished(job)
        for job in {running!r}:
            journal.started(job)
        os._exit(9)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 9, result.stderr


def test_jobs_running_at_a_death_become_suspects_with_one_crash(tmp_path: Path) -> None:
    _die_while_running(tmp_path, running=["a", "b"], finished=["c"])
    journal = CrashJournal(tmp_path)
    suspects = journal.open()
    assert {job: r.crashes for job, r in suspects.items()} == {"a": 1, "b": 1}
    journal.close()


def test_counts_carry_over_through_the_claimers_own_death(tmp_path: Path) -> None:
    _die_while_running(tmp_path, running=["a", "b"])
    _die_while_running(tmp_path, running=["a"])  # claims the first journal, then dies running "a"
    _die_while_running(tmp_path, running=["a"])
    journal = CrashJournal(tmp_path)
    suspects = journal.open()
    assert {job: r.crashes for job, r in suspects.items()} == {"a": 3, "b": 1}
    assert len(list(tmp_path.glob("*.journal"))) == 1, "claimed journals are removed"
    kills = suspects["a"].kills
    assert len(kills) == 3 and len({worker for worker, _ in kills}) == 3, "each run it killed, in its own worker"
    assert all(abs(started - time.time()) < 120 for _, started in kills)


def test_a_living_workers_journal_is_never_claimed(tmp_path: Path) -> None:
    alive = CrashJournal(tmp_path)
    alive.open()
    alive.started("mine")
    newcomer = CrashJournal(tmp_path)
    assert newcomer.open() == {}
    assert len(list(tmp_path.glob("*.journal"))) == 2
    alive.close()
    newcomer.close()


def test_a_clean_close_leaves_nothing_to_count(tmp_path: Path) -> None:
    journal = CrashJournal(tmp_path)
    journal.open()
    journal.started("a")
    journal.finished("a")
    journal.close()
    assert list(tmp_path.glob("*.journal")) == []
    assert CrashJournal(tmp_path).open() == {}


def test_resolved_suspects_are_forgotten_and_unresolved_ones_handed_on(tmp_path: Path) -> None:
    _die_while_running(tmp_path, running=["a", "b"])
    first = CrashJournal(tmp_path)
    first.open()
    first.resolved("a")
    first.close()  # "b" is still a suspect: its journal stays for the next process
    second = CrashJournal(tmp_path)
    assert {job: r.crashes for job, r in second.open().items()} == {"b": 1}


def test_suspects_expire_after_the_retention(tmp_path: Path) -> None:
    (tmp_path / "1-dead.journal").write_text(f"C old 2 {time.time() - 100:.3f}\nC new 1 {time.time():.3f}\n")
    journal = CrashJournal(tmp_path, retention=50)
    assert set(journal.open()) == {"new"}


def test_a_truncated_last_line_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "1-dead.journal").write_text("S a 1.0\nF a\nS b 2.0\nC x\nS")
    assert {job: r.crashes for job, r in CrashJournal(tmp_path).open().items()} == {"b": 1}


def test_an_unwritable_state_directory_is_a_configuration_error_naming_the_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigurationError, match="CONVEYOR_STATE_DIR"):
        CrashJournal(blocker / "sub").open()


def test_processes_starting_together_count_a_death_once(tmp_path: Path) -> None:
    """Several workers of one host start at once after a death: exactly one claims the dead
    journal, so the job's crash is counted once, not once per newcomer."""
    _die_while_running(tmp_path, running=["a"])
    barrier = tmp_path.parent / f"{tmp_path.name}-opened"
    barrier.mkdir()
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from conveyor.common.crash_journal import CrashJournal
        journal = CrashJournal(Path({str(tmp_path)!r}))
        suspects = journal.open()
        print(sum(r.crashes for r in suspects.values()), flush=True)
        # Stay alive (and locked) until every newcomer has opened: one that exited first would
        # leave a journal of its own for a slow starter to claim, which is another story.
        Path({str(barrier)!r}, str(time.monotonic_ns())).touch()
        deadline = time.monotonic() + 50
        while len(list(Path({str(barrier)!r}).iterdir())) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
    """)
    newcomers = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(4)]
    counts = [int(p.communicate(timeout=60)[0].strip()) for p in newcomers]
    assert sorted(counts) == [0, 0, 0, 1], counts


def _die_after_many_jobs(directory: Path, *, jobs: int, compact_after: int) -> None:
    """A real process that claims what is there, runs many jobs (so its journal is compacted
    many times) with one job started before and one after them, and dies running both."""
    code = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from conveyor.common.crash_journal import CrashJournal
        journal = CrashJournal(Path({str(directory)!r}), compact_after={compact_after})
        journal.open()
        journal.started("early")
        for n in range({jobs}):
            journal.started(f"job-{{n}}")
            journal.finished(f"job-{{n}}")
        journal.started("late")
        os._exit(9)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 9, result.stderr


def test_a_long_lived_workers_journal_stays_small(tmp_path: Path) -> None:
    journal = CrashJournal(tmp_path, compact_after=4096)
    journal.open()
    journal.started("still-running")
    for n in range(20_000):
        journal.started(f"job-{n:05d}")
        journal.finished(f"job-{n:05d}")
    (path,) = tmp_path.glob("*.journal")
    written = path.read_bytes().rstrip(b"\0")
    assert len(written) < 2 * 4096, "two lines a job would be about 600 KB by now"
    assert path.stat().st_size <= len(written) + 4096 + 4096, "the file is what was written and its room"
    assert b"still-running" in written
    journal.close()


def test_a_job_started_just_before_a_kill_9_is_on_record(tmp_path: Path) -> None:
    """The S line is stored through the memory map, not written by a system call: it must
    still be in the file when SIGKILL lands the very next instant."""
    code = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from conveyor.common.crash_journal import CrashJournal
        journal = CrashJournal(Path({str(tmp_path)!r}))
        journal.open()
        for n in range(500):
            journal.started(f"done-{{n}}")
            journal.finished(f"done-{{n}}")
        journal.started("killed-mid-run")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == -9, result.stderr
    journal = CrashJournal(tmp_path)
    assert {job: r.crashes for job, r in journal.open().items()} == {"killed-mid-run": 1}
    journal.close()


def test_a_line_cut_short_by_the_death_before_the_nul_tail_is_not_counted(tmp_path: Path) -> None:
    # A SIGKILL during the copy of an S line (a page fault enters the kernel): the handler had
    # not started, so the job was not running.
    (tmp_path / "1-dead.journal").write_bytes(b"S a 1.0\nS b 2.0\nF a\nS cut-sh" + b"\0" * 8192)
    journal = CrashJournal(tmp_path)
    assert {job: r.crashes for job, r in journal.open().items()} == {"b": 1}
    journal.close()


def test_a_journal_written_by_an_older_version_with_write_is_still_claimed(tmp_path: Path) -> None:
    (tmp_path / "1-dead.journal").write_text(f"S a 1.0\nF a\nS b 2.0\nC c 2 {time.time():.3f}\n")
    journal = CrashJournal(tmp_path)
    assert {job: r.crashes for job, r in journal.open().items()} == {"b": 1, "c": 2}
    journal.close()


def test_a_full_journal_that_cannot_be_compacted_fails_the_start_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full at every compaction: appends fill the reserved room, then a start that does
    not fit raises (the job is not run unrecorded), and nothing is ever stored past the map."""
    from conveyor.common import lockfiles

    journal = CrashJournal(tmp_path, compact_after=256)
    journal.open()

    def disk_full(*args: object, **kwargs: object) -> lockfiles.MappedFile:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lockfiles, "replace_mapped", disk_full)
    with pytest.raises(OSError, match="full"):
        for n in range(10_000):
            journal.started(f"job-{n:05d}")
            journal.finished(f"job-{n:05d}")
    assert n > 10, "the reserved room was used first"
    monkeypatch.undo()
    journal.started("after-the-disk-has-room")  # the next compaction succeeds and writes the state
    (path,) = tmp_path.glob("*.journal")
    written = path.read_bytes().rstrip(b"\0")
    assert b"after-the-disk-has-room" in written and f"job-{n:05d}".encode() in written
    journal.close()


def test_a_death_after_compactions_counts_exactly_the_runs_in_progress_and_the_suspects(tmp_path: Path) -> None:
    _die_while_running(tmp_path, running=["suspect"])
    _die_after_many_jobs(tmp_path, jobs=3_000, compact_after=2048)
    journal = CrashJournal(tmp_path)
    suspects = journal.open()
    assert {job: r.crashes for job, r in suspects.items()} == {"suspect": 1, "early": 1, "late": 1}
    assert len(suspects["suspect"].kills) == 1, "the kill record survives the compactions"
    assert list(tmp_path.glob("*.compacting")) == []
    journal.close()


def test_newcomers_never_claim_a_live_journal_while_it_is_being_compacted(tmp_path: Path) -> None:
    """A claimer may open the old file just before the rename: it must see the inode replaced
    (or the lock held) and leave it, however the two interleave."""
    import threading

    live = CrashJournal(tmp_path, compact_after=256)
    live.open()
    live.started("running-in-the-live-worker")
    stop = threading.Event()

    def busy() -> None:
        n = 0
        while not stop.is_set():
            live.started(f"j{n}")
            live.finished(f"j{n}")
            n += 1

    writer = threading.Thread(target=busy)
    writer.start()
    try:
        claimed = []
        for _ in range(300):
            newcomer = CrashJournal(tmp_path)
            claimed.append(newcomer.open())
            newcomer.close()
    finally:
        stop.set()
        writer.join()
    assert all(found == {} for found in claimed)
    (path,) = tmp_path.glob("*.journal")
    assert "running-in-the-live-worker" in path.read_text()
    live.close()


def test_a_compaction_cut_short_by_a_death_leaves_the_old_journal_to_count(tmp_path: Path) -> None:
    _die_while_running(tmp_path, running=["a"])
    (dead,) = tmp_path.glob("*.journal")
    dead.with_suffix(".compacting").write_text("S half-writ")  # died between the write and the rename
    journal = CrashJournal(tmp_path)
    assert {job: r.crashes for job, r in journal.open().items()} == {"a": 1}
    assert list(tmp_path.glob("*.compacting")) == []
    journal.close()


def test_compact_after_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="compact_after"):
        CrashJournal(tmp_path, compact_after=0)


def test_a_disk_too_full_for_the_journals_room_is_a_start_up_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(ConfigurationError, match="CONVEYOR_STATE_DIR"):
        CrashJournal(tmp_path).open()
    assert list(tmp_path.iterdir()) == [], "no half-made journal left behind"


def test_the_journal_reserves_its_room_up_front(tmp_path: Path) -> None:
    journal = CrashJournal(tmp_path, compact_after=1 << 20)
    journal.open()
    (path,) = tmp_path.glob("*.journal")
    assert path.stat().st_blocks * 512 >= 1 << 20, "blocks allocated, not a sparse file"
    journal.close()


def test_pages_handed_back_to_the_kernel_keep_their_lines(tmp_path: Path) -> None:
    """Written pages are released from the worker's memory every 64 KiB (MADV_DONTNEED on the
    shared map): the lines stay in the file, for a claimer after a kill -9 too."""
    code = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from conveyor.common.crash_journal import CrashJournal
        journal = CrashJournal(Path({str(tmp_path)!r}))
        journal.open()
        journal.started("first-still-running")
        for n in range(6000):  # ~250 KiB: several releases
            journal.started(f"done-{{n:05d}}")
            journal.finished(f"done-{{n:05d}}")
        assert journal._file._released >= 192 * 1024, journal._file._released
        journal.started("last-still-running")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == -9, result.stderr
    (path,) = tmp_path.glob("*.journal")
    written = path.read_bytes().rstrip(b"\0").decode()
    assert written.count("\nS done-") == 6000 and written.count("\nF done-") == 6000
    journal = CrashJournal(tmp_path)
    assert {job: r.crashes for job, r in journal.open().items()} == {"first-still-running": 1, "last-still-running": 1}
    journal.close()


def _open_wait_claim_and_die(directory: Path, trigger: Path, running: list[str]) -> subprocess.Popen[str]:
    """A real process that opens its journal at once, and when ``trigger`` appears claims the
    siblings that died meanwhile (what a redelivery makes it do), starts jobs and dies."""
    code = textwrap.dedent(f"""
        import os, time
        from pathlib import Path
        from conveyor.common.crash_journal import CrashJournal
        journal = CrashJournal(Path({str(directory)!r}))
        journal.open()
        print("open", flush=True)
        while not Path({str(trigger)!r}).exists():
            time.sleep(0.01)
        print("claimed", journal.claim_dead(), flush=True)
        for job in {running!r}:
            journal.started(job)
        os._exit(9)
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "open\n"
    return process


def test_a_sibling_that_opened_before_a_death_claims_it_and_one_count_runs_on(tmp_path: Path) -> None:
    trigger = tmp_path / "go"
    sibling = _open_wait_claim_and_die(tmp_path, trigger, running=["killer"])
    _die_while_running(tmp_path, running=["killer", "innocent"])  # cannot claim the live sibling's journal
    trigger.touch()
    out, _ = sibling.communicate(timeout=60)
    assert sibling.returncode == 9 and "claimed 1" in out, out
    newcomer = CrashJournal(tmp_path)
    suspects = newcomer.open()
    # Before claim_dead the sibling knew nothing of the first death: the killer's count was split
    # (1 here, 1 in whoever claimed the other journal), and each process let it kill again.
    assert {job: r.crashes for job, r in suspects.items()} == {"killer": 2, "innocent": 1}
    assert len(suspects["killer"].kills) == 2
    newcomer.close()


def test_claim_dead_takes_nothing_from_the_living_and_adds_nothing_without_a_death(tmp_path: Path) -> None:
    alive, other = CrashJournal(tmp_path), CrashJournal(tmp_path)
    alive.open()
    other.open()
    other.started("theirs")
    assert alive.claim_dead() == 0 and alive.suspects == {}
    assert len(list(tmp_path.glob("*.journal"))) == 2
    _die_while_running(tmp_path, running=["k"])
    assert alive.claim_dead() == 1 and {j: r.crashes for j, r in alive.suspects.items()} == {"k": 1}
    assert alive.claim_dead() == 0, "a journal is claimed once"
    alive.close()
    other.close()


def test_a_death_is_counted_once_when_live_siblings_and_newcomers_race_to_claim_it(tmp_path: Path) -> None:
    import threading

    for round_ in range(10):
        directory = tmp_path / str(round_)
        live = [CrashJournal(directory) for _ in range(3)]
        for journal in live:
            journal.open()
        _die_while_running(directory, running=["k"])
        newcomers = [CrashJournal(directory) for _ in range(3)]
        start = threading.Barrier(6)

        def at_once(step: Callable[[], object], start: threading.Barrier = start) -> None:
            start.wait()
            step()

        threads = [threading.Thread(target=at_once, args=(j.claim_dead,)) for j in live]
        threads += [threading.Thread(target=at_once, args=(j.open,)) for j in newcomers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        counts = [j.suspects["k"].crashes for j in live + newcomers if "k" in j.suspects]
        assert counts == [1], f"round {round_}: the death was counted {counts}"
        for journal in live + newcomers:
            journal.close()

"""The bench's Conveyor worker runs what ``conveyor worker`` runs, no more and no less
(issue 18: a bench without the CLI's crash guard measured a cheaper worker than users run)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bench.conveyor import make_registry
from bench.support import cli_worker
from conveyor.common.settings import Settings
from conveyor.common.transport.memory import MemoryTransport
from conveyor.consumer.breaker import BreakerConfig
from conveyor.consumer.middleware.crash_guard import CrashGuardMiddleware
from conveyor.consumer.worker import Worker, WorkerConfig

URL = "amqp://bench:s3cret-bench@127.0.0.1:5672/"


def test_the_bench_worker_config_is_the_cli_one_with_a_fresh_state_dir() -> None:
    cli = WorkerConfig.from_settings(Settings(concurrency=64, prefetch=64))
    with cli_worker(URL, 64) as (config, redact):
        state_dir = config.state_dir
        assert state_dir is not None and state_dir.is_dir()
        assert state_dir.parent == Path.home() / ".local" / "state"  # the CLI default's filesystem
        ignored = {"state_dir", "worker_id"}  # per process in the CLI too
        for f in dataclasses.fields(WorkerConfig):
            if f.name not in ignored:
                assert getattr(config, f.name) == getattr(cli, f.name), f.name
        assert config.watchdog.exit_after == cli.watchdog.exit_after is not None
        assert "s3cret-bench" not in redact(f"connect to {URL} failed: s3cret-bench")
    assert not state_dir.exists()  # removed afterwards


def test_overrides_change_only_what_they_name() -> None:
    never = BreakerConfig(consecutive_failures=10**9, failure_rate=1.0, min_calls=10**9)
    with cli_worker(URL, 200) as (plain, _), cli_worker(URL, 200, breaker=never) as (config, _):
        assert config.breaker == never
        assert dataclasses.replace(config, breaker=plain.breaker, state_dir=plain.state_dir,
                                   worker_id=plain.worker_id) == plain


def test_the_bench_worker_has_the_crash_guard_outermost() -> None:
    jobs = make_registry("bench-fairness")
    with cli_worker(URL, 8) as (config, _):
        worker = Worker(MemoryTransport(), jobs, config=config)
        assert isinstance(worker.middlewares[0], CrashGuardMiddleware)
        assert worker.middlewares[0].journal.directory == config.state_dir


def test_the_cli_and_the_bench_workers_freeze_the_startup_heap_before_consuming() -> None:
    """``conveyor worker`` freezes its start-up objects (consumer.worker.freeze_startup_heap) just
    before it consumes; the bench's workers must do the same, no more and no less."""
    import inspect

    from bench import conveyor, pulsar_conveyor
    from conveyor.consumer.cli import worker as cli

    for source in (inspect.getsource(cli._worker_main), inspect.getsource(conveyor.worker_main),
                   inspect.getsource(pulsar_conveyor.worker_main)):
        assert source.count("freeze_startup_heap()") == 1
        consuming = "async with transport, worker" if "async with transport, worker" in source else "await worker.start()"
        assert source.index("freeze_startup_heap()") < source.index(consuming)


def test_the_processes_rows_compare_the_command_with_the_aiormq_loop_and_report_its_rss(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The processes scenario (issue 18, goal 6) in the main run: `conveyor worker --processes 1/2`
    beside raw aiormq, and the command's own peak RSS against the 45 MiB ceiling."""
    import asyncio

    from bench import processes
    from bench.scenarios import Config, Runner

    calls: list[tuple[str, int]] = []

    async def raw_sample(url: str, queue: str, n: int, prefetch: int, side: str = "raw") -> dict[str, float]:
        calls.append((side, prefetch))
        return {"jobs_per_s": 10_000.0, "cpu_us_per_job": 80.0, "processes_that_ran": 1, "peak_rss_mib": 28.0}

    async def conveyor_sample(url: str, queue: str, n: int, count: int, prefetch: int) -> dict[str, float]:
        calls.append((f"conveyor-{count}", prefetch))
        return {"jobs_per_s": 9_000.0 * count, "cpu_us_per_job": 90.0, "processes_that_ran": count,
                "peak_rss_mib": 46.0 + count}

    async def no_cleanup(*queues: str) -> None:
        return None

    async def no_sleep(seconds: float) -> None:
        return None

    monkeypatch.setattr(processes, "raw_sample", raw_sample)
    monkeypatch.setattr(processes, "conveyor_sample", conveyor_sample)
    monkeypatch.setattr("bench.scenarios.asyncio.sleep", no_sleep)
    runner = Runner(Config(url=URL, jobs=100, repeat=2, prefetches=(64, 200)), progress=lambda text: None)
    monkeypatch.setattr(runner, "cleanup", no_cleanup)
    asyncio.run(runner.processes())
    assert sorted(calls) == sorted([("aiormq", 64), ("conveyor-1", 64), ("conveyor-2", 64)] * 2)
    one, two, rss = runner.rows
    assert (one.aiormq, one.conveyor, one.ratio) == (10_000.0, 9_000.0, 0.9)
    assert two.conveyor == 18_000.0 and "--processes 2" in two.metric
    assert (rss.conveyor, rss.aiormq, rss.target, rss.meets_target) == (47.0, 28.0, 45.0, False)

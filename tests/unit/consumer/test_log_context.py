"""What a worker logs about a job's attempts, at the level operators run with by default."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.logging import configure_logging
from conveyor.common.settings import Settings
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer.cli.app import main
from conveyor.consumer.worker import Worker
from conveyor.producer.producer import Producer


class Job(BaseModel):
    n: int


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """configure_logging and the CLI replace the root handler: put the test runner's back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


async def test_a_failed_attempt_with_a_retry_ahead_is_a_warning_seen_at_the_default_level() -> None:
    stream = io.StringIO()
    configure_logging(Settings().log_level, "json", stream)
    broker, jobs = MemoryBroker(), JobRegistry()

    @jobs.job("t.flaky", retry=RetryPolicy(max_attempts=2, base=0.01, jitter=0))
    async def flaky(payload: Job, ctx: JobContext) -> None:
        if ctx.attempt == 1:
            raise ConnectionError("the database blinked")

    async with Producer.for_registry(MemoryTransport(broker), jobs) as producer:
        receipt = await producer.publish("t.flaky", Job(n=1))
    async with MemoryTransport(broker) as transport, Worker(transport, jobs) as worker:
        await broker.join(DEFAULT_QUEUE)
    assert worker.counts["succeeded"] == 1
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    [failed] = [line for line in lines if line["msg"] == "job attempt failed"]
    assert failed["level"] == "warning"
    assert (failed["job_id"], failed["attempt"], failed["error_type"]) == (receipt.job_id, 1, "ConnectionError")
    assert "the database blinked" not in stream.getvalue(), "messages can carry payload values"


def test_the_cli_logs_at_the_settings_default_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVEYOR_LOG_LEVEL", raising=False)
    default = Settings().log_level
    assert default == "WARNING"
    result = CliRunner().invoke(main, ["status", "--broker", "memory://", "--interval", "0", "--json"])
    assert result.exit_code == 1 and "queue_not_found" in result.output  # memory:// starts empty
    assert logging.getLogger().level == logging.getLevelName(default)
    assert f"[default: {default}]" in CliRunner().invoke(main, ["--help"]).output


def test_a_bogus_log_level_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="log_level"):
        Settings(log_level="bogus")


async def test_lines_inside_a_job_carry_its_fields_and_lines_after_it_do_not() -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream)
    broker, jobs = MemoryBroker(), JobRegistry()
    handler_log = logging.getLogger("tests.handler")

    @jobs.job("t.ok")
    async def ok(payload: Job, ctx: JobContext) -> None:
        handler_log.info("inside the handler")

    async with Producer.for_registry(MemoryTransport(broker), jobs) as producer:
        receipt = await producer.publish("t.ok", Job(n=1))
    async with MemoryTransport(broker) as transport, Worker(transport, jobs):
        await broker.join(DEFAULT_QUEUE)
    logging.getLogger("tests.after").info("after the job")
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    [inside] = [line for line in lines if line["msg"] == "inside the handler"]
    [succeeded] = [line for line in lines if line["msg"] == "job succeeded"]
    for line in (inside, succeeded):
        assert (line["job_id"], line["job_type"], line["attempt"]) == (receipt.job_id, "t.ok", 1)
    [after] = [line for line in lines if line["msg"] == "after the job"]
    assert "job_id" not in after


async def test_at_info_a_success_writes_no_line_and_handler_lines_carry_all_four_fields() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    broker, jobs = MemoryBroker(), JobRegistry()

    @jobs.job("t.ok")
    async def ok(payload: Job, ctx: JobContext) -> None:
        logging.getLogger("tests.handler").info("inside the handler")

    async with Producer.for_registry(MemoryTransport(broker), jobs) as producer:
        receipts = [await producer.publish("t.ok", Job(n=n)) for n in range(3)]
    async with MemoryTransport(broker) as transport, Worker(transport, jobs) as worker:
        await broker.join(DEFAULT_QUEUE)
        assert worker.counts["succeeded"] == 3
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert not [line for line in lines if line["msg"] == "job succeeded"]
    inside = [line for line in lines if line["msg"] == "inside the handler"]
    assert sorted(line["job_id"] for line in inside) == sorted(r.job_id for r in receipts)
    for line in inside:
        assert line["job_type"] == "t.ok" and line["attempt"] == 1 and line["correlation_id"] == line["job_id"]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def _fail_once_in_a_worker(jobs_logger: logging.Logger) -> list[logging.LogRecord]:
    """Run one job that fails on every attempt (two attempts) and return the records the
    ``conveyor.jobs`` logger's own handler received."""
    records = _Records()
    jobs_logger.addHandler(records)
    broker, jobs = MemoryBroker(), JobRegistry()

    @jobs.job("t.failing", retry=RetryPolicy(max_attempts=2, base=0.01, jitter=0))
    def failing(payload: Job, ctx: JobContext) -> None:  # sync: the line is the same from a thread's job
        raise KeyError("never")

    try:
        async with Producer.for_registry(MemoryTransport(broker), jobs) as producer:
            await producer.publish("t.failing", Job(n=1))
        async with MemoryTransport(broker) as transport, Worker(transport, jobs) as worker:
            await broker.join(DEFAULT_QUEUE)
        assert worker.counts["dead_lettered"] == 1
    finally:
        jobs_logger.removeHandler(records)
    return [r for r in records.records if r.msg == "job attempt failed"]


async def test_every_failed_attempt_is_one_record_with_what_logger_warning_would_give() -> None:
    """The failure line is built without ``findCaller`` (retry path, issue 18): handlers must
    still get the record ``log.warning(msg, extra=…)`` makes, bar the place it names."""
    jobs_logger = logging.getLogger("conveyor.jobs")
    failed = await _fail_once_in_a_worker(jobs_logger)
    assert len(failed) == 2, "one record per failed attempt"
    reference = jobs_logger.makeRecord(
        "conveyor.jobs", logging.WARNING, "f", 1, "job attempt failed", (), None, extra={"error_type": "KeyError"}
    )
    moving = {"created", "msecs", "relativeCreated", "thread", "threadName", "pathname", "filename", "module",
              "lineno", "funcName", "message", "asctime"}
    for record in failed:
        formatted = {"message", "asctime"}  # set on the record by whichever formatter ran first (pytest's)
        assert set(vars(record)) - formatted == set(vars(reference))
        assert {k: v for k, v in vars(record).items() if k not in moving} == {
            k: v for k, v in vars(reference).items() if k not in moving
        }
        assert (record.levelname, record.error_type, record.args, record.exc_info) == ("WARNING", "KeyError", (), None)
        assert record.module == "log_context" and record.pathname.endswith("log_context.py") and record.lineno > 0


async def test_the_failure_line_honours_the_loggers_level_disabled_flag_and_filters() -> None:
    jobs_logger = logging.getLogger("conveyor.jobs")
    level, disabled = jobs_logger.level, jobs_logger.disabled
    dropped: list[str] = []

    def drop_failures(record: logging.LogRecord) -> bool:
        dropped.append(record.getMessage())
        return record.getMessage() != "job attempt failed"

    try:
        jobs_logger.setLevel(logging.ERROR)
        assert await _fail_once_in_a_worker(jobs_logger) == []
        jobs_logger.setLevel(level)
        jobs_logger.disabled = True
        assert await _fail_once_in_a_worker(jobs_logger) == []
        jobs_logger.disabled = disabled
        jobs_logger.addFilter(drop_failures)
        assert await _fail_once_in_a_worker(jobs_logger) == []
        assert dropped.count("job attempt failed") == 2, "the logger's filter saw each failure"
    finally:
        jobs_logger.removeFilter(drop_failures)
        jobs_logger.setLevel(level)
        jobs_logger.disabled = disabled

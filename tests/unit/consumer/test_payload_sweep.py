"""The orphan sweep and the ``conveyor payloads sweep`` / ``dlq purge`` commands."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from conveyor.common.errors import ConfigurationError
from conveyor.common.payload_store.filesystem import FileSystemPayloadStore
from conveyor.consumer.cli import main
from conveyor.consumer.ops.payload_sweep import parse_age, sweep


def age_file(store: FileSystemPayloadStore, key: str, days: float) -> None:
    path = store.root / store.bucket / key
    then = time.time() - days * 86400
    os.utime(path, (then, then))


async def two_objects(tmp_path: Path) -> tuple[FileSystemPayloadStore, str, str]:
    store = FileSystemPayloadStore(tmp_path)
    now = datetime.now(UTC)
    old = await store.put_payload("t.job", "old", b"{}" * 10, now)
    new = await store.put_payload("t.job", "new", b"{}", now)
    age_file(store, old.key, 8)
    return store, old.key, new.key


@pytest.mark.parametrize(("text", "expected"), [("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600)])
def test_ages_parse(text: str, expected: int) -> None:
    assert parse_age(text) == timedelta(seconds=expected)


@pytest.mark.parametrize("text", ["7 days", "99999999999999d", "1" + "0" * 400 + "s"])
def test_a_bad_age_is_a_configuration_error(text: str) -> None:
    # `payloads sweep --older-than 99999999999999d` printed an OverflowError traceback.
    with pytest.raises(ConfigurationError):
        parse_age(text)


async def test_sweep_deletes_only_objects_older_than_the_age(tmp_path: Path) -> None:
    store, old, new = await two_objects(tmp_path)
    report = await sweep(store, timedelta(days=7), now=datetime.now(UTC))
    assert (report.scanned, report.orphans, report.deleted, report.orphan_bytes) == (2, 1, 1, 20)
    assert [o.key async for o in store.list_objects()] == [new]


async def test_a_dry_run_deletes_nothing(tmp_path: Path) -> None:
    store, old, new = await two_objects(tmp_path)
    report = await sweep(store, timedelta(days=7), now=datetime.now(UTC), dry_run=True)
    assert report.orphans == 1 and report.deleted == 0
    assert len([o async for o in store.list_objects()]) == 2


async def test_a_sweep_younger_than_an_hour_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        await sweep(FileSystemPayloadStore(tmp_path), timedelta(minutes=5), now=datetime.now(UTC))


def test_the_sweep_command_reports_and_deletes(tmp_path: Path) -> None:
    store, old, new = asyncio.run(two_objects(tmp_path))  # the CLI runs its own event loop
    runner = CliRunner()
    url = f"file://{tmp_path}"
    dry = runner.invoke(main, ["payloads", "sweep", "--older-than", "7d", "--dry-run", "--payload-store", url])
    assert dry.exit_code == 0, dry.output
    assert "would delete 1" in dry.output
    real = runner.invoke(main, ["payloads", "sweep", "--older-than", "7d"], env={"CONVEYOR_PAYLOAD_STORE": url})
    assert real.exit_code == 0, real.output
    assert "deleted 1" in real.output
    assert sorted(p.name for p in (tmp_path / "conveyor").rglob("*.json")) == [new.rsplit("/", 1)[1]]


def test_a_sweep_of_a_store_root_that_is_not_there_fails_instead_of_finding_nothing(tmp_path: Path) -> None:
    typo = tmp_path / "payloadz"
    result = CliRunner().invoke(main, ["payloads", "sweep", "--older-than", "7d", "--payload-store", f"file://{typo}"])
    assert result.exit_code == 1, result.output
    assert "PayloadStoreUnavailable (payload_store_unavailable)" in result.output and str(typo) in result.output
    assert "scanned" not in result.output and not typo.exists()


async def test_a_root_with_nothing_stored_yet_under_it_is_an_empty_store(tmp_path: Path) -> None:
    store = FileSystemPayloadStore(tmp_path)  # the root is there; its bucket and prefix are not yet
    report = await sweep(store, timedelta(days=7), now=datetime.now(UTC))
    assert (report.scanned, report.deleted) == (0, 0)


def test_the_sweep_command_needs_a_store() -> None:
    result = CliRunner().invoke(main, ["payloads", "sweep", "--older-than", "7d"], env={"CONVEYOR_PAYLOAD_STORE": ""})
    assert result.exit_code != 0 and "no payload store configured" in result.output

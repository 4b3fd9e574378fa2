"""The publishing benchmark runs end to end on the memory broker (figures are not checked: speed belongs in bench/)."""

from __future__ import annotations

import pytest

from bench import sync_producer


def test_the_sync_producer_bench_runs_on_the_memory_broker(capsys: pytest.CaptureFixture[str]) -> None:
    sync_producer.main(["--broker", "memory", "--jobs", "40", "--threads", "4", "--repeat", "1"])
    out = capsys.readouterr().out
    for row in ("async · 1 task", "sync · 1 thread", "async · 4 tasks", "sync · 4 threads"):
        assert row in out

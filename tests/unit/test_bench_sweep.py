"""bench/README.md: the final sweep lists names with the node's own rabbitmqctl (through
``scripts/services/rabbitmq.sh ctl``), and a rabbitmqctl that cannot run or fails stops the run."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import support

ROOT = Path(__file__).resolve().parents[2]


def test_the_sweep_runs_the_nodes_rabbitmqctl_through_rabbitmq_sh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVEYOR_RABBITMQCTL", raising=False)
    calls: list[list[str]] = []

    def run(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, "bench.a.q\t0\nother\t1\n", "")

    monkeypatch.setattr(support.subprocess, "run", run)
    assert support._rabbitmqctl("list_queues", "name") == ["bench.a.q", "other"]
    assert calls == [["bash", str(ROOT / "scripts/services/rabbitmq.sh"), "ctl", "-q", "list_queues", "name"]]


@pytest.mark.parametrize(("command", "error"), [("false", "failed"), ("/nonexistent/rabbitmqctl", "could not run")])
async def test_a_sweep_whose_rabbitmqctl_fails_stops_the_run(
    monkeypatch: pytest.MonkeyPatch, command: str, error: str
) -> None:
    monkeypatch.setenv("CONVEYOR_RABBITMQCTL", command)
    with pytest.raises(RuntimeError, match=f"rabbitmqctl list_queues {error}"):
        await support.sweep_prefix("amqp://nobody@127.0.0.1:1/", "bench.run.")

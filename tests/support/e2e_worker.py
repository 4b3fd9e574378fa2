"""The e2e worker as a subprocess: started on the e2e app, stopped with SIGTERM after its first job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = ["ROOT", "start_e2e_worker", "stop_after_first_job", "wait_for_a_line"]

ROOT = Path(__file__).resolve().parents[2]


def start_e2e_worker(env: Mapping[str, str], *args: str) -> subprocess.Popen[str]:
    """``conveyor worker tests.e2e.app:jobs ARGS`` with ``env`` over ours, pipes captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "tests.e2e.app:jobs", *args],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for_a_line(worker: subprocess.Popen[str], out: Path, timeout: float = 30) -> None:
    """Until the worker's job wrote its first line to ``out``; the worker must stay up."""
    deadline = time.monotonic() + timeout
    while not out.exists() or not out.read_text().strip():
        assert worker.poll() is None, worker.communicate()[1]
        assert time.monotonic() < deadline, "worker never finished a job"
        time.sleep(0.1)


def stop_after_first_job(worker: subprocess.Popen[str], out: Path, timeout: float = 30) -> tuple[str, str]:
    """Wait for the first job's line in ``out``, SIGTERM the worker and return its stdout and
    stderr once it exits (it is killed if it is still up after ``timeout``)."""
    try:
        wait_for_a_line(worker, out)
        worker.send_signal(signal.SIGTERM)
        return worker.communicate(timeout=timeout)
    finally:
        if worker.poll() is None:
            worker.kill()

"""``conveyor worker`` as a user runs it loads only what its configuration uses (issue 18, worker RSS).

The registry module registers an atexit hook that writes the process's ``sys.modules`` to a
file, so the list covers the whole run: start, consuming, SIGTERM, drain. Names, not sizes:
resident memory follows the modules loaded, and a size would be a timed-style assertion.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support.e2e_worker import ROOT
from tests.unit.consumer.test_lean_imports import OPTIONAL, REGISTRY_SOURCE

AT_EXIT = """
import atexit, json, sys
atexit.register(lambda: open({out!r}, "w").write(json.dumps(sorted(sys.modules))))
"""

# Besides the worker's OPTIONAL list: the CLI's other commands and what they draw in.
CLI_ONLY = ("rich", "aiohttp", "conveyor.consumer.cli.dlq", "conveyor.consumer.cli.status",
            "conveyor.consumer.ops.dead_letters", "conveyor.consumer.supervisor.supervisor")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run_worker(tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[set[str], str]:
    out = tmp_path / "modules.json"
    (tmp_path / "leanapp.py").write_text(AT_EXIT.format(out=str(out)) + REGISTRY_SOURCE)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "leanapp:jobs", "--broker", "memory://",
         "--http-port", str(port), *extra],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "consuming" in line and f":{port}/metrics" in line, line  # the metrics endpoint is on
        with socket.create_connection(("127.0.0.1", port), timeout=5) as scrape:
            scrape.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert scrape.recv(64).startswith(b"HTTP/1.1 200 ")
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    for _ in range(50):  # written at exit
        if out.exists():
            break
        time.sleep(0.1)
    return set(json.loads(out.read_text())), stdout


def test_conveyor_worker_loads_no_optional_module(tmp_path: Path) -> None:
    loaded, stdout = _run_worker(tmp_path)
    assert "stopped" in stdout
    assert {"conveyor.consumer.worker", "conveyor.consumer.http", "prometheus_client", "click"} <= loaded
    # The CLI's own needs: click, the settings (environment and secret files), the broker the
    # URL names (memory:// here) and the payload-store factory that reads CONVEYOR_PAYLOAD_STORE
    # (it imports no store: none is configured).
    expected = {"click", "conveyor.common.settings", "pydantic_settings", "conveyor.common.transport.memory",
                "conveyor.common.payload_store.factory"}
    assert {name for name in (*OPTIONAL, *CLI_ONLY) if name in loaded} == expected


def test_a_configured_job_state_store_is_loaded_by_the_cli_worker(tmp_path: Path) -> None:
    loaded, _ = _run_worker(tmp_path, env={"CONVEYOR_JOB_STATE_URL": "memory://"})
    assert {"conveyor.consumer.middleware.job_state", "conveyor.common.job_state.memory"} <= loaded
    assert "conveyor.common.job_state.postgres" not in loaded and "rich" not in loaded

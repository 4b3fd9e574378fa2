"""Claim checks through the CLI: ``publish`` parks a large payload, ``worker`` fetches and
deletes it, ``dlq purge`` deletes the payloads of the entries it purges."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from tests.e2e.test_cli import ROOT, amqp, conveyor, queue  # noqa: F401 - fixtures


def stored(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.json") if p.is_file())


def test_large_payloads_go_through_the_store_and_are_cleaned_up(amqp: str, queue: str, tmp_path: Path) -> None:  # noqa: F811
    store = tmp_path / "payloads"
    out = tmp_path / "done.txt"
    env = {"CONVEYOR_BROKER_URL": amqp, "CONVEYOR_PAYLOAD_STORE": f"file://{store}", "E2E_QUEUE": queue,
           "E2E_OUT": str(out), "PYTHONPATH": str(ROOT)}
    good = tmp_path / "good.json"
    good.write_bytes(orjson.dumps({"seconds": 0, "notes": "n" * 200_000}))
    published = conveyor("publish", "e2e.nap", "--payload", f"@{good}", "--app", "tests.e2e.app:jobs", env=env)
    assert published.returncode == 0, published.stderr
    job_id = json.loads(published.stdout)["job_id"]
    [parked] = stored(store)
    assert "/conveyor/payloads/e2e.nap/" in parked.as_posix() and parked.name.startswith(job_id)
    bad = tmp_path / "bad.json"
    bad.write_bytes(orjson.dumps({"seconds": "not a number", "notes": "n" * 200_000}))
    planted = conveyor("publish", "e2e.nap", "--payload", f"@{bad}", "--queue", queue, env=env)  # unvalidated
    assert planted.returncode == 0, planted.stderr
    assert len(stored(store)) == 2

    worker = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "tests.e2e.app:jobs", "--http-port", "0"],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            listed = conveyor("dlq", "list", "--queue", queue, "--json", env=env)
            if out.exists() and listed.stdout.strip():
                break
            assert worker.poll() is None, worker.communicate()[1]
            assert time.monotonic() < deadline, "the jobs never settled"
            time.sleep(0.3)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)
    assert out.read_text().split()[0] == job_id
    assert json.loads(listed.stdout.splitlines()[0])["reason"] == "invalid_payload"
    [kept] = stored(store)  # the succeeded job's object is gone; the dead letter keeps its own
    assert kept != parked
    purged = conveyor("dlq", "purge", "--queue", queue, "--yes", env=env)
    assert purged.returncode == 0, purged.stderr
    assert "purged 1 entries; deleted 1 stored payloads" in purged.stdout
    assert stored(store) == []

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


async def test_publish_sends_a_payload_past_one_mib_to_the_s3_store(amqp: str, queue: str, tmp_path: Path) -> None:  # noqa: F811
    # The payload was parsed with the codec's 1 MiB default: every payload the store exists
    # for (up to CONVEYOR_PAYLOAD_MAX_BYTES, 64 MiB) was "oversize" before its upload.
    from tests.support.s3 import TEST_BUCKET, make_s3_store, remove_prefix

    store = await make_s3_store()
    try:
        big = tmp_path / "big.json"
        big.write_bytes(orjson.dumps({"seconds": 0, "notes": "n" * 2_000_000}))
        env = {"CONVEYOR_BROKER_URL": amqp, "CONVEYOR_PAYLOAD_STORE": f"s3://{TEST_BUCKET}/{store.prefix}",
               "CONVEYOR_S3_ENDPOINT_URL": store.endpoint_url or "", "CONVEYOR_S3_REGION": store.region,
               "CONVEYOR_S3_ACCESS_KEY": os.environ.get("CONVEYOR_S3_ACCESS_KEY", "conveyor"),
               "CONVEYOR_S3_SECRET_KEY": os.environ.get("CONVEYOR_S3_SECRET_KEY", "conveyor-secret")}
        published = conveyor("publish", "e2e.nap", "--payload", f"@{big}", "--queue", queue, env=env)
        assert published.returncode == 0, published.stderr
        job_id = json.loads(published.stdout)["job_id"]
        [parked] = [item async for item in store.list_objects()]
        assert parked.key.rpartition("/")[2].startswith(job_id) and parked.size == big.stat().st_size
    finally:
        await remove_prefix(store)


def test_publish_honours_a_raised_message_limit_without_a_store(tmp_path: Path) -> None:
    # Both the parser and the producer kept the 1 MiB default whatever CONVEYOR_MAX_MESSAGE_BYTES said.
    payload = tmp_path / "two-mib.json"
    payload.write_bytes(orjson.dumps({"seconds": 0, "notes": "n" * 2_000_000}))
    env = {"CONVEYOR_BROKER_URL": "memory://", "CONVEYOR_MAX_MESSAGE_BYTES": str(4 * 1024 * 1024)}
    env_without_store = {k: v for k, v in os.environ.items() if k != "CONVEYOR_PAYLOAD_STORE"}
    result = subprocess.run([sys.executable, "-m", "conveyor", "publish", "e2e.nap", "--payload", f"@{payload}"],
                            cwd=ROOT, env={**env_without_store, **env}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["confirmed"] is True

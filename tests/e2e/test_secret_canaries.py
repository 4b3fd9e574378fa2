"""Canary secrets, planted everywhere a secret can be configured, found in no output.

A real RabbitMQ user whose password is a canary, a canary S3 secret key (so fetching a claim
check fails: an error path), a canary idempotency-store URL password, and a handler that logs
and raises all of them. The worker runs at DEBUG with JSON logs; then every channel an
operator or an attacker could read is searched: the worker's stdout and stderr (once with the
variables, once with ``*_FILE``), ``/metrics``, ``conveyor status``, ``dlq list`` and
``dlq show``, every page of ``conveyor console`` (HTML and JSON, each dead letter in full), the
raw dead letters in the broker, the errors of a broker on a wrong port and
of a PostgreSQL refusing the canary password, the ``--broker`` flag's warning, and the worker's
command line. (``/proc/<pid>/environ`` holds the variables by design: out of scope.)
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yarl

from conveyor.common.transport.rabbitmq import RabbitMQTransport
from tests.support.backends import require_env
from tests.support.ports import free_port
from tests.support.rabbitmq_admin import add_scratch_vhost, delete_vhost, rabbitmqctl, user_url

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.e2e.canary_app:jobs"
QUEUE = "canary.jobs"


@dataclass
class Canaries:
    broker: str = field(default_factory=lambda: f"CNRYbroker{uuid.uuid4().hex[:16]}")
    s3: str = field(default_factory=lambda: f"CNRYs3key{uuid.uuid4().hex[:16]}")
    idempotency: str = field(default_factory=lambda: f"CNRYidem{uuid.uuid4().hex[:16]}")

    def found_in(self, text: str) -> list[str]:
        # The random cores too: a secret cut in half must not slip through.
        return [value for value in (self.broker, self.s3, self.idempotency) if value in text or value[-16:] in text]


@dataclass
class Setup:
    canaries: Canaries
    broker_url: str  # the canary user's
    admin_url: str
    vhost: str


@dataclass
class Outputs:
    """Every text the test saw, by where it came from."""

    texts: dict[str, str] = field(default_factory=dict)

    def add(self, label: str, text: str | bytes) -> str:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        self.texts[label] = self.texts.get(label, "") + text
        return text


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    amqp = require_env("CONVEYOR_AMQP_URL")
    canaries = Canaries()
    vhost = await add_scratch_vhost(amqp, "conveyor-canary")
    user = f"canary-{uuid.uuid4().hex[:8]}"
    admin = yarl.URL(amqp)
    try:
        await rabbitmqctl("add_user", user, canaries.broker)
        await rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield Setup(canaries, user_url(amqp, user, canaries.broker, vhost),
                    user_url(amqp, admin.user or "guest", admin.password or "guest", vhost), vhost)
    finally:
        await delete_vhost(vhost)
        await rabbitmqctl("delete_user", user)


def base_env(tmp_path: Path) -> dict[str, str]:
    # Nothing inherited from the test run's CONVEYOR_*: each run says what it uses.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    return {**env, "PYTHONPATH": str(ROOT), "E2E_QUEUE": QUEUE, "CONVEYOR_LOG_LEVEL": "DEBUG",
            "CONVEYOR_LOG_FORMAT": "json", "CONVEYOR_PAYLOAD_STORE": f"s3://conveyor-test/canary-{tmp_path.name}",
            "CONVEYOR_S3_ENDPOINT_URL": require_env("CONVEYOR_S3_URL"), "CONVEYOR_S3_ACCESS_KEY": "conveyor",
            "CONVEYOR_PAYLOAD_THRESHOLD_BYTES": "1024", "CONVEYOR_METRICS_INTERVAL": "0.5"}


def run(outputs: Outputs, label: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=90)
    outputs.add(f"{label} stdout", result.stdout)
    outputs.add(f"{label} stderr", result.stderr)
    return result


class WorkerProcess:
    def __init__(self, outputs: Outputs, label: str, env: dict[str, str], tmp_path: Path, port: int) -> None:
        self.outputs, self.label = outputs, label
        self.stdout, self.stderr = tmp_path / f"{label}.out", tmp_path / f"{label}.err"
        with self.stdout.open("w") as out, self.stderr.open("w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "conveyor", "worker", APP, "--http-port", str(port), "--grace-period", "5"],
                cwd=ROOT, env=env, stdout=out, stderr=err,
            )
        self.cmdline = ""

    def wait_started(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while "consuming" not in self.stdout.read_text():
            assert self.process.poll() is None, f"worker exited: {self.stderr.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.1)
        self.cmdline = Path(f"/proc/{self.process.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        self.outputs.add(f"{self.label} /proc/pid/cmdline", self.cmdline)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.outputs.add(f"{self.label} stdout", self.stdout.read_text())
        self.outputs.add(f"{self.label} stderr", self.stderr.read_text())
        return code


async def dead_letters(admin_url: str) -> int:
    async with RabbitMQTransport(admin_url, connect_timeout=5) as admin:
        return await admin.depth(f"{QUEUE}.dlq")


async def wait_for_dead_letters(setup: Setup, count: int, worker: WorkerProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while await dead_letters(setup.admin_url) < count:
        assert worker.process.poll() is None, f"worker exited: {worker.stderr.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"fewer than {count} dead letters after {timeout}s"
        await asyncio.sleep(0.2)


async def raw_dead_letters(admin_url: str) -> list[bytes]:
    """Every dead letter's bytes as stored in the broker (fetched, then given back)."""
    async with RabbitMQTransport(admin_url, connect_timeout=5) as admin:
        bodies = []
        while (delivery := await admin.get(f"{QUEUE}.dlq")) is not None:
            bodies.append(delivery.body + json.dumps(delivery.headers).encode())
        return bodies  # closing the transport returns them all


def console_pages(outputs: Outputs, env: dict[str, str], tmp_path: Path, entry_ids: list[str]) -> dict[str, str]:
    """Every page of a console on the canary user's broker: path → text (also added to ``outputs``)."""
    port = free_port()
    out, err = tmp_path / "console.out", tmp_path / "console.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "conveyor", "console", "--queue", QUEUE, "--app", APP,
                                    "--port", str(port)], cwd=ROOT, env=env, stdout=stdout, stderr=stderr)
    pages: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 60
        while "listening on" not in out.read_text():
            assert process.poll() is None, f"the console exited: {err.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the console did not start"
            time.sleep(0.1)
        paths = ["/", "/overview/live", "/api/overview", f"/dead-letters?queue={QUEUE}", f"/api/dead-letters?queue={QUEUE}",
                 *(f"/dead-letters/{QUEUE}/{entry}" for entry in entry_ids), f"/dead-letters/{QUEUE}/no-such-entry"]
        for path in paths:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
                    pages[path] = outputs.add(f"console {path}", response.read())
            except urllib.error.HTTPError as exc:
                pages[path] = outputs.add(f"console {path}", exc.read())
    finally:
        process.terminate()
        process.wait(timeout=30)
        outputs.add("console stdout", out.read_text())
        outputs.add("console stderr", err.read_text())
    return pages


def scrape(outputs: Outputs, label: str, port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return outputs.add(label, response.read())


async def test_canary_secrets_appear_in_no_output(setup: Setup, tmp_path: Path) -> None:
    canaries, outputs = setup.canaries, Outputs()
    env = {**base_env(tmp_path), "CONVEYOR_BROKER_URL": setup.broker_url,
           "CONVEYOR_IDEMPOTENCY_URL": f"memory://keys:{canaries.idempotency}@local/",
           "CONVEYOR_S3_SECRET_KEY": canaries.s3}
    # The publisher has the real S3 key: it parks a payload that the worker (canary key) cannot fetch.
    publisher = {**env, "CONVEYOR_S3_SECRET_KEY": os.environ.get("CONVEYOR_S3_SECRET_KEY", "conveyor-secret")}
    blob = tmp_path / "blob.json"
    blob.write_text(json.dumps({"data": "b" * 4096}))

    # -- run 1: secrets in variables -----------------------------------------------------------
    port = free_port()
    worker = WorkerProcess(outputs, "worker(env)", env, tmp_path, port)
    try:
        await asyncio.to_thread(worker.wait_started)
        for args in (["canary.leak", "--payload", '{"note": "n"}'], ["canary.blob", "--payload", f"@{blob}"]):
            published = await asyncio.to_thread(run, outputs, "publish", publisher, "publish", *args, "--app", APP)
            assert published.returncode == 0, published.stderr
        await wait_for_dead_letters(setup, 2, worker)
        await asyncio.sleep(0.6)  # a queue-depth sample ran
        metrics = await asyncio.to_thread(scrape, outputs, "metrics(env)", port)
        status = await asyncio.to_thread(run, outputs, "status", env, "status", "--queue", QUEUE, "--worker",
                                         f"http://127.0.0.1:{port}", "--interval", "0.2", "--json")
    finally:
        assert worker.stop() == 0, worker.stderr.read_text()[-3000:]
    listed = await asyncio.to_thread(run, outputs, "dlq list", env, "dlq", "list", "--queue", QUEUE, "--json")
    table = await asyncio.to_thread(run, outputs, "dlq list table", env, "dlq", "list", "--queue", QUEUE)
    entries = [json.loads(line) for line in listed.stdout.splitlines()]
    shown = {entry["job_type"]: await asyncio.to_thread(run, outputs, "dlq show", env, "dlq", "show",
                                                        entry["dead_letter_id"], "--queue", QUEUE)
             for entry in entries}
    for body in await raw_dead_letters(setup.admin_url):
        outputs.add("raw dead letters", body)
    pages = await asyncio.to_thread(console_pages, outputs, env, tmp_path, [e["dead_letter_id"] for e in entries])

    # -- run 2: secrets in files ---------------------------------------------------------------
    files = {}
    for name, value in (("BROKER_URL", setup.broker_url), ("S3_SECRET_KEY", canaries.s3),
                        ("IDEMPOTENCY_URL", f"memory://keys:{canaries.idempotency}@local/")):
        path = tmp_path / name.lower()
        path.write_text(value + "\n")
        files[f"CONVEYOR_{name}_FILE"] = str(path)
    file_env = {**base_env(tmp_path), **files}
    port = free_port()
    worker = WorkerProcess(outputs, "worker(files)", file_env, tmp_path, port)
    try:
        await asyncio.to_thread(worker.wait_started)
        published = await asyncio.to_thread(run, outputs, "publish(files)", file_env, "publish", "canary.leak",
                                            "--payload", '{"note": "f"}', "--app", APP)
        assert published.returncode == 0, published.stderr
        await wait_for_dead_letters(setup, 3, worker)
        await asyncio.to_thread(scrape, outputs, "metrics(files)", port)
    finally:
        assert worker.stop() == 0, worker.stderr.read_text()[-3000:]

    # -- error paths ---------------------------------------------------------------------------
    closed = free_port()
    wrong_port = str(yarl.URL(setup.broker_url).with_port(closed))
    for command in (["worker", APP, "--http-port", "0"], ["dlq", "list", "--queue", QUEUE],
                    ["publish", "canary.leak", "--payload", '{"note": "x"}', "--queue", QUEUE]):
        failed = await asyncio.to_thread(run, outputs, f"wrong port {command[0]}",
                                         {**env, "CONVEYOR_BROKER_URL": wrong_port}, *command)
        assert failed.returncode != 0
        assert "cannot connect to amqp://canary-" in failed.stderr and ":***@" in failed.stderr
    database = yarl.URL(require_env("CONVEYOR_DATABASE_URL"))
    refused_db = str(database.with_password(canaries.idempotency))
    failed = await asyncio.to_thread(run, outputs, "wrong db password", {**env, "CONVEYOR_IDEMPOTENCY_URL": refused_db},
                                     "worker", APP, "--http-port", "0")
    assert failed.returncode != 0 and "IdempotencyStoreUnavailable" in failed.stderr
    flagged = await asyncio.to_thread(run, outputs, "--broker flag", base_env(tmp_path), "dlq", "list",
                                      "--queue", QUEUE, "--broker", setup.broker_url)
    assert flagged.returncode == 0, flagged.stderr
    assert "carries a credential" in flagged.stderr

    # -- every channel was exercised, and masked -----------------------------------------------
    logs = outputs.texts["worker(env) stderr"]
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert any(line.get("logger") == "canary.app" and "***" in line["msg"] for line in lines), "the leak was logged"
    assert any(line["msg"] == "job dead-lettered" for line in lines)
    assert any(line["level"] == "debug" for line in lines)
    assert 'conveyor_jobs_dead_lettered_total{' in metrics
    assert status.returncode == 0 and json.loads(status.stdout)["queues"][0]["dead_letters"] == 2
    assert table.returncode == 0 and len(entries) == 2
    reasons = {entry["job_type"]: entry for entry in entries}
    assert "***" in reasons["canary.leak"]["error_message"]
    assert reasons["canary.blob"]["error_type"] == "PayloadStoreUnavailable"
    assert all(result.returncode == 0 for result in shown.values())
    assert "RuntimeError: cannot connect to *** (keys ***, s3 ***)" in shown["canary.leak"].stdout  # traceback
    assert worker.cmdline and "--http-port" in worker.cmdline
    leak_page = pages[f"/dead-letters/{QUEUE}/{reasons['canary.leak']['dead_letter_id']}"]
    assert "RuntimeError" in leak_page and "cannot connect to ***" in leak_page  # the console showed it, masked
    assert json.loads(pages["/api/overview"])["queues"][0]["dead_letters"] == 2
    assert "amqp://canary-" in pages["/"] and ":***@" in pages["/"]  # the broker, by its masked URL

    leaks = {label: found for label, text in outputs.texts.items() if (found := canaries.found_in(text))}
    assert not leaks, f"canary secrets leaked into: {sorted(leaks)}"

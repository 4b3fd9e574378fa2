"""Real brokers, a real worker and console (subprocesses), and Debian's chromium via Playwright.

The browser is launched once per module (headless, ``executable_path``: Playwright's own
download is not reachable here); each test gets a fresh context (cookies) at 1280×800.
Screenshots go to var/console-screenshots/ (git-ignored), the test artifacts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from conveyor.common.transport.factory import transport_from_url
from conveyor.consumer.ops.dead_letters import DeadLetters
from conveyor.producer.producer import Producer
from tests.e2e.console.app import JOB, Resize, make_jobs
from tests.support.backends import require_env
from tests.support.ports import free_port

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[3]
SHOTS = ROOT / "var" / "console-screenshots"
APP = "tests.e2e.console.app:jobs"


def chromium() -> str:
    path = os.environ.get("CONVEYOR_CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.fail("no chromium: run scripts/test (scripts/services/chromium.sh up installs it) "
                    "or export CONVEYOR_CHROMIUM", pytrace=False)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    opened = context.new_page()
    opened.set_default_timeout(15_000)
    return opened


def shoot(page: Page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run broker calls beside Playwright's sync API, whose event loop owns this thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@dataclass
class Process:
    """A ``python -m conveyor …`` subprocess, its output in files."""

    args: list[str]
    env: dict[str, str]
    tmp: Path
    name: str
    process: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.out, self.err = self.tmp / f"{self.name}.out", self.tmp / f"{self.name}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "conveyor", *self.args], cwd=ROOT, env=self.env,
                                            stdout=out, stderr=err)

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.out.read_text() + self.err.read_text():
            assert self.process.poll() is None, f"{self.name} exited: {self.err.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{self.name} did not say {text!r}: {self.err.read_text()[-2000:]}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Stack:
    """One work queue on a real broker with a worker and a console watching it."""

    broker: str
    broker_url: str
    queue: str
    out: Path
    tmp: Path
    env: dict[str, str]
    processes: list[Process] = field(default_factory=list)
    worker_port: int = 0

    def start_worker(self) -> None:
        self.worker_port = free_port()
        worker = Process(["worker", APP, "--http-port", str(self.worker_port)], self.env, self.tmp, "worker")
        self.processes.append(worker)
        worker.wait_for("consuming")

    def start_console(self, *extra: str, name: str = "console") -> str:
        port = free_port()
        args = ["console", "--queue", self.queue, "--app", APP, "--port", str(port), "--refresh", "0.5", *extra]
        if self.worker_port:
            args += ["--worker", f"http://127.0.0.1:{self.worker_port}"]
        console = Process(args, self.env, self.tmp, name)
        self.processes.append(console)
        console.wait_for("listening on")
        return f"http://127.0.0.1:{port}"

    def publish(self, *widths: int) -> list[str]:
        async def go() -> list[str]:
            async with Producer.for_registry(transport_from_url(self.broker_url), make_jobs(self.queue)) as producer:
                return [(await producer.publish(JOB, Resize(image_id=n, width=w))).job_id for n, w in enumerate(widths)]

        return run_async(go())

    def dead_letter_depth(self) -> int:
        async def go() -> int:
            async with transport_from_url(self.broker_url) as transport:
                return await DeadLetters(transport, self.queue).depth()

        return run_async(go())

    def wait_dead_letters(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while (depth := self.dead_letter_depth()) != count:
            assert time.monotonic() < deadline, (f"{depth} dead letters, not {count}, after {timeout}s; logs: "
                                                 + " | ".join(p.err.read_text()[-1500:] for p in self.processes))
            time.sleep(0.2)

    def succeeded(self) -> list[str]:
        return self.out.read_text().split() if self.out.exists() else []

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()

        async def clean() -> None:
            async with transport_from_url(self.broker_url) as transport:
                await transport.delete(self.queue)

        run_async(clean())


@pytest.fixture(params=["rabbitmq", "pulsar"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    url = require_env({"rabbitmq": "CONVEYOR_AMQP_URL", "pulsar": "CONVEYOR_PULSAR_URL"}[request.param])
    queue = f"e2e.console.{uuid.uuid4().hex[:10]}"
    out = tmp_path / "succeeded.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update({"PYTHONPATH": str(ROOT), "CONVEYOR_BROKER_URL": url, "E2E_QUEUE": queue, "E2E_OUT": str(out),
                "CONVEYOR_METRICS_INTERVAL": "0.5"})
    built = Stack(request.param, url, queue, out, tmp_path, env)
    try:
        yield built
    finally:
        built.close()

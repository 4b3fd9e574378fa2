"""Conveyor beside an application whose own modules are called ``schemas``, ``common`` and
``producer``: the application's names resolve to its own files, Conveyor's to ``conveyor.*``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from tests.support.backends import require_env

APP_JOBS = '''
import os
from pathlib import Path

from pydantic import BaseModel

import common
import producer as app_producer
import schemas
from conveyor import JobContext, JobRegistry

jobs = JobRegistry()
QUEUE = os.environ.get("HOSTILE_QUEUE", "hostile")


def own_files() -> dict[str, str]:
    return {m.__name__: m.__file__ for m in (schemas, common, app_producer)}


@jobs.job("hostile.ping", queue=QUEUE)
async def ping(payload: schemas.UserOut, ctx: JobContext) -> None:
    Path(os.environ["HOSTILE_OUT"]).write_text(
        __import__("json").dumps({"job_id": ctx.job_id, "name": payload.name, "files": own_files(),
                                  "helper": common.HELPER, "made": app_producer.make()})
    )
'''

APP_FILES = {
    "schemas.py": "from pydantic import BaseModel\n\n\nclass UserOut(BaseModel):\n    name: str\n",
    "common/__init__.py": 'HELPER = "the app\'s own common"\n',
    "producer.py": 'def make() -> str:\n    return "the app\'s own producer"\n',
    "jobs.py": APP_JOBS,
    "in_process.py": textwrap.dedent('''
        import asyncio

        from conveyor import MemoryBroker, MemoryTransport, Producer, Worker
        from jobs import QUEUE, jobs
        import schemas


        async def main() -> None:
            broker = MemoryBroker()
            async with Producer.for_registry(MemoryTransport(broker), jobs) as producer:
                await producer.publish("hostile.ping", schemas.UserOut(name="ada"))
            async with MemoryTransport(broker) as transport, Worker(transport, jobs) as worker:
                await broker.join(QUEUE)
            assert worker.counts["succeeded"] == 1, dict(worker.counts)


        asyncio.run(main())
    '''),
}


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    for name, text in APP_FILES.items():
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text(text)
    return app


def _env(app: Path, **extra: str) -> dict[str, str]:
    # No PYTHONPATH to the repository: Conveyor comes from the installed package only.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "HOSTILE_OUT": str(app / "out.json"), **extra}


def _check_outcome(app: Path) -> dict[str, object]:
    out = json.loads((app / "out.json").read_text())
    assert out["name"] == "ada"
    assert out["helper"] == "the app's own common"
    assert out["made"] == "the app's own producer"
    for name, file in out["files"].items():
        assert Path(file).resolve().is_relative_to(app.resolve()), f"{name} resolved to {file}"
    return out


def test_app_with_its_own_schemas_common_and_producer_runs_on_memory(app_dir: Path) -> None:
    result = subprocess.run([sys.executable, "in_process.py"], cwd=app_dir, env=_env(app_dir),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    _check_outcome(app_dir)


def test_app_with_its_own_schemas_common_and_producer_runs_on_rabbitmq(app_dir: Path) -> None:
    amqp = require_env("CONVEYOR_AMQP_URL")
    queue = f"hostile.{uuid.uuid4().hex[:10]}"
    env = _env(app_dir, HOSTILE_QUEUE=queue, CONVEYOR_BROKER_URL=amqp)
    worker = subprocess.Popen([sys.executable, "-m", "conveyor", "worker", "jobs:jobs", "--http-port", "0"],
                              cwd=app_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        published = subprocess.run(
            [sys.executable, "-m", "conveyor", "publish", "hostile.ping", "--app", "jobs:jobs",
             "--payload", '{"name": "ada"}'],
            cwd=app_dir, env=env, capture_output=True, text=True, timeout=60)
        assert published.returncode == 0, published.stderr
        job_id = json.loads(published.stdout)["job_id"]
        deadline = time.monotonic() + 60
        while not (app_dir / "out.json").exists() and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.1)
        assert worker.poll() is None, worker.communicate()[1][-2000:]
        assert _check_outcome(app_dir)["job_id"] == job_id
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 0, stderr[-2000:]

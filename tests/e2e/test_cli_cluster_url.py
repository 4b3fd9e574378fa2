"""The CLI with a multi-host (cluster) AMQP URL: the first host that answers serves it."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.e2e.test_cli import ROOT, amqp, conveyor, queue  # noqa: F401 - fixtures
from tests.support.backends import require_env
from tests.support.e2e_worker import start_e2e_worker, stop_after_first_job
from tests.support.ports import free_port


@pytest.fixture
def cluster_style_url() -> str:
    """``amqp://user:pass@127.0.0.1:<dead>,<the broker>/``: a first node that is down."""
    url = require_env("CONVEYOR_AMQP_URL")
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return f"{parts.scheme}://{userinfo}@127.0.0.1:{free_port()},{hostport}{parts.path or '/'}"


def test_publish_status_and_worker_go_to_the_next_host_when_the_first_is_down(
    cluster_style_url: str, queue: str, tmp_path: Path,  # noqa: F811 - the fixture imported above
) -> None:
    out = tmp_path / "done.txt"
    env = {"E2E_QUEUE": queue, "E2E_OUT": str(out), "CONVEYOR_BROKER_URL": cluster_style_url,
           "PYTHONPATH": str(ROOT)}
    published = conveyor("publish", "e2e.nap", "--payload", '{"seconds": 0.1}', "--app", "tests.e2e.app:jobs", env=env)
    assert published.returncode == 0, published.stderr
    job_id = json.loads(published.stdout)["job_id"]
    status = conveyor("status", "--json", "--queue", queue, env=env)
    assert status.returncode == 0, status.stderr
    worker = start_e2e_worker(env, "--concurrency", "2", "--http-port", "0")
    _, stderr = stop_after_first_job(worker, out)
    assert worker.returncode == 0, stderr
    assert out.read_text().split()[0] == job_id
    assert "conveyor:conveyor@" not in stderr  # the password of the multi-host URL is masked in logs


def test_a_malformed_cluster_url_is_a_one_line_error_without_the_password() -> None:
    result = conveyor("status", "--queue", "q", env={"CONVEYOR_BROKER_URL": "amqp://app:hunter22@h1:5672,,h3/"})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "hunter22" not in result.stderr and "malformed host" in lines[0]

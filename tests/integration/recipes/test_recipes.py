"""The FastAPI, Flask and plain-script recipes of the README, against the real RabbitMQ: the job
each request or run publishes is in the queue, and a refused job is the producer's error."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading

from fastapi.testclient import TestClient

from conveyor.common.errors import InvalidPayload
from conveyor.producer.sync_producer import SyncProducer
from tests.e2e.test_cli import ROOT
from tests.integration.recipes import fastapi_recipe, flask_recipe
from tests.integration.recipes.jobs import make_jobs
from tests.support.drain import drain_ids


def test_fastapi_lifespan_opens_one_producer_and_each_request_publishes(amqp_url: str, queue_name: str) -> None:
    app = fastapi_recipe.create_app(amqp_url, make_jobs(queue_name))
    with TestClient(app) as client:  # runs the lifespan: connect on startup, close on shutdown
        producer = app.state.producer
        ids = [client.post("/signup", json={"email": f"{n}@example.com"}).json()["job_id"] for n in range(5)]
        assert client.post("/signup", json={"mail": "x"}).status_code == 422  # FastAPI's own validation
        assert app.state.producer is producer
    assert sorted(asyncio.run(drain_ids(amqp_url, queue_name, 5))) == sorted(ids)


def test_flask_threads_share_one_sync_producer(amqp_url: str, queue_name: str) -> None:
    with SyncProducer.from_url(amqp_url, jobs=make_jobs(queue_name)) as producer:
        app = flask_recipe.create_app(producer)
        ids: list[str] = []

        def requests(n: int) -> None:
            client = app.test_client()
            for i in range(5):
                response = client.post("/signup", json={"email": f"{n}-{i}@example.com"})
                ids.append(response.get_json()["job_id"])

        threads = [threading.Thread(target=requests, args=(n,)) for n in range(4)]  # a threaded WSGI server
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        try:
            producer.publish("email.welcome", {"mail": "x"})
            raise AssertionError("an invalid payload was published")
        except InvalidPayload:
            pass
    assert len(ids) == 20
    assert sorted(asyncio.run(drain_ids(amqp_url, queue_name, 20))) == sorted(ids)


def test_a_plain_script_publishes_and_exits(amqp_url: str, queue_name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.integration.recipes.script_recipe", "a@example.com", "b@example.com"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "CONVEYOR_BROKER_URL": amqp_url, "RECIPE_QUEUE": queue_name, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    ids = result.stdout.split()
    assert len(ids) == 2
    assert sorted(asyncio.run(drain_ids(amqp_url, queue_name, 2))) == sorted(ids)

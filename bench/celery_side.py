"""Optional Celery row: the same jobs on the same broker, configured like the others.

Quorum queue, publisher confirms (``confirm_publish``), ack after the task
(``task_acks_late``), one worker process (solo pool) with 64 prefetched, no result backend.
Worker subprocess: ``python -m bench.celery_side '<json spec>'``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import Any

from celery import Celery
from celery.signals import worker_ready

from bench.support import emit, ready

__all__ = ["make_app", "publish_sequential"]

TASK = "bench.noop"


def make_app(url: str, queue: str, prefetch: int = 64) -> Celery:
    app = Celery("bench", broker=url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_default_exchange=queue,
        task_default_routing_key=queue,
        task_default_queue_type="quorum",
        task_acks_late=True,
        task_ignore_result=True,
        result_backend=None,
        worker_prefetch_multiplier=prefetch,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


def publish_sequential(url: str, queue: str, n: int) -> float:
    """Seconds for ``n`` confirmed ``send_task`` calls (Celery's publish API is synchronous)."""
    app = make_app(url, queue)
    try:
        with app.producer_or_acquire() as producer:
            # Declare first (and warm the connection) outside the timed loop, as the others do.
            app.send_task(TASK, args=(-1, time.time()), producer=producer)
            started = time.perf_counter()
            for i in range(n):
                app.send_task(TASK, args=(i, time.time()), producer=producer)
            return time.perf_counter() - started
    finally:
        app.close()


def worker_main(spec: dict[str, Any]) -> None:
    n = int(spec["n"])
    app = make_app(spec["url"], spec["queue"], int(spec["prefetch"]))
    state = {"count": 0, "first": 0.0}

    @app.task(name=TASK)
    def noop(i: int, sent_at: float) -> None:
        if i < 0:  # the warm-up message from publish_sequential
            return
        if not state["first"]:
            state["first"] = time.perf_counter()
        state["count"] += 1
        if state["count"] == n:
            emit({"completed": n, "seconds": time.perf_counter() - state["first"]})
            # Leave time for the last late ack, then a warm shutdown.
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()

    @worker_ready.connect
    def _ready(**_: object) -> None:
        ready()

    app.worker_main(
        argv=[
            "worker",
            "--pool=solo",
            "--concurrency=1",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=WARNING",
            "-Q",
            spec["queue"],
        ]
    )


if __name__ == "__main__":
    worker_main(json.loads(sys.argv[1]))

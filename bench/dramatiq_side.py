"""Optional Dramatiq row: the same jobs on the same broker, configured like the others.

Quorum work queue (Dramatiq declares classic queues; a subclass adds ``x-queue-type``),
publisher confirms (``confirm_delivery=True``), Dramatiq's default middleware, one worker
process with 8 threads and 64 prefetched (``dramatiq_queue_prefetch``).
Worker subprocess: ``python -m bench.dramatiq_side '<json spec>'``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

__all__ = ["make_broker", "publish_sequential"]

ACTOR = "bench_noop"
THREADS = 8


def make_broker(url: str) -> Any:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    class QuorumRabbitmqBroker(RabbitmqBroker):
        def _build_queue_arguments(self, queue_name: str) -> dict[str, Any]:
            arguments: dict[str, Any] = super()._build_queue_arguments(queue_name)
            if not queue_name.endswith(".DQ"):
                arguments["x-queue-type"] = "quorum"
            return arguments

    return QuorumRabbitmqBroker(url=url, confirm_delivery=True)


def _actor(broker: Any, queue: str, fn: Any) -> Any:
    import dramatiq

    return dramatiq.actor(fn, actor_name=ACTOR, queue_name=queue, broker=broker, max_retries=0)


def publish_sequential(url: str, queue: str, n: int) -> float:
    broker = make_broker(url)
    actor = _actor(broker, queue, lambda i, sent_at: None)
    try:
        broker.declare_queue(queue, ensure=True)
        actor.send(-1, time.time())  # warm the connection outside the timed loop
        started = time.perf_counter()
        for i in range(n):
            actor.send(i, time.time())
        return time.perf_counter() - started
    finally:
        broker.close()


def worker_main(spec: dict[str, Any]) -> None:
    os.environ["dramatiq_queue_prefetch"] = str(spec["prefetch"])  # read when dramatiq.worker imports
    from dramatiq import Worker

    from bench.support import emit, ready

    n = int(spec["n"])
    broker = make_broker(spec["url"])
    lock = threading.Lock()
    state = {"count": 0, "first": 0.0, "last": 0.0}
    done = threading.Event()

    def noop(i: int, sent_at: float) -> None:
        if i < 0:
            return
        with lock:
            if not state["first"]:
                state["first"] = time.perf_counter()
            state["count"] += 1
            if state["count"] == n:
                state["last"] = time.perf_counter()
                done.set()

    _actor(broker, spec["queue"], noop)
    worker = Worker(broker, worker_threads=THREADS)
    worker.start()
    ready()
    finished = done.wait(float(spec["timeout"]))
    time.sleep(0.2)  # let the last acks go out
    worker.stop()
    broker.close()
    result: dict[str, Any] = {"completed": state["count"]}
    if finished:
        result["seconds"] = state["last"] - state["first"]
    emit(result)


if __name__ == "__main__":
    worker_main(json.loads(sys.argv[1]))

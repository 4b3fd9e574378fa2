"""What each of the worker's guarantees costs a drained job: ``python -m bench.ablation``.

Drains the same number of jobs (RabbitMQ, prefetch = concurrency) in a raw aiormq worker and
in Conveyor workers with one part switched off at a time, order reversed each round, and
prints the median worker CPU µs per job of each beside the raw loop's, as a ratio. It answers
issue 18's question "which guarantee stands between Conveyor and 1.25× the raw client?" with a
measurement instead of a guess.

The switches exist only here: ``worker_main`` patches the worker subprocess before it starts
(no user can turn them off, and none should):

* ``strict``     I-JSON check on the bytes (duplicate keys, number range, depth): orjson alone
* ``envelope``   envelope validation: ``Envelope.model_construct`` on the parsed dict
* ``payload``    payload validation against the job type's model: the raw dict
* ``metrics``    per-job Prometheus updates (start delay, settled counters, durations, CPU)
* ``middleware`` the consume chain (log context, CPU time, breaker): the handler alone
* ``crashguard`` the crash guard and its journal (``conveyor worker`` turns them on with its
                default state directory): as a Worker built without ``state_dir``
* ``all``        every one of the above

    python -m bench.ablation [--jobs 20000] [--prefetch 200] [--repeat 3] [--variants strict,all]

Each side drains the jobs it publishes itself, as in ``scripts/bench``: the raw loop its own
bodies (``{"i": …, "sent_at": …}``, ~220 bytes a delivery on the wire), Conveyor its envelopes
(~630 bytes). Until 2026-12-05 the raw loop drained Conveyor's envelopes here, so this ratio
and the benchmark's had different denominators. Measured in one run (interleaved, median of 3,
prefetch 64) the body makes no difference the noise shows: 89.2 µs a job on its own bodies,
87.2 on envelopes; but the two commands now ask the same question.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import statistics
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from bench.support import delete_queues, run_worker_process

VARIANTS = ("shipped", "strict", "envelope", "payload", "metrics", "middleware", "crashguard", "all")
URL = os.environ.get("CONVEYOR_AMQP_URL", "amqp://conveyor:conveyor@127.0.0.1:5672/")


def _switch_off(parts: set[str]) -> None:
    """Patch this (worker) process: the named parts do nothing from now on."""
    import orjson

    from conveyor.common import codec
    from conveyor.common.metrics import WorkerMetrics
    from conveyor.consumer import worker as worker_module
    from conveyor.schemas.envelope import Envelope, InlinePayload
    from conveyor.schemas.registry import SchemaRegistry

    every = "all" in parts
    if every or "crashguard" in parts:
        import bench.support

        cli_worker = bench.support.cli_worker

        @contextlib.contextmanager
        def without_guard(broker: str, prefetch: int, **overrides: Any) -> Iterator[tuple[Any, Any]]:
            with cli_worker(broker, prefetch, **overrides) as (config, redact):
                yield dataclasses.replace(config, state_dir=None), redact

        bench.support.cli_worker = without_guard  # type: ignore[assignment]
    if every or parts & {"strict", "envelope"}:
        # The two-step way, where the switches below act (the one pass does both at once).
        codec._envelope_at_once = lambda body: None
    if every or "strict" in parts:
        codec.strict_json_loads = lambda body, max_bytes=None: orjson.loads(body)  # type: ignore[assignment]
    if every or "envelope" in parts:

        def construct(model: Any, data: Any) -> Any:
            if model is not Envelope:
                return model.model_validate(data)
            fields = dict(data, payload=InlinePayload.model_construct(**data["payload"]))
            fields["created_at"] = datetime.fromisoformat(data["created_at"])
            return Envelope.model_construct(**fields)

        codec._validate = construct
    if every or "payload" in parts:
        SchemaRegistry.resolve = lambda self, job_type, version, data, target: data  # type: ignore[assignment, method-assign]
    if every or "metrics" in parts:
        WorkerMetrics.started = lambda self, queue, delay: None  # type: ignore[method-assign]
        WorkerMetrics.settled = lambda self, job_type, action, outcome: None  # type: ignore[method-assign]
    if every or "middleware" in parts:
        start = worker_module.Worker.start

        async def start_without_chain(self: Any) -> None:
            await start(self)
            self.processor._chain = self.processor._invoke

        worker_module.Worker.start = start_without_chain  # type: ignore[method-assign]


async def worker_main(spec: dict[str, Any]) -> None:
    """The worker subprocess (``bench.worker`` side ``conveyor-ablated``)."""
    _switch_off(set(spec.get("off", ())))
    from bench.conveyor import worker_main as conveyor_worker

    await conveyor_worker(spec)


async def _one(side: str, variant: str, n: int, prefetch: int) -> float:
    from bench import aiormq_raw, conveyor

    q = f"bench.ablation.{uuid.uuid4().hex[:8]}"
    try:
        if side == "aiormq":  # its own bodies, as in scripts/bench (see the module docstring)
            await aiormq_raw.prepublish(URL, q, n)
        else:
            await conveyor.declare(URL, q)
            await conveyor.prepublish(URL, q, n)
        spec: dict[str, Any] = {"side": side, "mode": "drain", "url": URL, "queue": q, "n": n,
                                "prefetch": prefetch, "timeout": 600, "off": [] if variant == "shipped" else [variant]}
        run = await run_worker_process("bench.worker", spec, timeout=660)
        if run.result.get("completed") != n:
            raise RuntimeError(f"{side}/{variant}: {run.result.get('completed')} of {n} jobs drained")
        return float(run.result["cpu_seconds"]) / n * 1e6
    finally:
        await delete_queues(URL, [q, f"{q}.dlq", *(f"{q}.retry.{t}" for t in ("50ms", "500ms", "5s"))])


async def run(n: int, prefetch: int, repeat: int, variants: list[str]) -> dict[str, list[float]]:
    runs = [("aiormq", "raw")] + [("conveyor-ablated", v) for v in variants]
    cpu: dict[str, list[float]] = {label: [] for _, label in runs}
    for round_ in range(repeat):
        for side, label in runs if round_ % 2 == 0 else runs[::-1]:
            cpu[label].append(await _one(side, label, n, prefetch))
            print(f"  {label:<11} {cpu[label][-1]:7.1f} µs/job", flush=True)
    return cpu


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=20_000)
    p.add_argument("--prefetch", type=int, default=200)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}")
    args = p.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variant(s): {', '.join(unknown)}")
    cpu = asyncio.run(run(args.jobs, args.prefetch, args.repeat, variants))
    raw = statistics.median(cpu["raw"])
    shipped = statistics.median(cpu["shipped"]) if "shipped" in cpu else None
    print(f"\nworker CPU per drained job, RabbitMQ, {args.jobs:,} jobs, prefetch {args.prefetch}, "
          f"median of {args.repeat}")
    print(f"{'variant':<26} {'µs/job':>8} {'÷ raw aiormq':>13} {'saved vs shipped':>17}")
    print(f"{'raw aiormq loop':<26} {raw:8.1f} {1.0:13.2f}")
    for variant in variants:
        value = statistics.median(cpu[variant])
        label = "Conveyor as shipped" if variant == "shipped" else f"Conveyor, {variant} off"
        saved = "" if shipped is None or variant == "shipped" else f"{shipped - value:+.1f}"
        print(f"{label:<26} {value:8.1f} {value / raw:13.2f} {saved:>17}")


if __name__ == "__main__":
    main()

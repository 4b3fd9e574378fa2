"""The scenarios. Each runs raw aio-pika and Conveyor back to back on fresh queues.

Every number is a rate or a latency measured the same way for both sides:

* publish   — ``n`` confirmed persistent publishes, sequential and with a window in flight,
              timed in the harness process around ``run_windowed``.
* drain     — ``n`` jobs published beforehand (not timed); one worker subprocess with the
              same prefetch/concurrency; timed from its first delivery to its ``n``-th ack.
* latency   — publishes paced at a fixed rate from the harness; the worker subprocess
              records ``handler start − send time`` (wall clock, same machine).
* retry     — ``n`` jobs each failing once: a confirmed copy into a 50 ms TTL queue that
              dead-letters back, then the original acked; timed to the ``n``-th success.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench import raw
from bench.support import delete_queues, percentile, run_worker_process

__all__ = ["Config", "Row", "Runner"]

SIDES = ("raw", "conveyor")
QUORUM = {"x-queue-type": "quorum"}
AT_LEAST_ONCE = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


@dataclass(frozen=True)
class Config:
    url: str
    jobs: int = 20_000
    window: int = 100
    prefetch: int = 64
    latency_rate: float = 500.0
    latency_seconds: float = 10.0
    retry_jobs: int = 5_000
    others: bool = True
    only: frozenset[str] = frozenset()


@dataclass
class Row:
    scenario: str
    metric: str
    unit: str
    raw: float | None
    conveyor: float | None
    better: str = "higher"  # or "lower"
    target: float | None = None  # minimum Conveyor/raw ratio (for "higher" rows)
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if not self.raw or self.conveyor is None:
            return None
        return self.conveyor / self.raw

    @property
    def meets_target(self) -> bool | None:
        if self.target is None or self.ratio is None:
            return None
        return self.ratio >= self.target

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "metric": self.metric,
            "unit": self.unit,
            "raw": self.raw,
            "conveyor": self.conveyor,
            "ratio_conveyor_over_raw": self.ratio,
            "better": self.better,
            "target_ratio": self.target,
            "meets_target": self.meets_target,
            "note": self.note,
            "detail": self.detail,
        }


class Runner:
    def __init__(self, config: Config, progress: Callable[[str], None]) -> None:
        self.config = config
        self.prefix = f"bench.{uuid.uuid4().hex[:8]}"
        self._say = progress
        self.rows: list[Row] = []
        self.others: list[dict[str, Any]] = []
        self.created: list[str] = []  # every queue name this run made (for cleanup)
        self.created_exchanges: list[str] = []

    def wants(self, name: str) -> bool:
        return not self.config.only or name in self.config.only

    def queue(self, label: str) -> str:
        return f"{self.prefix}.{label}"

    async def cleanup(self, *queues: str) -> None:
        from common.transport.rabbitmq import tier_queue

        from bench.conveyor import DELAY_TIERS

        names: list[str] = []
        for q in queues:
            names += [q, f"{q}.dlq", f"{q}.retry", f"{q}.DQ", f"{q}.XQ", *(tier_queue(q, t) for t in DELAY_TIERS)]
        await delete_queues(self.config.url, names, exchanges=list(queues))

    # -- 1. publish ------------------------------------------------------------------
    async def publish(self) -> None:
        from bench import conveyor

        n, url = self.config.jobs, self.config.url
        publishers: dict[str, Callable[[str, int, int], Awaitable[float]]] = {
            "raw": lambda q, n_, w: raw.publish_rate(url, q, n_, w),
            "conveyor": lambda q, n_, w: conveyor.publish_rate(url, q, n_, w),
        }
        for window, order in ((1, SIDES), (self.config.window, SIDES[::-1])):
            rates: dict[str, float] = {}
            for side in order:
                q = self.queue(f"publish.{side}.w{window}")
                self._say(f"publish: {side}, {n} jobs, window {window}")
                seconds = await publishers[side](q, n, window)
                rates[side] = n / seconds
                await self.cleanup(q)
            label = "sequential await" if window == 1 else f"{window} in flight"
            self.rows.append(Row("publish", label, "jobs/s", rates["raw"], rates["conveyor"], target=0.85))

    # -- 2. drain + 5. RSS ---------------------------------------------------------------
    async def drain(self) -> None:
        from bench import conveyor

        n, url, prefetch = self.config.jobs, self.config.url, self.config.prefetch
        results: dict[str, dict[str, Any]] = {}
        for side in SIDES:
            q = self.queue(f"drain.{side}")
            self._say(f"drain: publishing {n} {side} jobs (untimed)")
            if side == "raw":
                await raw.prepublish(url, q, n)
            else:
                await conveyor.prepublish(url, q, n)
            self._say(f"drain: {side} worker, prefetch/concurrency {prefetch}")
            spec = {"side": side, "mode": "drain", "url": url, "queue": q, "n": n, "prefetch": prefetch, "timeout": 600}
            run = await run_worker_process("bench.worker", spec, timeout=660)
            _require_complete(run.result, n, f"{side} drain")
            results[side] = run.result
            await self.cleanup(q)
        self.rows.append(
            Row(
                "drain",
                f"ack after no-op handler, prefetch {prefetch}",
                "jobs/s",
                n / results["raw"]["seconds"],
                n / results["conveyor"]["seconds"],
                target=0.85,
                note="Conveyor: metrics on, JSON logs at INFO",
            )
        )
        self.rows.append(
            Row(
                "worker RSS",
                f"peak RSS of the drain worker process ({n} jobs)",
                "MiB",
                results["raw"]["peak_rss_mib"],
                results["conveyor"]["peak_rss_mib"],
                better="lower",
                note="ru_maxrss of the worker subprocess",
            )
        )

    # -- 3. latency ------------------------------------------------------------------
    async def latency(self) -> None:
        from bench import conveyor

        url, rate = self.config.url, self.config.latency_rate
        n = max(1, round(rate * self.config.latency_seconds))
        stats: dict[str, dict[str, float]] = {}
        for side in SIDES:
            q = self.queue(f"latency.{side}")
            if side == "raw":
                await raw.declare_queue(url, q)
                paced = lambda q=q: raw.publish_paced(url, q, rate, n)  # noqa: E731
            else:
                await conveyor.declare(url, q)
                paced = lambda q=q: conveyor.publish_paced(url, q, rate, n)  # noqa: E731
            lag: dict[str, float] = {}

            async def publish(paced: Callable[[], Awaitable[float]] = paced) -> None:
                lag["worst"] = await paced()

            self._say(f"latency: {side}, {n} jobs at {rate:g}/s")
            spec = {
                "side": side,
                "mode": "latency",
                "url": url,
                "queue": q,
                "n": n,
                "prefetch": self.config.prefetch,
                "timeout": self.config.latency_seconds + 60,
            }
            run = await run_worker_process(
                "bench.worker", spec, timeout=self.config.latency_seconds + 120, after_ready=publish
            )
            _require_complete(run.result, n, f"{side} latency")
            values = run.result["latencies"]
            stats[side] = {
                "p50": percentile(values, 50) * 1000,
                "p99": percentile(values, 99) * 1000,
                "max": max(values) * 1000,
                "publisher_worst_lag_ms": lag.get("worst", 0.0) * 1000,
            }
            await self.cleanup(q)
        for key in ("p50", "p99"):
            self.rows.append(
                Row(
                    "latency",
                    f"publish → handler start, {key}, {rate:g} jobs/s × {self.config.latency_seconds:g} s",
                    "ms",
                    stats["raw"][key],
                    stats["conveyor"][key],
                    better="lower",
                    detail={"raw": stats["raw"], "conveyor": stats["conveyor"]} if key == "p99" else {},
                )
            )

    # -- 4. retry --------------------------------------------------------------------
    async def retry(self) -> None:
        from bench import conveyor

        n, url, prefetch = self.config.retry_jobs, self.config.url, self.config.prefetch
        ttl_ms = round(conveyor.RETRY_DELAY * 1000)
        # "raw-alo" mirrors Conveyor's tier queues exactly (at-least-once dead-lettering), to
        # separate the broker's cost of that safety choice from Conveyor's Python-side cost.
        variants = [
            ("raw", QUORUM, "raw"),
            ("conveyor", {}, "conveyor"),
            ("raw-alo", {**QUORUM, **AT_LEAST_ONCE}, "raw"),
        ]
        results: dict[str, float] = {}
        for key, retry_args, side in variants:
            q = self.queue(f"retry.{key}")
            if side == "raw":
                await raw.declare_retry_topology(url, q, f"{q}.retry", ttl_ms, retry_args)
                await raw.prepublish(url, q, n)
            else:
                await conveyor.declare(url, q)
                await conveyor.prepublish(url, q, n)
            self._say(f"retry: {key}, {n} jobs each failing once ({ttl_ms} ms delay)")
            spec = {
                "side": side,
                "mode": "retry",
                "url": url,
                "queue": q,
                "retry_queue": f"{q}.retry",
                "n": n,
                "prefetch": prefetch,
                "timeout": 600,
            }
            run = await run_worker_process("bench.worker", spec, timeout=660)
            _require_complete(run.result, n, f"{key} retry")
            results[key] = n / run.result["seconds"]
            await self.cleanup(q)
        self.rows.append(
            Row(
                "retry",
                f"fail once → {ttl_ms} ms TTL queue → succeed",
                "jobs/s",
                results["raw"],
                results["conveyor"],
                target=0.60,
                note="raw retry queue: quorum, default (at-most-once) dead-lettering",
            )
        )
        self.rows.append(
            Row(
                "retry",
                "same, raw retry queue with at-least-once dead-lettering (as Conveyor's tiers)",
                "jobs/s",
                results["raw-alo"],
                results["conveyor"],
                note="isolates the broker cost of x-dead-letter-strategy=at-least-once",
            )
        )

    # -- 6. Celery, Dramatiq ---------------------------------------------------------
    async def other_libraries(self) -> None:
        for name, module, probe in (("celery", "bench.celery_side", "celery"), ("dramatiq", "bench.dramatiq_side", "pika")):
            entry: dict[str, Any] = {"library": name}
            self.others.append(entry)
            if importlib.util.find_spec(name) is None or importlib.util.find_spec(probe) is None:
                entry["status"] = "not installed"
                continue
            try:
                await self._other(name, module, entry)
            except Exception as exc:  # noqa: BLE001 - an optional row never fails the run
                entry["status"] = f"failed: {type(exc).__name__}: {str(exc)[-300:]}"

    async def _other(self, name: str, module: str, entry: dict[str, Any]) -> None:
        import importlib

        n, url = self.config.jobs, self.config.url
        side = importlib.import_module(module)
        q = self.queue(name)
        self.created_exchanges.append(q)
        try:
            self._say(f"{name}: publishing {n} jobs (sequential, confirms on)")
            seconds = await asyncio.to_thread(side.publish_sequential, url, q, n)
            entry["publish_jobs_per_s"] = n / seconds
            self._say(f"{name}: drain worker")
            spec = {"url": url, "queue": q, "n": n, "prefetch": self.config.prefetch, "timeout": 600}
            run = await run_worker_process(module, spec, timeout=660)
            _require_complete(run.result, n, f"{name} drain")
            entry["drain_jobs_per_s"] = n / run.result["seconds"]
            entry["peak_rss_mib"] = run.result["peak_rss_mib"]
            entry["status"] = "ok"
        finally:
            await self.cleanup(q)

    async def run(self) -> None:
        steps = [
            ("publish", self.publish),
            ("drain", self.drain),
            ("latency", self.latency),
            ("retry", self.retry),
        ]
        for name, step in steps:
            if self.wants(name):
                started = time.perf_counter()
                await step()
                self._say(f"{name} done in {time.perf_counter() - started:.1f}s")
        if self.config.others and self.wants("others"):
            await self.other_libraries()


def _require_complete(result: dict[str, Any], n: int, what: str) -> None:
    if result.get("completed", 0) < n or "seconds" not in result:
        raise RuntimeError(f"{what}: only {result.get('completed', 0)} of {n} jobs completed before the timeout")


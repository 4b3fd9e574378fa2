"""The scenarios. Each runs raw aiormq, raw aio-pika and Conveyor back to back on fresh queues.

Every number is a rate or a latency measured the same way for both sides:

* publish   — ``n`` confirmed persistent publishes, sequential and with a window in flight,
              timed in the harness process around ``run_windowed``.
* drain     — ``n`` jobs published beforehand (not timed); one worker subprocess with the
              same prefetch/concurrency; timed from its first delivery to its ``n``-th ack.
* latency   — publishes paced at a fixed rate from the harness; the worker subprocess
              records ``handler start − send time`` (wall clock, same machine).
* retry     — ``n`` jobs each failing once: a confirmed copy into a 50 ms TTL queue that
              dead-letters back (at-least-once, as Conveyor's tiers), then the original
              acked; timed to the ``n``-th success.

Each set runs ``repeat`` times, the order reversed every other time (aiormq, aio-pika,
Conveyor, then Conveyor, aio-pika, aiormq, …) so that a drifting broker or a noisy neighbour
does not favour whichever side runs first; the median sample of each side is reported (rates,
latencies and CPU; RSS: the worst), and every sample is kept in the JSON. Drain, latency,
retry, CPU and RSS rows run once per prefetch (= concurrency) in ``Config.prefetches``.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench import aiormq_raw, raw
from bench.support import delete_queues, percentile, run_worker_process, wait_for_broker

__all__ = ["Config", "Row", "Runner"]

# "aiormq" is the bound the targets are measured against; "raw" is aio-pika (on Pulsar rows,
# pulsar-client). The order is the order each set runs in (reversed every other time).
SIDES = ("aiormq", "raw", "conveyor")
PULSAR_SIDES = ("raw", "conveyor")
QUORUM = {"x-queue-type": "quorum"}
AT_LEAST_ONCE = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
Sample = dict[str, Any]


@dataclass(frozen=True)
class Config:
    url: str
    jobs: int = 20_000
    window: int = 500
    prefetches: tuple[int, ...] = (64, 200)
    latency_rate: float = 500.0
    latency_seconds: float = 10.0
    retry_jobs: int = 5_000
    repeat: int = 2
    others: bool = True
    only: frozenset[str] = frozenset()
    brokers: frozenset[str] = frozenset({"rabbitmq"})
    pulsar_url: str = "pulsar://127.0.0.1:6650"
    soak_jobs: int = 0  # > 0: one Conveyor drain of this many jobs, RSS sampled for growth


@dataclass
class Row:
    scenario: str
    metric: str
    unit: str
    raw: float | None  # raw aio-pika (pulsar-client on the Pulsar rows)
    conveyor: float | None
    better: str = "higher"  # or "lower"
    # Target on Conveyor ÷ bound: a minimum for "higher" rows, a maximum for "lower" ones
    # (CPU per job); an absolute ceiling in ``unit`` when ``absolute`` (latency, RSS).
    target: float | None = None
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    aiormq: float | None = None  # raw aiormq, the bound (RabbitMQ rows)
    absolute: bool = False

    @property
    def bound(self) -> float | None:
        return self.aiormq if self.aiormq is not None else self.raw

    @property
    def ratio(self) -> float | None:
        """Conveyor ÷ the bound (raw aiormq; raw pulsar-client on Pulsar rows)."""
        return _ratio(self.conveyor, self.bound)

    @property
    def meets_target(self) -> bool | None:
        if self.target is None:
            return None
        value = self.conveyor if self.absolute else self.ratio
        if value is None:
            return None
        return value <= self.target if self.better == "lower" else value >= self.target

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "metric": self.metric,
            "unit": self.unit,
            "aiormq": self.aiormq,
            "raw": self.raw,
            "conveyor": self.conveyor,
            "ratio_conveyor_over_bound": self.ratio,
            "ratio_conveyor_over_raw": _ratio(self.conveyor, self.raw),
            "better": self.better,
            "target": self.target,
            "target_is_absolute": self.absolute,
            "meets_target": self.meets_target,
            "note": self.note,
            "detail": self.detail,
        }


def _ratio(value: float | None, bound: float | None) -> float | None:
    if not bound or value is None:
        return None
    return value / bound


def _median(samples: list[Sample], key: str) -> float | None:
    values = [s[key] for s in samples if s.get(key) is not None]
    return statistics.median(values) if values else None


class Runner:
    def __init__(self, config: Config, progress: Callable[[str], None]) -> None:
        self.config = config
        self.prefix = f"bench.{uuid.uuid4().hex[:8]}"
        self._say = progress
        self.rows: list[Row] = []
        self.others: list[dict[str, Any]] = []
        self._serial = 0
        self.interruptions = 0  # times the broker was unreachable between steps
        # Queues the publish scenario filled with exactly ``jobs`` messages, kept for the drain
        # scenario (saves re-publishing; the drain then reads what the publish rows wrote).
        self.filled: dict[str, list[str]] = {s: [] for s in SIDES}

    def wants(self, name: str) -> bool:
        if name == "soak":  # long: only when asked for
            return self.config.soak_jobs > 0
        return not self.config.only or name in self.config.only

    def queue(self, label: str) -> str:
        self._serial += 1
        return f"{self.prefix}.{label}.{self._serial}"

    def orders(self, sides: tuple[str, ...] = SIDES) -> list[tuple[str, ...]]:
        """ABC, CBA, …: each side goes first (and last) equally often."""
        return [sides if i % 2 == 0 else sides[::-1] for i in range(self.config.repeat)]

    async def cleanup(self, *queues: str) -> None:
        from bench.conveyor import DELAY_TIERS

        names: list[str] = []
        for q in queues:
            names += [q, f"{q}.dlq", f"{q}.retry", f"{q}.DQ", f"{q}.XQ", *(tier_queue(q, t) for t in DELAY_TIERS)]
        # Conveyor's per-queue exchanges (rabbitmq_topology), beside the Celery-side ones named q.
        exchanges = [*queues, *(f"{q}.{suffix}" for q in queues for suffix in ("jobs", "retry", "dlx"))]
        await delete_queues(self.config.url, names, exchanges=exchanges)

    def _pair_row(self, scenario: str, metric: str, samples: dict[str, list[Sample]], **kwargs: Any) -> Row:
        """A jobs/s row (medians) plus, as its detail, the median CPU µs per job of each side."""
        return Row(
            scenario,
            metric,
            "jobs/s",
            _median(samples["raw"], "rate"),
            _median(samples["conveyor"], "rate"),
            aiormq=_median(samples["aiormq"], "rate") if "aiormq" in samples else None,
            detail={"cpu_us_per_job": {s: _median(samples[s], "cpu_us") for s in samples}, "samples": samples},
            **kwargs,
        )

    def _cpu_row(self, scenario: str, metric: str, samples: dict[str, list[Sample]]) -> Row:
        """Worker CPU per job as its own row: Conveyor ÷ bound ≤ 1.25 (issue 18)."""
        cpu = {s: _median(samples[s], "cpu_us") for s in samples}
        return Row(
            scenario, metric, "µs", cpu["raw"], cpu["conveyor"], better="lower", target=1.25, aiormq=cpu.get("aiormq"),
            note="CPU time of the worker process over the timed span ÷ jobs (median)",
        )

    # -- 1. publish ------------------------------------------------------------------
    async def publish(self) -> None:
        from bench import conveyor

        n, url = self.config.jobs, self.config.url
        publishers: dict[str, Callable[[str, int, int], Awaitable[tuple[float, float]]]] = {
            "aiormq": lambda q, n_, w: aiormq_raw.publish_rate(url, q, n_, w),
            "raw": lambda q, n_, w: raw.publish_rate(url, q, n_, w),
            "conveyor": lambda q, n_, w: conveyor.publish_rate(url, q, n_, w),
        }
        for window in (1, self.config.window):
            samples: dict[str, list[Sample]] = {s: [] for s in SIDES}
            for order in self.orders():
                for side in order:
                    q = self.queue(f"publish.{side}.w{window}")
                    self._say(f"publish: {side}, {n} jobs, window {window}")
                    seconds, cpu_seconds = await publishers[side](q, n, window)
                    samples[side].append({"rate": n / seconds, "cpu_us": cpu_seconds / n * 1e6})
                    if self.wants("drain") and len(self.filled[side]) < self.config.repeat * len(self.config.prefetches):
                        self.filled[side].append(q)
                    else:
                        await self.cleanup(q)
            label = "one awaited confirm at a time" if window == 1 else f"{window} confirms in flight"
            self.rows.append(self._pair_row("publish", label, samples, target=None if window == 1 else 0.85))

    async def _prepublish(self, side: str, q: str, n: int) -> None:
        from bench import conveyor

        self._say(f"publishing {n} {side} jobs (untimed)")
        if side == "aiormq":
            await aiormq_raw.prepublish(self.config.url, q, n)
        elif side == "raw":
            await raw.prepublish(self.config.url, q, n)
        else:
            await conveyor.declare(self.config.url, q)
            await conveyor.prepublish(self.config.url, q, n)

    # -- 2. drain + CPU + RSS ------------------------------------------------------------
    async def drain(self) -> None:
        for prefetch in self.config.prefetches:
            await self._drain(prefetch)

    async def _drain(self, prefetch: int) -> None:
        n, url = self.config.jobs, self.config.url
        samples: dict[str, list[Sample]] = {s: [] for s in SIDES}
        for order in self.orders():
            for side in order:
                if self.filled[side]:
                    q = self.filled[side].pop(0)  # filled by the publish scenario
                else:
                    q = self.queue(f"drain.{side}")
                    await self._prepublish(side, q, n)
                self._say(f"drain: {side} worker, prefetch = concurrency = {prefetch}")
                spec = {"side": side, "mode": "drain", "url": url, "queue": q, "n": n, "prefetch": prefetch, "timeout": 600}
                run = await run_worker_process("bench.worker", spec, timeout=660)
                _require_complete(run.result, n, f"{side} drain")
                samples[side].append(
                    {"rate": n / run.result["seconds"], "cpu_us": _cpu_us(run.result, n), "peak_rss_mib": run.result["peak_rss_mib"],
                     **_start_rss(run.result)}
                )
                await self.cleanup(q)
                await asyncio.sleep(1.0)  # let the broker finish deleting a large quorum queue
        self.rows.append(
            self._pair_row(
                "drain",
                f"ack after no-op handler, prefetch {prefetch}",
                samples,
                target=0.85,
                note="Conveyor: metrics on, JSON logs at INFO",
            )
        )
        self.rows.append(self._cpu_row("worker CPU", f"per drained job, prefetch {prefetch}", samples))
        self.rows.append(_rss_row("worker RSS", f"{n:,}-job drain, prefetch {prefetch}", samples, target=45.0))

    # -- 3. latency ------------------------------------------------------------------
    async def latency(self) -> None:
        for prefetch in self.config.prefetches:
            await self._latency(prefetch)

    async def _latency(self, prefetch: int) -> None:
        rate = self.config.latency_rate
        n = max(1, round(rate * self.config.latency_seconds))
        samples: dict[str, list[Sample]] = {s: [] for s in SIDES}
        for order in self.orders():
            for side in order:
                samples[side].append(await self._latency_once(side, n, prefetch))
        for key, ceiling in (("p50", 1.0), ("p99", 3.0)):
            median = {s: _median(samples[s], key) for s in SIDES}
            self.rows.append(
                Row(
                    "latency",
                    f"publish → handler start, {key}, {rate:g} jobs/s, prefetch {prefetch}",
                    "ms",
                    median["raw"],
                    median["conveyor"],
                    better="lower",
                    target=ceiling,
                    absolute=True,
                    aiormq=median["aiormq"],
                    note="median of the samples",
                    detail={"samples": samples} if key == "p99" else {},
                )
            )

    async def _latency_once(self, side: str, n: int, prefetch: int) -> Sample:
        from bench import conveyor

        url, rate = self.config.url, self.config.latency_rate
        q = self.queue(f"latency.{side}")
        paced: Callable[[], Awaitable[float]]
        if side == "aiormq":
            await aiormq_raw.declare_queue(url, q)
            paced = lambda: aiormq_raw.publish_paced(url, q, rate, n)  # noqa: E731
        elif side == "raw":
            await raw.declare_queue(url, q)
            paced = lambda: raw.publish_paced(url, q, rate, n)  # noqa: E731
        else:
            await conveyor.declare(url, q)
            paced = lambda: conveyor.publish_paced(url, q, rate, n)  # noqa: E731
        lag: dict[str, float] = {}

        async def publish() -> None:
            lag["worst"] = await paced()

        self._say(f"latency: {side}, {n} jobs at {rate:g}/s, prefetch {prefetch}")
        spec = {
            "side": side,
            "mode": "latency",
            "url": url,
            "queue": q,
            "n": n,
            "prefetch": prefetch,
            "timeout": self.config.latency_seconds + 60,
        }
        run = await run_worker_process("bench.worker", spec, timeout=self.config.latency_seconds + 120, after_ready=publish)
        _require_complete(run.result, n, f"{side} latency")
        values = run.result["latencies"]
        await self.cleanup(q)
        return {
            "p50": percentile(values, 50) * 1000,
            "p99": percentile(values, 99) * 1000,
            "max": max(values) * 1000,
            "publisher_worst_lag_ms": lag.get("worst", 0.0) * 1000,
        }

    # -- 4. retry --------------------------------------------------------------------
    async def retry(self) -> None:
        for prefetch in self.config.prefetches:
            await self._retry(prefetch)

    async def _retry(self, prefetch: int) -> None:
        from bench import conveyor

        ttl_ms = round(conveyor.RETRY_DELAY * 1000)
        # Like with like: once the original is acked, the retry queue holds the job's only copy,
        # so the raw retry queue dead-letters at-least-once, as Conveyor's tiers do (RabbitMQ's
        # default, at-most-once, can drop that copy on its way back; the extra row shows it).
        tier_args = {**QUORUM, **AT_LEAST_ONCE}
        samples: dict[str, list[Sample]] = {s: [] for s in SIDES}
        for order in self.orders():
            for side in order:
                samples[side].append(await self._retry_once(side, tier_args, ttl_ms, prefetch))
        self.rows.append(
            self._pair_row(
                "retry",
                f"fail once → {ttl_ms} ms TTL queue → succeed, prefetch {prefetch}",
                samples,
                target=0.80,
                note="raw retry queue: quorum, at-least-once dead-lettering (as Conveyor's tiers)",
            )
        )
        # Once more with the raw retry queue on RabbitMQ's default (at-most-once) dead-lettering:
        # the broker's cost of at-least-once, apart from Conveyor's client-side cost.
        amo = await self._retry_once("aiormq", QUORUM, ttl_ms, prefetch)
        self.rows.append(
            Row(
                "retry",
                f"same, raw retry queue with at-most-once dead-lettering (RabbitMQ's default), prefetch {prefetch}",
                "jobs/s",
                None,
                _median(samples["conveyor"], "rate"),
                aiormq=amo["rate"],
                detail={"cpu_us_per_job": {"aiormq": amo["cpu_us"], "conveyor": _median(samples["conveyor"], "cpu_us")}},
                note="one aiormq sample; isolates the broker cost of x-dead-letter-strategy=at-least-once",
            )
        )

    async def _retry_once(self, side: str, retry_args: dict[str, Any], ttl_ms: int, prefetch: int) -> Sample:
        from bench import conveyor

        n, url = self.config.retry_jobs, self.config.url
        q = self.queue(f"retry.{side}")
        if side == "conveyor":
            await conveyor.declare(url, q)
        else:
            declare = aiormq_raw.declare_retry_topology if side == "aiormq" else raw.declare_retry_topology
            await declare(url, q, f"{q}.retry", ttl_ms, retry_args)
        await self._prepublish(side, q, n)
        self._say(f"retry: {side}, {n} jobs each failing once ({ttl_ms} ms delay), prefetch {prefetch}")
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
        _require_complete(run.result, n, f"{side} retry")
        await self.cleanup(q)
        return {"rate": n / run.result["seconds"], "cpu_us": _cpu_us(run.result, n)}

    # -- 5. soak: RSS over a long drain --------------------------------------------------
    async def soak(self) -> None:
        """One Conveyor drain of ``soak_jobs``, its RSS sampled every tenth of the run."""
        n, url, prefetch = self.config.soak_jobs, self.config.url, self.config.prefetches[-1]
        q = self.queue("soak.conveyor")
        await self._prepublish("conveyor", q, n)
        self._say(f"soak: conveyor worker draining {n} jobs, prefetch {prefetch}, RSS sampled")
        spec = {
            "side": "conveyor",
            "mode": "drain",
            "url": url,
            "queue": q,
            "n": n,
            "prefetch": prefetch,
            "timeout": 1800,
            "rss_every": max(1, n // 10),
        }
        run = await run_worker_process("bench.worker", spec, timeout=1900)
        _require_complete(run.result, n, "conveyor soak")
        await self.cleanup(q)
        rss = run.result["rss_samples"]  # [(jobs done, VmRSS MiB), …]
        half = [mib for done, mib in rss if done >= n // 2]
        growth = max(half) - min(half) if half else None
        self.rows.append(
            Row(
                "soak",
                f"RSS growth over the second half of a {n:,}-job drain, prefetch {prefetch}",
                "MiB",
                None,
                growth,
                better="lower",
                note="VmRSS sampled every tenth of the run: " + ", ".join(f"{mib:.1f}" for _, mib in rss),
                detail={"rss_samples": rss, "peak_rss_mib": run.result["peak_rss_mib"], "rate": n / run.result["seconds"]},
            )
        )

    # -- 5b. the ``conveyor worker`` command, 1 and 2 processes ------------------------
    async def processes(self) -> None:
        """Drains by the ``conveyor worker`` command itself (``--processes 1`` and ``2``, a
        subprocess as users run it) beside the raw aiormq loop, at the first prefetch per process;
        and the command's own peak RSS (``--processes 1``: no supervisor, the process that
        drains is the command's)."""
        from bench import processes

        n, url, prefetch = self.config.jobs, self.config.url, self.config.prefetches[0]
        sides = ("aiormq", "conveyor-1", "conveyor-2")
        samples: dict[str, list[Sample]] = {s: [] for s in sides}
        for order in self.orders(sides):
            for side in order:
                q = self.queue(f"processes.{side}")
                self._say(f"processes: {side}, {n} jobs, prefetch {prefetch} per process")
                if side == "aiormq":
                    sample = await processes.raw_sample(url, q, n, prefetch, side="aiormq")
                else:
                    sample = await processes.conveyor_sample(url, q, n, int(side[-1]), prefetch)
                samples[side].append({"rate": sample["jobs_per_s"], "cpu_us": sample["cpu_us_per_job"],
                                      "peak_rss_mib": sample["peak_rss_mib"],
                                      "processes_that_ran": sample["processes_that_ran"]})
                await self.cleanup(q)
                await asyncio.sleep(1.0)
        for count in (1, 2):
            side = f"conveyor-{count}"
            self.rows.append(Row(
                "processes", f"drain by `conveyor worker --processes {count}`, prefetch {prefetch} per process",
                "jobs/s", None, _median(samples[side], "rate"), aiormq=_median(samples["aiormq"], "rate"),
                note="the command as a subprocess; CPU summed over its worker processes",
                detail={"cpu_us_per_job": {"aiormq": _median(samples["aiormq"], "cpu_us"),
                                           "conveyor": _median(samples[side], "cpu_us")},
                        "samples": {s: samples[s] for s in ("aiormq", side)}},
            ))
        rss = {side: max(x["peak_rss_mib"] for x in runs) for side, runs in samples.items()}
        self.rows.append(Row(
            "command RSS", f"peak RSS of `conveyor worker`, {n:,}-job drain, prefetch {prefetch}", "MiB",
            None, rss["conveyor-1"], better="lower", target=45.0, absolute=True, aiormq=rss["aiormq"],
            note="VmHWM of the command's process (--processes 1); worst sample",
        ))

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
            except Exception as exc:
                entry["status"] = f"failed: {type(exc).__name__}: {str(exc)[-300:]}"

    async def _other(self, name: str, module: str, entry: dict[str, Any]) -> None:
        n, url = self.config.jobs, self.config.url
        side = importlib.import_module(module)
        q = self.queue(name)
        await self._broker_up()
        try:
            self._say(f"{name}: publishing {n} jobs (sequential, confirms on)")
            seconds = await asyncio.to_thread(side.publish_sequential, url, q, n)
            entry["publish_jobs_per_s"] = n / seconds
            self._say(f"{name}: drain worker")
            spec = {"url": url, "queue": q, "n": n, "prefetch": self.config.prefetches[0], "timeout": 600}
            run = await run_worker_process(module, spec, timeout=660)
            _require_complete(run.result, n, f"{name} drain")
            entry["drain_jobs_per_s"] = n / run.result["seconds"]
            entry["peak_rss_mib"] = run.result["peak_rss_mib"]
            entry["status"] = "ok"
        finally:
            await self.cleanup(q)

    # -- 7. Pulsar: publish + drain, PulsarTransport beside raw pulsar-client --------------
    async def pulsar(self) -> None:
        """Publish (sequential, window) and drain rows on Pulsar; topics deleted afterwards."""
        from bench import pulsar_conveyor, pulsar_raw

        n, url = self.config.jobs, self.config.pulsar_url
        publishers: dict[str, Callable[[str, int, int], Awaitable[tuple[float, float]]]] = {
            "raw": lambda q, n_, w: pulsar_raw.publish_rate(url, q, n_, w),
            "conveyor": lambda q, n_, w: pulsar_conveyor.publish_rate(url, q, n_, w),
        }
        filled: dict[str, list[str]] = {s: [] for s in PULSAR_SIDES}
        created: list[str] = []
        try:
            if self.wants("publish"):
                for window in (1, self.config.window):
                    samples: dict[str, list[Sample]] = {s: [] for s in PULSAR_SIDES}
                    for order in self.orders(PULSAR_SIDES):
                        for side in order:
                            q = self.queue(f"pulsar.publish.{side}.w{window}")
                            created.append(q)
                            self._say(f"pulsar publish: {side}, {n} jobs, window {window}")
                            seconds, cpu_seconds = await publishers[side](q, n, window)
                            samples[side].append({"rate": n / seconds, "cpu_us": cpu_seconds / n * 1e6})
                            if self.wants("drain") and len(filled[side]) < self.config.repeat * len(self.config.prefetches):
                                filled[side].append(q)
                            else:
                                await pulsar_conveyor.delete(url, q)
                    label = "one awaited send at a time" if window == 1 else f"{window} sends in flight"
                    self.rows.append(self._pair_row("pulsar publish", label, samples, target=None if window == 1 else 0.85))
            if self.wants("drain"):
                for prefetch in self.config.prefetches:
                    await self._pulsar_drain(prefetch, filled, created)
            if self.wants("latency"):
                for prefetch in self.config.prefetches:
                    await self._pulsar_latency(prefetch, created)
            if self.wants("soak"):
                await self._pulsar_soak(created)
        finally:
            # Every topic this run created, whatever happened (deleting a missing one is fine).
            await pulsar_conveyor.delete(url, *created)

    async def _pulsar_drain(self, prefetch: int, filled: dict[str, list[str]], created: list[str]) -> None:
        from bench import pulsar_conveyor, pulsar_raw

        n, url = self.config.jobs, self.config.pulsar_url
        samples: dict[str, list[Sample]] = {s: [] for s in PULSAR_SIDES}
        for order in self.orders(PULSAR_SIDES):
            for side in order:
                if filled[side]:
                    q = filled[side].pop(0)  # filled by the publish rows
                else:
                    q = self.queue(f"pulsar.drain.{side}")
                    created.append(q)
                    self._say(f"pulsar drain: publishing {n} {side} jobs (untimed)")
                    publisher = pulsar_raw if side == "raw" else pulsar_conveyor
                    await publisher.prepublish(url, q, n)
                self._say(f"pulsar drain: {side} worker, prefetch = concurrency = {prefetch}")
                spec = {"side": f"pulsar-{side}", "url": url, "queue": q, "n": n, "prefetch": prefetch, "timeout": 600}
                run = await run_worker_process("bench.worker", spec, timeout=660)
                _require_complete(run.result, n, f"pulsar {side} drain")
                samples[side].append(
                    {"rate": n / run.result["seconds"], "cpu_us": _cpu_us(run.result, n), "peak_rss_mib": run.result["peak_rss_mib"],
                     **_start_rss(run.result)}
                )
                await pulsar_conveyor.delete(url, q)
        self.rows.append(
            self._pair_row(
                "pulsar drain",
                f"ack after no-op handler, prefetch {prefetch}",
                samples,
                target=0.85,
                note="raw: pulsar-client Shared subscription; Conveyor: metrics on, JSON logs at INFO",
            )
        )
        self.rows.append(self._cpu_row("pulsar worker CPU", f"per drained job, prefetch {prefetch}", samples))
        self.rows.append(_rss_row("pulsar worker RSS", f"{n:,}-job drain, prefetch {prefetch}", samples, target=45.0))

    async def _pulsar_soak(self, created: list[str]) -> None:
        """``soak()`` on Pulsar: one Conveyor drain of ``soak_jobs``, RSS sampled every tenth."""
        from bench import pulsar_conveyor

        n, url, prefetch = self.config.soak_jobs, self.config.pulsar_url, self.config.prefetches[-1]
        q = self.queue("pulsar.soak.conveyor")
        created.append(q)
        await pulsar_conveyor.declare(url, q)
        self._say(f"pulsar soak: publishing {n} jobs (untimed)")
        await pulsar_conveyor.prepublish(url, q, n)
        self._say(f"pulsar soak: conveyor worker draining {n} jobs, prefetch {prefetch}, RSS sampled")
        spec = {"side": "pulsar-conveyor", "mode": "drain", "url": url, "queue": q, "n": n, "prefetch": prefetch,
                "timeout": 1800, "rss_every": max(1, n // 10)}
        run = await run_worker_process("bench.worker", spec, timeout=1900)
        _require_complete(run.result, n, "pulsar conveyor soak")
        await pulsar_conveyor.delete(url, q)
        rss = run.result["rss_samples"]
        half = [mib for done, mib in rss if done >= n // 2]
        self.rows.append(
            Row("pulsar soak", f"RSS growth over the second half of a {n:,}-job drain, prefetch {prefetch}", "MiB",
                None, max(half) - min(half) if half else None, better="lower",
                note="VmRSS sampled every tenth of the run: " + ", ".join(f"{mib:.1f}" for _, mib in rss),
                detail={"rss_samples": rss, "peak_rss_mib": run.result["peak_rss_mib"], "rate": n / run.result["seconds"]})
        )

    async def _pulsar_latency(self, prefetch: int, created: list[str]) -> None:
        """Publish → handler start at a fixed rate on Pulsar, the same way as ``_latency``."""
        from bench import pulsar_conveyor, pulsar_raw

        url, rate = self.config.pulsar_url, self.config.latency_rate
        n = max(1, round(rate * self.config.latency_seconds))
        samples: dict[str, list[Sample]] = {s: [] for s in PULSAR_SIDES}
        for order in self.orders(PULSAR_SIDES):
            for side in order:
                q = self.queue(f"pulsar.latency.{side}")
                created.append(q)
                await pulsar_conveyor.declare(url, q)
                module = pulsar_raw if side == "raw" else pulsar_conveyor
                lag: dict[str, float] = {}

                async def publish(module: Any = module, q: str = q, lag: dict[str, float] = lag) -> None:
                    lag["worst"] = await module.publish_paced(url, q, rate, n)

                self._say(f"pulsar latency: {side}, {n} jobs at {rate:g}/s, prefetch {prefetch}")
                spec = {"side": f"pulsar-{side}", "mode": "latency", "url": url, "queue": q, "n": n,
                        "prefetch": prefetch, "timeout": self.config.latency_seconds + 60}
                run = await run_worker_process("bench.worker", spec, timeout=self.config.latency_seconds + 120,
                                               after_ready=publish)
                _require_complete(run.result, n, f"pulsar {side} latency")
                values = run.result["latencies"]
                samples[side].append({"p50": percentile(values, 50) * 1000, "p99": percentile(values, 99) * 1000,
                                      "max": max(values) * 1000, "publisher_worst_lag_ms": lag.get("worst", 0.0) * 1000})
                await pulsar_conveyor.delete(url, q)
        for key, ceiling in (("p50", 1.0), ("p99", 3.0)):
            median = {s: _median(samples[s], key) for s in PULSAR_SIDES}
            self.rows.append(
                Row("pulsar latency", f"publish → handler start, {key}, {rate:g} jobs/s, prefetch {prefetch}", "ms",
                    median["raw"], median["conveyor"], better="lower", target=ceiling, absolute=True,
                    note="median of the samples", detail={"samples": samples} if key == "p99" else {})
            )

    async def run(self) -> None:
        steps = [
            ("publish", self.publish),
            ("drain", self.drain),
            ("latency", self.latency),
            ("retry", self.retry),
            ("soak", self.soak),
            ("processes", self.processes),
        ]
        if "rabbitmq" in self.config.brokers:
            for name, step in steps:
                if self.wants(name):
                    await self._broker_up()
                    started = time.perf_counter()
                    await step()
                    self._say(f"{name} done in {time.perf_counter() - started:.1f}s")
            if self.config.others and self.wants("others"):
                await self.other_libraries()
        if "pulsar" in self.config.brokers and any(self.wants(name) for name in ("publish", "drain", "latency", "soak")):
            started = time.perf_counter()
            await self.pulsar()
            self._say(f"pulsar done in {time.perf_counter() - started:.1f}s")

    async def _broker_up(self) -> None:
        waited = await wait_for_broker(self.config.url)
        if waited > 1.0:
            self._say(f"broker was unreachable; waited {waited:.0f}s for it to come back")
            self.interruptions += 1


def tier_queue(queue: str, tier: float) -> str:
    """Conveyor's tier-queue name (mirrored here; the final prefix sweep catches any drift)."""
    try:
        from conveyor.common.transport.rabbitmq.topology import tier_queue as conveyors
    except ImportError:
        if float(tier).is_integer():
            return f"{queue}.retry.{int(tier)}s"
        return f"{queue}.retry.{round(tier * 1000)}ms"
    return str(conveyors(queue, tier))


def _cpu_us(result: dict[str, Any], n: int) -> float | None:
    cpu = result.get("cpu_seconds")
    return None if cpu is None else cpu / n * 1e6


def _start_rss(result: dict[str, Any]) -> dict[str, float]:
    """A Conveyor worker's RSS once started, before its first job: kept beside its peak."""
    return {"rss_at_start_mib": result["rss_at_start_mib"]} if "rss_at_start_mib" in result else {}


def _require_complete(result: dict[str, Any], n: int, what: str) -> None:
    if result.get("completed", 0) < n or "seconds" not in result:
        raise RuntimeError(f"{what}: only {result.get('completed', 0)} of {n} jobs completed before the timeout")


def _rss_row(scenario: str, metric: str, samples: dict[str, list[dict[str, Any]]], target: float | None = None) -> Row:
    """Peak RSS of the drain worker, worst sample per side (Conveyor's against a ceiling in MiB)."""
    rss = {side: max(x["peak_rss_mib"] for x in runs) for side, runs in samples.items()}
    return Row(
        scenario,
        f"peak RSS, {metric}",
        "MiB",
        rss["raw"],
        rss["conveyor"],
        better="lower",
        target=target,
        absolute=target is not None,
        aiormq=rss.get("aiormq"),
        note="VmHWM of the worker subprocess; worst sample",
    )

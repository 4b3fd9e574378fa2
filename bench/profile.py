"""Profile Conveyor's hot paths on the real broker: ``python -m bench.profile publish|drain|retry``.

Runs the same code as the benchmark under cProfile (in this process) and prints the top
functions by own time and by cumulative time, plus the share of own time per package
(Conveyor's own code, pydantic, aio-pika/aiormq/pamqp, asyncio, …). Writes the raw stats to
``bench/results/profile-<what>.pstats`` for ``snakeviz``/``pstats``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench import conveyor
from bench.support import delete_queues, run_windowed

RESULTS = Path(__file__).resolve().parent / "results"
URL = os.environ.get("CONVEYOR_AMQP_URL", "amqp://conveyor:conveyor@127.0.0.1:5672/")

_BUCKETS = (
    ("conveyor", ("/common/", "/consumer/", "/producer/", "/schemas/")),
    ("pydantic", ("pydantic",)),
    ("aio-pika/aiormq/pamqp", ("aio_pika", "aiormq", "pamqp")),
    ("tenacity", ("tenacity",)),
    ("prometheus", ("prometheus_client",)),
    ("logging", ("/logging/",)),
    ("asyncio", ("/asyncio/",)),
    ("json/uuid/datetime", ("/json/", "uuid.py", "datetime", "orjson")),
)


def _bucket(filename: str) -> str:
    for name, needles in _BUCKETS:
        if any(n in filename for n in needles):
            return name
    if filename.startswith("~") or filename == "<built-in>":
        return "builtins (C)"
    return "other"


def summarize(profile: cProfile.Profile, what: str, top: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.strip_dirs = lambda: stats  # type: ignore[method-assign] - keep paths for bucketing
    per_bucket: dict[str, float] = defaultdict(float)
    total = 0.0
    for (filename, _line, _fn), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        per_bucket[_bucket(filename)] += tottime
        total += tottime
    out.write(f"== {what}: own time by package (total {total:.2f}s CPU in profiled thread) ==\n")
    for name, seconds in sorted(per_bucket.items(), key=lambda kv: -kv[1]):
        out.write(f"  {name:28s} {seconds:7.2f}s  {100 * seconds / total:5.1f}%\n")
    out.write(f"\n== {what}: top {top} by own time ==\n")
    stats.sort_stats("tottime").print_stats(top)
    out.write(f"\n== {what}: top {top} Conveyor functions by cumulative time ==\n")
    stats.sort_stats("cumulative").print_stats(r"/(common|consumer|producer|schemas)/", top)
    return out.getvalue()


async def _publish(n: int, window: int, profile: cProfile.Profile) -> None:
    q = f"bench.profile.{uuid.uuid4().hex[:8]}"
    from conveyor.producer.producer import Producer

    try:
        transport = conveyor.make_transport(URL)
        async with Producer.for_registry(transport, conveyor.make_registry(q)) as producer:
            await transport.declare(q)

            async def publish_one(i: int) -> None:
                await producer.publish(conveyor.JOB_TYPE, {"i": i, "sent_at": time.time()})

            profile.enable()
            seconds, _ = await run_windowed(publish_one, n, window)
            profile.disable()
            print(f"published {n} in {seconds:.2f}s = {n / seconds:,.0f}/s (window {window}, profiled)")
    finally:
        await delete_queues(URL, [q, f"{q}.dlq", *(f"{q}.retry.{t}" for t in ("50ms", "500ms", "5s"))])


async def _worker(mode: str, n: int, prefetch: int, profile: cProfile.Profile) -> None:
    q = f"bench.profile.{uuid.uuid4().hex[:8]}"
    try:
        await conveyor.declare(URL, q)
        await conveyor.prepublish(URL, q, n)
        spec: dict[str, Any] = {"mode": mode, "url": URL, "queue": q, "n": n, "prefetch": prefetch, "timeout": 300}
        profile.enable()
        started = time.perf_counter()
        await conveyor.worker_main(spec)
        profile.disable()
        print(f"{mode}: {n} jobs, wall {time.perf_counter() - started:.2f}s incl. start/stop (profiled)")
    finally:
        await delete_queues(URL, [q, f"{q}.dlq", *(f"{q}.retry.{t}" for t in ("50ms", "500ms", "5s"))])


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.profile")
    p.add_argument("what", choices=("publish", "publish-seq", "drain", "retry"))
    p.add_argument("--jobs", type=int, default=5_000)
    p.add_argument("--window", type=int, default=100)
    p.add_argument("--prefetch", type=int, default=64)
    p.add_argument("--top", type=int, default=30)
    args = p.parse_args()
    profile = cProfile.Profile()
    if args.what.startswith("publish"):
        window = 1 if args.what == "publish-seq" else args.window
        asyncio.run(_publish(args.jobs, window, profile))
    else:
        asyncio.run(_worker(args.what, args.jobs, args.prefetch, profile))
    RESULTS.mkdir(exist_ok=True)
    profile.dump_stats(RESULTS / f"profile-{args.what}.pstats")
    print(summarize(profile, args.what, args.top))


if __name__ == "__main__":
    main()

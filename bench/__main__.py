"""``python -m bench [--quick] [--jobs N] …``: run every scenario, print a table, write JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.machine import describe, pulsar_version, rabbitmq_version
from bench.report import render
from bench.scenarios import Config, Runner
from bench.support import sweep_prefix

DEFAULT_URL = "amqp://conveyor:conveyor@127.0.0.1:5672/"
DEFAULT_PULSAR_URL = "pulsar://127.0.0.1:6650"
BROKERS = {"rabbitmq": ("rabbitmq",), "pulsar": ("pulsar",), "all": ("rabbitmq", "pulsar")}
RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = ("publish", "drain", "latency", "retry", "others", "soak", "processes")  # soak: only with --soak N


def _prefetches(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__, allow_abbrev=False)
    p.add_argument("--url", default=os.environ.get("CONVEYOR_AMQP_URL", DEFAULT_URL), help="AMQP URL (env CONVEYOR_AMQP_URL)")
    p.add_argument("--quick", action="store_true", help="small run: 2,000 jobs, 3 s of latency, 1,000 retries")
    p.add_argument("--jobs", type=int, help="jobs per publish/drain scenario (default 20,000; 2,000 with --quick)")
    p.add_argument("--retry-jobs", type=int, help="jobs in the retry scenario (default 5,000; 1,000 with --quick)")
    p.add_argument("--repeat", type=int, help="samples per side, order reversed each time, median reported (default 3; 1 with --quick)")
    p.add_argument("--window", type=int, default=500, help="publishes in flight in the pipelined row (default 500)")
    p.add_argument(
        "--prefetch",
        type=_prefetches,
        default=(64, 200),
        help="prefetch = concurrency of every worker; comma-separated to run each (default 64,200)",
    )
    p.add_argument("--soak", type=int, default=0, metavar="N", help="also drain N jobs once in one Conveyor worker, RSS sampled for growth")
    p.add_argument("--latency-rate", type=float, default=500.0, help="jobs/s in the latency scenario (default 500)")
    p.add_argument("--latency-seconds", type=float, help="duration of the latency scenario (default 10; 3 with --quick)")
    p.add_argument("--only", help=f"comma-separated subset of {', '.join(SCENARIOS)}")
    p.add_argument(
        "--broker",
        choices=sorted(BROKERS),
        default="rabbitmq",
        help="rabbitmq (default), pulsar (publish, drain and latency rows on Pulsar only) or all",
    )
    p.add_argument(
        "--pulsar-url",
        default=os.environ.get("CONVEYOR_PULSAR_URL", DEFAULT_PULSAR_URL),
        help="Pulsar service URL (env CONVEYOR_PULSAR_URL)",
    )
    p.add_argument("--no-others", action="store_true", help="skip the Celery and Dramatiq rows")
    p.add_argument("--output", type=Path, default=RESULTS / "latest.json", help="JSON results file")
    p.add_argument("--fleet", action="store_true",
                   help="only the fleet rows: 1, 2 and 4 worker processes on one node (--url) and on the 3-node "
                        "cluster (scripts/services/rabbitmq-cluster.sh); writes results/fleet.json")
    p.add_argument("--fleet-jobs", type=int, default=10_000, help="jobs per fleet row (default 10,000)")
    args = p.parse_args(argv)
    if args.only:
        unknown = set(args.only.split(",")) - set(SCENARIOS)
        if unknown:
            p.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return args


def make_config(args: argparse.Namespace) -> Config:
    return Config(
        url=args.url,
        jobs=args.jobs or (2_000 if args.quick else 20_000),
        retry_jobs=args.retry_jobs or (1_000 if args.quick else 5_000),
        window=args.window,
        repeat=max(1, args.repeat or (1 if args.quick else 3)),
        prefetches=args.prefetch,
        latency_rate=args.latency_rate,
        latency_seconds=args.latency_seconds or (3.0 if args.quick else 10.0),
        others=not args.no_others,
        only=frozenset(args.only.split(",")) if args.only else frozenset(),
        brokers=frozenset(BROKERS[args.broker]),
        pulsar_url=args.pulsar_url,
        soak_jobs=args.soak,
    )


async def main_async(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    config = make_config(args)
    rabbitmq = "rabbitmq" in config.brokers
    machine = describe(
        await rabbitmq_version(config.url) if rabbitmq else "not used",
        await pulsar_version(config.pulsar_url) if "pulsar" in config.brokers else None,
    )
    runner = Runner(config, progress=lambda text: console.log(text))
    machine["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    error: str | None = None
    try:
        await runner.run()
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        console.print_exception(show_locals=False)
    finally:
        if rabbitmq:
            try:
                swept = await sweep_prefix(config.url, runner.prefix)
            except Exception as exc:  # still report what was measured; the error names the leftovers' cause
                sweep_error = f"final sweep failed ({type(exc).__name__}: {exc}); queues {runner.prefix}.* may be left"
                console.print(f"[red]{sweep_error}[/red]")
                error = f"{error}; {sweep_error}" if error else sweep_error
            else:
                if any(swept):
                    console.log(f"swept leftover queues/exchanges: {swept}")
    machine["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "machine": machine,
        "config": {
            k: (sorted(v) if isinstance(v, frozenset) else list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items() if k not in ("url", "pulsar_url")
        },
        "run_prefix": runner.prefix,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "rows": [row.as_dict() for row in runner.rows],
        "others": runner.others,
        "broker_interruptions": runner.interruptions,
        "error": error,
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=200)
    if args.fleet:
        return fleet_main(args, console)
    results = asyncio.run(main_async(args, console))
    render(results, console)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"results written to {args.output}")
    return 1 if results["error"] else 0


def fleet_main(args: argparse.Namespace, console: Console) -> int:
    from rich.table import Table

    from bench.fleet import run_fleet

    rows = asyncio.run(run_fleet(args.url, args.fleet_jobs, lambda text: console.log(text)))
    table = Table(title=f"Fleet: {args.fleet_jobs} jobs, 32 concurrent per worker process")
    for column in ("target", "workers", "jobs/s", "seconds", "publish s"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["target"], str(row["workers"]), str(row["jobs_per_second"]), str(row["seconds"]),
                      str(row["publish_seconds"]))
    console.print(table)
    output = args.output if args.output != RESULTS / "latest.json" else RESULTS / "fleet.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"machine": describe("see rows", None), "rows": rows}, indent=2) + "\n")
    console.print(f"results written to {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
